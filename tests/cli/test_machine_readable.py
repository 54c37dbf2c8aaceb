"""For scripts and CI: ``-o json`` on validate, run and describe; unexpected errors in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from slmops_operator.cli import main as cli_main
from slmops_operator.cli.main import cli
from tests.conftest import finetune_manifest


def write(tmp_path: Path, *documents: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump_all(list(documents)))
    return path


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_validate_json_lists_the_resources(tmp_path, tiny_model):
    result = invoke("validate", str(write(tmp_path, finetune_manifest("a", tiny_model))), "-o", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "valid": True,
        "resources": [{"kind": "FineTuneJob", "name": "a", "namespace": "default"}],
        "skipped": [],
    }


def test_validate_json_names_each_problems_path(tmp_path, tiny_model):
    bad = finetune_manifest("b", tiny_model, training={"maxSteps": -1})
    result = invoke("validate", str(write(tmp_path, bad)), "-o", "json")
    assert result.exit_code == 2
    found = json.loads(result.stdout)
    assert found["valid"] is False and [p["path"] for p in found["problems"]] == ["spec.training.maxSteps"]


@pytest.fixture(scope="module")
def ran(tiny_model, tmp_path_factory):
    """One tiny job run with ``-o json``: the JSON on stdout, the progress and tables on stderr."""
    tmp = tmp_path_factory.mktemp("ran")
    job = write(tmp, finetune_manifest("tiny-json", tiny_model))
    result = invoke("run", str(job), "--runs-dir", str(tmp / "runs"), "-o", "json")
    return tmp / "runs" / "tiny-json", result


def test_run_json_reports_each_job(ran):
    out, result = ran
    assert result.exit_code == 0, result.stderr
    [job] = json.loads(result.stdout)["jobs"]  # stdout holds the JSON alone
    assert (job["kind"], job["name"], job["phase"]) == ("FineTuneJob", "tiny-json", "Succeeded")
    assert job["outputUri"] == str(out) and job["artifacts"]["adapter"] == str(out / "adapter")
    assert "trainLoss" in job["metrics"] and job["alreadyComplete"] is False
    assert "FineTuneJob tiny-json" in result.stderr  # the people's tables went to stderr


def test_run_json_reports_a_failure_with_its_field(tmp_path, tiny_model):
    bad = finetune_manifest("no-column", tiny_model, dataset={"promptTemplate": "Tone of: {sentence}"})
    result = invoke("run", str(write(tmp_path, bad)), "--runs-dir", str(tmp_path / "runs"), "-o", "json")
    assert result.exit_code == 2
    [job] = json.loads(result.stdout)["jobs"]
    assert job["phase"] == "Failed" and job["error"]["field"] == "dataset.promptTemplate"


def test_describe_tells_identity_phase_metrics_artifacts_and_checksums(ran):
    out, _ = ran
    result = invoke("describe", str(out), "-o", "json")
    assert result.exit_code == 0
    described = json.loads(result.stdout)
    assert described["phase"] == "Succeeded"
    assert (described["job"]["kind"], described["job"]["name"]) == ("FineTuneJob", "tiny-json")
    assert described["artifacts"]["adapter"] == str(out / "adapter") and "trainLoss" in described["metrics"]
    assert described["checksums"]["ok"] is True and described["checksums"]["files"] > 3
    text = invoke("describe", str(out))
    flat = " ".join(text.stdout.split())
    assert "Succeeded" in flat and "files match the manifest" in flat


def test_describe_finds_a_file_that_no_longer_matches(ran, tmp_path):
    import shutil

    out, _ = ran
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "adapter" / "adapter_config.json").write_text("{}")
    result = invoke("describe", str(copy), "-o", "json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["checksums"]["problems"]
    assert any(p.startswith("adapter/adapter_config.json:") for p in problems)


def test_describe_refuses_what_is_no_output(tmp_path):
    result = invoke("describe", str(tmp_path), "-o", "json")
    assert result.exit_code == 2
    assert "holds no slmops job output" in json.loads(result.stdout)["error"]["message"]


def test_an_unexpected_error_is_one_line_and_exit_1(monkeypatch, capsys):
    from slmops_pipelines import jobs

    def broken(*_args, **_kwargs):
        raise RuntimeError("the disk\nis on fire")

    monkeypatch.setattr(jobs, "describe_output", broken)
    monkeypatch.setattr(sys, "argv", ["slmops", "describe", "runs/x"])
    with pytest.raises(SystemExit) as exited:
        cli_main.main()
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "RuntimeError: the disk is on fire" in err and "--debug" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(monkeypatch):
    from slmops_pipelines import jobs

    monkeypatch.setattr(jobs, "describe_output", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    monkeypatch.setattr(sys, "argv", ["slmops", "describe", "runs/x", "--debug"])  # after the command, too
    monkeypatch.delenv("SLMOPS_DEBUG", raising=False)
    with pytest.raises(RuntimeError, match="boom"):
        cli_main.main()
    monkeypatch.delenv("SLMOPS_DEBUG", raising=False)
