"""docs/operator.md's threat model table is what admission does: every row, in every mode.

Each row's first cell names what a tenant writes; :data:`ROWS` turns it into a manifest.
Each mode's cell starts with "refused" or "allowed", and the webhook's own check
(:func:`problems_of`, what the HTTPS webhook runs) must agree, for a job in ``team-a`` with
an empty allow-list.  A row added to the table without a manifest here fails the test, and
so does a manifest whose row is gone.  The rows below the table name the tests that pin them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from slmops_operator.handlers.validation import problems_of
from slmops_operator.settings import OperatorSettings
from tests.conftest import REPO, finetune_manifest

DOC = REPO / "docs" / "operator.md"
ROOT = "s3://shared/slmops"
MODES = ("standalone KFP", "multi-user KFP", "local backend")


def settings_for(mode: str, tmp_path: Path) -> OperatorSettings:
    common = {"local_state_dir": tmp_path / "state", "metrics_port": 0, "webhook_port": 0}
    if mode == "local backend":
        return OperatorSettings(backend="local", **common)
    return OperatorSettings(
        backend="kfp", kfp_multi_user=mode == "multi-user KFP", default_output=ROOT, **common
    )


def default_root(settings: OperatorSettings) -> str:
    return settings.default_output or str(settings.local_state_dir / "outputs")


Patch = Callable[[dict[str, Any], OperatorSettings], None]


def model(**fields: Any) -> Patch:
    return lambda spec, _: spec["model"].update(fields)


def dataset_uri(uri: Callable[[OperatorSettings], str]) -> Patch:
    return lambda spec, settings: spec["dataset"].update(uri=uri(settings))


def output_uri(uri: Callable[[OperatorSettings], str]) -> Patch:
    return lambda spec, settings: spec.update(output={"uri": uri(settings)})


def resources(**fields: Any) -> Patch:
    return lambda spec, _: spec.setdefault("resources", {}).update(fields)


def top(**fields: Any) -> Patch:
    return lambda spec, _: spec.update(fields)


ROWS: dict[str, Patch] = {
    "`serviceAccountName: ml-pipeline` (KFP's own account)": top(serviceAccountName="ml-pipeline"),
    "`imagePullSecrets: [{name: mlpipeline-minio-artifact}]`": top(
        imagePullSecrets=[{"name": "mlpipeline-minio-artifact"}]
    ),
    "`image: registry.example/anything:1` (its own code in the KFP namespace)": top(
        image="registry.example/anything:1"
    ),
    "`model.uri: pvc://mysql-pv-claim/m` (KFP's database volume)": model(uri="pvc://mysql-pv-claim/m"),
    "`model.trustRemoteCode: true`": model(trustRemoteCode=True),
    "`resources.priorityClassName: system-node-critical`": resources(
        priorityClassName="system-node-critical"
    ),
    "a toleration of `node-role.kubernetes.io/control-plane`, or of every taint": resources(
        tolerations=[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]
    ),
    "`output.uri` in another namespace's slot of the default root": output_uri(
        lambda s: f"{default_root(s)}/team-b/their-job"
    ),
    "`output.uri` whose key holds `..`, `.` or `//`": output_uri(lambda s: f"{ROOT}/team-a/../team-b/x"),
    "a dataset in another namespace's slot of the default root": dataset_uri(
        lambda s: f"{default_root(s)}/team-b/prep/data.jsonl"
    ),
    "`dataset.uri: /var/run/secrets/kubernetes.io/serviceaccount/token`": dataset_uri(
        lambda s: "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ),
    "`model.uri: /proc/1/environ`": model(uri="/proc/1/environ"),
    "a dataset in the operator's state folder": dataset_uri(
        lambda s: f"{s.local_state_dir}/run.request.json"
    ),
    "`model.uri: ~/.aws/credentials` of the operator's user": model(
        uri=str(Path("~/.aws/credentials").expanduser())
    ),
    "`output.uri: s3://its-own-bucket/x`, no `credentialsSecret`": output_uri(
        lambda s: "s3://its-own-bucket/x"
    ),
}

# Rows of the list below the table, and the tests that pin each.
PINNED_BY = {
    "An object key with `..`": "tests/storage/test_store_contract.py",
    "No confused deputy": "tests/operator/test_tenancy.py::test_the_operator_never_reads_a_tenants_uri_with_its_own_keys",
    "Status is not trusted": "tests/operator/test_tenancy.py::test_a_patched_status_never_stops_or_reads_another_teams_run",
    "Secret values": "tests/cli/test_run.py::test_unreachable_s3_endpoint",
    "The local backend is one trust domain": "tests/operator/test_tenancy.py::test_the_local_backend_keeps_jobs_out_of_the_operators_files",
}


def table() -> dict[str, dict[str, str]]:
    """The threat model table: what a tenant writes -> mode -> its cell."""
    section = DOC.read_text().split("## Threat model", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header == ["a tenant writes", *MODES]
    found = {}
    for line in rows[1:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        found[cells[0]] = dict(zip(MODES, cells[1:], strict=True))
    return found


def test_every_row_has_a_manifest():
    assert sorted(table()) == sorted(ROWS)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("row", sorted(ROWS))
def test_admission_does_what_the_table_says(row: str, mode: str, tmp_path: Path):
    settings = settings_for(mode, tmp_path)
    body = finetune_manifest("j", tmp_path / "models" / "tiny")
    body["metadata"]["namespace"] = "team-a"
    ROWS[row](body["spec"], settings)
    cell = table()[row][mode]
    verdict = re.match(r"(refused|allowed)", cell)
    assert verdict, f"{row} / {mode}: the cell must start with refused or allowed: {cell!r}"
    problems = problems_of("FineTuneJob", body, settings=settings)
    assert bool(problems) == (verdict[1] == "refused"), (row, mode, problems)


def test_the_rows_beyond_admission_name_their_tests():
    section = DOC.read_text().split("## Threat model", 1)[1].split("\n## ", 1)[0]
    bullets = re.findall(r"^\* \*\*(.+?)\*\*", section, flags=re.MULTILINE)
    assert sorted(bullets) == sorted(PINNED_BY)
    for target in PINNED_BY.values():
        path, _, name = target.partition("::")
        text = (REPO / path).read_text()
        assert not name or f"def {name}(" in text, target
