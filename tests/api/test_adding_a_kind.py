"""docs/design.md's "Adding a job kind" is real code: type-checked, registered, and served.

The sketch's blocks are extracted from the design notes, checked with mypy against
``JobKind``, executed, and the kind registered at runtime: from then on CRD generation,
``slmops validate``, the webhook, ``slmops compile``, the operator's handlers and the chart
serve it, and the inputs its spec declares by their types are seen by every check.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from click.testing import CliRunner
from pydantic import Field

from slmops_operator.cli.main import cli
from slmops_operator.handlers import validation
from slmops_operator.settings import OperatorSettings
from slmops_pipelines import jobs
from slmops_pipelines.specs import DatasetSpec
from tests.conftest import REPO

DESIGN = REPO / "docs" / "design.md"

# What the sketch calls but leaves to the kind's own modules (its local engine and pipeline).
PREAMBLE = '''
from collections.abc import Callable
from typing import Any

from slmops_pipelines.local.reporting import Reporter
from slmops_pipelines.stages.outputs import JobOutcome, JobRun


def run_evaluate(run: JobRun, *, reporter: Reporter | None = None) -> JobOutcome:
    return JobOutcome(output_uri=run.output_uri, metrics={"accuracy": 1.0})


def evaluate_pipeline(*, placement: Any = None, images: Any = None) -> Callable[..., Any]:
    from kfp import dsl

    @dsl.component(base_image=images.optimizer if images else "python:3.11")
    def evaluate(spec: dict, output_uri: str) -> str:
        """Measure the model (a toy step)."""
        return output_uri

    @dsl.pipeline(name="evaluate", description="Measure a model on a dataset.")
    def pipeline(spec: dict, job: dict, output_uri: str) -> str:
        return evaluate(spec=spec, output_uri=output_uri).output

    return pipeline
'''


def sketch_blocks() -> list[str]:
    text = DESIGN.read_text()
    section = text[text.index("## Adding a job kind") : text.index("## Training")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def sketch_module() -> str:
    """The spec and kind blocks as one module (imports first, as a module file would have them)."""
    spec_block, kind_block, _registry_line = sketch_blocks()
    lines = [*PREAMBLE.splitlines(), *spec_block.splitlines(), *kind_block.splitlines()]
    imports = [line for line in lines if line.startswith(("from ", "import "))]
    rest = [line for line in lines if line not in imports]
    return "\n".join([*imports, *rest]) + "\n"


def test_the_registry_line_of_the_sketch_is_the_registry_as_written():
    *_, registry_line = sketch_blocks()
    source = (REPO / "pipelines" / "slmops_pipelines" / "jobs" / "__init__.py").read_text()
    built_in = [f"{kind.__class__.__name__}()" for kind in jobs.KINDS.values()]
    assert registry_line.strip().splitlines()[-1].startswith("KINDS: dict[str, JobKind[Any]] = _registry(")
    assert "KINDS: dict[str, JobKind[Any]] = _registry(" in source
    assert all(name in registry_line and name in source for name in built_in)


def test_the_sketch_type_checks_against_the_kind_contract(tmp_path):
    module = tmp_path / "evaluate_kind.py"
    module.write_text(sketch_module())
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), str(module)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def load_sketch() -> dict[str, Any]:
    """The sketch as an imported module (pydantic resolves its annotations in the module's globals)."""
    module = types.ModuleType("evaluate_kind")
    sys.modules[module.__name__] = module
    exec(compile(sketch_module(), "docs/design.md", "exec", dont_inherit=True), module.__dict__)
    return module.__dict__


@pytest.fixture
def evaluate_kind() -> Iterator[jobs.JobKind[Any]]:
    kind = jobs.register_kind(load_sketch()["EvaluateJobKind"]())
    try:
        yield kind
    finally:
        jobs.KINDS.pop(kind.name, None)


def evaluate_manifest(name: str = "eval", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "EvaluateJob",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {
            "model": {"uri": "s3://models/tiny"},
            "dataset": {"uri": "s3://data/rows.jsonl", "textTemplate": "{text}"},
            "output": {"uri": "s3://outputs/team-a/eval"},
            **spec,
        },
    }


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_a_registered_kind_gets_its_crd_validation_webhook_and_pipeline(evaluate_kind, tmp_path):
    crds = tmp_path / "crds"
    assert invoke("crds", "-o", str(crds)).exit_code == 0
    crd = yaml.safe_load((crds / "slmops.io_evaluatejobs.yaml").read_text())
    assert crd["spec"]["names"]["plural"] == "evaluatejobs" and crd["spec"]["names"]["shortNames"] == [
        "evalj"
    ]
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert {"model", "dataset", "output", "resources"} <= set(spec_schema["properties"])

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(evaluate_manifest()))
    broken = evaluate_manifest()
    del broken["spec"]["dataset"]
    bad.write_text(yaml.safe_dump(broken))
    assert invoke("validate", str(good)).exit_code == 0
    refused = invoke("validate", str(bad))
    assert refused.exit_code != 0 and "spec.dataset" in refused.output

    registry = kopf.OperatorRegistry()
    validation.register(registry)
    webhook_ids = {h.id for h in registry._webhooks.get_all_handlers()}
    assert "validate-evaluatejobs" in webhook_ids
    assert validation.problems_of("EvaluateJob", broken) == ["spec.dataset: required field is missing"]

    compiled = tmp_path / "eval.pipeline.yaml"
    assert invoke("compile", str(good), "-o", str(compiled)).exit_code == 0
    assert yaml.safe_load(compiled.read_text().split("\n---")[0])["pipelineInfo"]["name"] == "evaluate"


