"""``slmops run``: exit codes and one clear message per bad input."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml
from click.testing import CliRunner

from slmops_operator.cli.main import cli
from tests.conftest import finetune_manifest


def run_cli(tmp_path: Path, *documents: dict):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump_all(list(documents)))
    result = CliRunner().invoke(
        cli, ["run", str(path), "--runs-dir", str(tmp_path / "runs")], catch_exceptions=False
    )
    return result, " ".join(result.output.split())


def test_invalid_manifest_runs_nothing(tmp_path, tiny_model):
    good = finetune_manifest("first", tiny_model)
    bad = finetune_manifest("second", tiny_model, training={"maxSteps": -1})
    result, out = run_cli(tmp_path, good, bad)
    assert result.exit_code == 2
    assert "spec.training.maxSteps" in out
    assert not (tmp_path / "runs").exists()  # the valid first job did not start either


def test_missing_dataset_file(tmp_path, tiny_model):
    job = finetune_manifest("nodata", tiny_model, dataset={"uri": str(tmp_path / "nope.jsonl")})
    result, out = run_cli(tmp_path, job)
    assert result.exit_code == 2
    assert f"FineTuneJob nodata: spec.dataset.uri: file not found: {tmp_path / 'nope.jsonl'}" in out


def test_template_field_missing_from_data(tmp_path, tiny_model):
    job = finetune_manifest("nofield", tiny_model, dataset={"completionTemplate": "{label}"})
    result, out = run_cli(tmp_path, job)
    assert result.exit_code == 2
    assert (
        "spec.dataset.completionTemplate: field 'label' is not in the data; columns found: phrase, tone"
        in out
    )


def test_unreachable_s3_endpoint(tmp_path, tiny_model, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    job = finetune_manifest("offline", tiny_model, output={"uri": "s3://bucket/jobs/offline"})
    result, out = run_cli(tmp_path, job)
    assert result.exit_code != 0
    assert "output.uri" in out and "cannot reach the S3 endpoint in AWS_ENDPOINT_URL" in out
    assert f"127.0.0.1:{port}" not in out  # the endpoint may come from a Secret: never in a message


def test_optimize_job_whose_source_never_ran(tmp_path):
    job = {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "OptimizeJob",
        "metadata": {"name": "opt"},
        "spec": {
            "source": {"fineTuneJobRef": {"name": "ghost"}},
            "targets": [{"name": "t", "provider": "CPUExecutionProvider", "precision": "int4"}],
        },
    }
    result, out = run_cli(tmp_path, job)
    assert result.exit_code == 2
    assert "OptimizeJob opt: spec.source.fineTuneJobRef: source job 'ghost' has not succeeded" in out


def test_what_this_machine_cannot_do_fails_before_writing(tmp_path, tiny_model):
    result, out = run_cli(tmp_path, finetune_manifest("multi", tiny_model, resources={"nodes": 2}))
    assert result.exit_code == 2 and "spec.resources.nodes: 2 nodes need a cluster" in out
    result, out = run_cli(tmp_path, finetune_manifest("half", tiny_model, training={"precision": "fp16"}))
    assert result.exit_code == 2 and "spec.training.precision: fp16 training needs a CUDA GPU" in out
    assert not (tmp_path / "runs").exists()
