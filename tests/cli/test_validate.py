"""``slmops validate`` and ``slmops crds --check``."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from slmops_operator.cli.main import cli
from tests.conftest import REPO, finetune_manifest


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_examples_are_valid():
    result = invoke("validate", str(REPO / "examples" / "01-finetune-lora.yaml"))
    assert result.exit_code == 0, result.output
    assert "valid FineTuneJob smollm2-tone" in result.output


def test_multi_document_file_reports_each_problem_with_document_and_path(tmp_path: Path):
    good = finetune_manifest("good", Path("/m"))
    bad_steps = finetune_manifest("bad-steps", Path("/m"), training={"maxSteps": 0})
    bad_method = finetune_manifest("bad-method", Path("/m"), method="sft")
    unknown = finetune_manifest("unknown", Path("/m"), training={"learningrate": 0.1})
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump_all([good, bad_steps, bad_method, unknown]))
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    out = " ".join(result.output.split())  # rich may wrap long lines
    assert (
        f"{path}#2 (FineTuneJob bad-steps): spec.training.maxSteps: Input should be greater than or equal to 1"
        in out
    )
    assert f"{path}#3 (FineTuneJob bad-method): spec.method:" in out and "(got 'sft')" in out
    assert f"{path}#4 (FineTuneJob unknown): spec.training.learningrate: unknown field" in out
    assert "#1" not in out


def test_wrong_kind_api_version_and_bad_yaml(tmp_path: Path):
    (tmp_path / "kind.yaml").write_text(
        "apiVersion: slmops.io/v1alpha1\nkind: TrainJob\nmetadata: {name: x}\n"
    )
    (tmp_path / "api.yaml").write_text("apiVersion: slmops.io/v1\nkind: FineTuneJob\nmetadata: {name: x}\n")
    (tmp_path / "broken.yaml").write_text("spec: [unclosed\n")
    result = invoke(
        "validate", *(str(tmp_path / n) for n in ("kind.yaml", "api.yaml", "broken.yaml", "missing.yaml"))
    )
    out = " ".join(result.output.split())
    assert result.exit_code == 2
    assert "kind: must be one of FineTuneJob, OptimizeJob (got 'TrainJob')" in out
    assert "apiVersion: must be slmops.io/v1alpha1 (got 'slmops.io/v1')" in out
    assert "invalid YAML" in out
    assert "missing.yaml: (document): file not found" in out


def test_documents_of_other_api_groups_are_skipped_and_listed(tmp_path: Path):
    """A folder of manifests holds more than jobs (an Argo CD Application, a Secret): validate skips them."""
    app = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": {"name": "jobs"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3", "namespace": "team-a"}}
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump_all([app, finetune_manifest("good", Path("/m")), secret]))
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "valid FineTuneJob good" in lines
    assert "skipped: Application/jobs (not an slmops.io resource)" in lines
    assert "skipped: Secret/s3 (not an slmops.io resource)" in lines
    found = json.loads(invoke("validate", str(path), "-o", "json").stdout)
    assert found["valid"] is True and [r["name"] for r in found["resources"]] == ["good"]
    assert [(s["apiVersion"], s["kind"], s["name"], s["reason"]) for s in found["skipped"]] == [
        ("argoproj.io/v1alpha1", "Application", "jobs", "not an slmops.io resource"),
        ("v1", "Secret", "s3", "not an slmops.io resource"),
    ]


def test_an_unknown_slmops_kind_is_still_an_error_beside_skipped_documents(tmp_path: Path):
    path = tmp_path / "mixed.yaml"
    path.write_text(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: jobs}\n---\n"
        "apiVersion: slmops.io/v1alpha1\nkind: TrainJob\nmetadata: {name: x}\n---\n"
        "kind: FineTuneJob\nmetadata: {name: no-api-version}\n"
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert errors == [
        f"error {path}#2 (TrainJob x): kind: must be one of FineTuneJob, OptimizeJob (got 'TrainJob')",
        f"error {path}#3 (FineTuneJob no-api-version): apiVersion: must be slmops.io/v1alpha1 (got None)",
    ]


def test_run_still_refuses_other_api_groups(tmp_path: Path):
    """`slmops run` runs jobs: an Application in its files is a mistake, not something to skip."""
    path = tmp_path / "app.yaml"
    path.write_text("apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: jobs}\n")
    result = invoke("run", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 2
    assert "must be slmops.io/v1alpha1 (got 'argoproj.io/v1alpha1')" in " ".join(result.output.split())


def test_crds_check_detects_drift(tmp_path: Path):
    assert invoke("crds", "-o", str(tmp_path)).exit_code == 0
    assert invoke("crds", "-o", str(tmp_path), "--check").exit_code == 0
    target = next(tmp_path.glob("*.yaml"))
    target.write_text(target.read_text() + "# edited\n")
    result = invoke("crds", "-o", str(tmp_path), "--check")
    assert result.exit_code == 1
    assert "stale" in result.output


def test_a_value_that_looks_like_markup_is_one_plain_line(tmp_path: Path):
    """What a tenant writes is printed as written: never read as rich markup (no MarkupError traceback)."""
    import subprocess
    import sys

    body = finetune_manifest("markup", Path("/data/[bold]model[/key]"), output={"uri": "s3://"})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(body))
    proc = subprocess.run(
        [sys.executable, "-c", "from slmops_operator.cli.main import main; main()", "validate", str(path)],
        capture_output=True,
        text=True,
        env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "MarkupError" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error ") and "spec.output.uri: 's3://' is not a valid s3:// URI" in line