def test_the_operator_serves_a_registered_kind(evaluate_kind, tmp_path):
    from slmops_operator.backends.base import run_name
    from slmops_operator.handlers.kube import KubeApi
    from slmops_operator.permissions import operator_rules
    from slmops_operator.runtime import build_operator

    operator = build_operator(
        OperatorSettings(backend="local", local_state_dir=tmp_path, metrics_port=0, webhook_insecure=True),
        serve_metrics=False,
    )
    handlers = [
        *operator.registry._spawning.get_all_handlers(),
        *operator.registry._changing.get_all_handlers(),
        *operator.registry._indexing.get_all_handlers(),
    ]
    assert any((h.selector.plural or h.selector.any_name) == "evaluatejobs" for h in handlers)
    assert ("slmops.io", "evaluatejobs", "delete") in KubeApi.calls()
    assert any("evaluatejobs" in rule.get("resources", []) for rule in operator_rules(clusterwide=False))
    assert run_name("EvaluateJob", "team-a", "eval", "uid", 1).startswith("evalj-team-a-eval-")


def test_the_chart_takes_a_new_kind_from_its_crd_file(evaluate_kind, tmp_path):
    helm = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
    if not Path(helm).exists():
        pytest.skip("helm is not installed (scripts/fetch_helm.sh)")
    chart = tmp_path / "slmops"
    shutil.copytree(REPO / "charts" / "slmops", chart)
    assert invoke("crds", "-o", str(chart / "files" / "crds")).exit_code == 0
    rendered = subprocess.run([helm, "template", "x", str(chart)], capture_output=True, text=True, check=True)
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    rules = [rule for d in docs if d["kind"] in ("Role", "ClusterRole") for rule in d.get("rules", [])]
    assert any(
        "evaluatejobs" in r["resources"] and "evaluatejobs/status" not in r["resources"] for r in rules
    )
    assert any("evaluatejobs/status" in r["resources"] for r in rules)
    [webhooks] = [d for d in docs if d["kind"] == "ValidatingWebhookConfiguration"]
    paths = {w["clientConfig"]["service"]["path"] for w in webhooks["webhooks"]}
    assert "/validate-evaluatejobs" in paths


# -- an input declared by its type is seen by every check ----------------------------------------


@pytest.fixture
def kind_with_a_new_input() -> Iterator[jobs.JobKind[Any]]:
    """The sketch's kind with one more input field (a reference dataset), declared only by its type."""
    sketch = load_sketch()

    class ReferencedEvaluateJobSpec(sketch["EvaluateJobSpec"]):  # type: ignore[misc, name-defined]
        reference: DatasetSpec | None = Field(default=None, description="Rows to compare with.")

    class ReferencedKind(sketch["EvaluateJobKind"]):  # type: ignore[misc, name-defined]
        spec_class = ReferencedEvaluateJobSpec

    kind = jobs.register_kind(ReferencedKind())
    try:
        yield kind
    finally:
        jobs.KINDS.pop(kind.name, None)


def with_reference(**reference: Any) -> dict[str, Any]:
    return evaluate_manifest(reference={"textTemplate": "{text}", **reference})


def test_a_new_input_field_is_seen_by_admission_credentials_claims_pods_and_preflight(kind_with_a_new_input):
    local = OperatorSettings(backend="local", local_allowed_roots=[Path("/models"), Path("/data")])
    body = with_reference(uri="/etc/secrets.jsonl")
    assert validation.problems_of("EvaluateJob", body, settings=local) == [
        "spec.reference.uri: '/etc/secrets.jsonl' is outside the folders this operator may read "
        "(SLMOPS_LOCAL_ALLOWED_ROOTS: /models, /data)"
    ]
    assert validation.problems_of("EvaluateJob", with_reference(uri="/data/ref.jsonl"), settings=local) == []
    [on_claim] = validation.problems_of(
        "EvaluateJob", with_reference(uri="pvc://refs/r.jsonl"), settings=local
    )
    assert on_claim.startswith("spec.reference.uri: 'pvc://refs/r.jsonl' is on a PersistentVolumeClaim")

    spec = kind_with_a_new_input.spec_class.model_validate(
        with_reference(uri="pvc://refs/r.jsonl", accessSecret="ref-keys")["spec"]
    )
    assert [(r.purpose, r.field, r.name) for r in jobs.secret_refs(spec)] == [
        ("dataset", "reference.accessSecret", "ref-keys")
    ]
    placement = kind_with_a_new_input.placement(spec)
    assert "refs" in placement.claims

    from slmops_pipelines.stages.preflight import declared_inputs_exist

    missing = kind_with_a_new_input.spec_class.model_validate(
        with_reference(uri="/nowhere/ref.jsonl")["spec"]
    )
    [finding] = declared_inputs_exist(missing, [])
    assert (finding.field, finding.reason) == ("reference.uri", "/nowhere/ref.jsonl does not exist")

    two_secrets = with_reference(uri="s3://data/ref.jsonl", accessSecret="ref-keys")
    two_secrets["spec"]["dataset"]["accessSecret"] = "data-keys"
    [conflict] = validation.problems_of("EvaluateJob", two_secrets)
    assert "reference.accessSecret: must name the same Secret as dataset.accessSecret" in conflict


def test_every_built_in_input_is_declared_including_adapter_evaluation_data():
    spec = jobs.job_kind("OptimizeJob").spec_class.model_validate(
        {
            "source": {
                "model": {"uri": "s3://models/base", "accessSecret": "model-keys"},
                "adapters": [
                    {"uri": "s3://models/a"},
                    {
                        "uri": "pvc://adapters/b",
                        "evaluation": {
                            "dataset": {
                                "uri": "pvc://data/b.jsonl",
                                "textTemplate": "{text}",
                                "accessSecret": "data-keys",
                            }
                        },
                    },
                ],
            },
            "targets": [
                {
                    "name": "cpu",
                    "provider": "CPUExecutionProvider",
                    "precision": "int4",
                    "mergeAdapter": False,
                }
            ],
            "evaluation": {"dataset": {"uri": "s3://data/eval.jsonl", "textTemplate": "{text}"}},
        }
    )
    fields = [loc.uri_field for loc in jobs.spec_inputs(spec)]
    assert fields == [
        "source.model.uri",
        "source.adapters[0].uri",
        "source.adapters[1].uri",
        "source.adapters[1].evaluation.dataset.uri",
        "evaluation.dataset.uri",
    ]
    assert [r.field for r in jobs.secret_refs(spec)] == [
        "source.model.accessSecret",
        "source.adapters[1].evaluation.dataset.accessSecret",
    ]
    assert jobs.job_kind("OptimizeJob").placement(spec).claims == ["adapters", "data"]
