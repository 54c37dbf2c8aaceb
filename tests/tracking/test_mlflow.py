"""Runs in MLflow: what a local job logged, read back through MLflow's own client from a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops_operator.api import FineTuneJob
from slmops_pipelines.local import run_finetune
from tests.conftest import finetune_manifest, free_port, job_run


@pytest.fixture(scope="module")
def tracked(tiny_model: Path, mlflow_server: str, tmp_path_factory) -> tuple[Path, dict]:
    manifest = finetune_manifest(
        "tracked", tiny_model, tracking={"mlflow": {"trackingUri": mlflow_server, "experiment": "tone"}}
    )
    out = tmp_path_factory.mktemp("runs") / "tracked"
    run_finetune(job_run(FineTuneJob.model_validate(manifest), str(out)))
    return out, json.loads((out / "metrics.json").read_text())


def test_a_finetune_logs_its_params_losses_metrics_and_adapter(tracked, mlflow_server):
    from mlflow import MlflowClient

    _out, metrics = tracked
    recorded = metrics["tracking"]["mlflow"]
    assert "error" not in recorded, recorded
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tone")
    assert experiment is not None and recorded["experimentId"] == experiment.experiment_id
    run = client.get_run(recorded["runId"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert recorded["url"].endswith(f"/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
    params = run.data.params
    assert params["method"] == "lora" and params["training.maxSteps"] == "4"
    assert params["training.learningRate"] == "0.001" and "tracking.mlflow.trackingUri" not in params
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [h["step"] for h in metrics["log_history"] if "loss" in h]
    assert {m.value for m in losses} == {h["loss"] for h in metrics["log_history"] if "loss" in h}
    assert run.data.metrics["train.train_loss"] == pytest.approx(metrics["train"]["train_loss"])
    assert run.data.metrics["evaluation.finetuned.accuracy"] == pytest.approx(
        metrics["evaluation"]["finetuned"]["accuracy"]
    )
    assert run.data.metrics["usage.cpu_seconds"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "report.html", "adapter"} <= artifacts
    adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter


def test_tracking_the_same_run_again_logs_nothing_twice(tracked, mlflow_server, tiny_model):
    from mlflow import MlflowClient

    from slmops_pipelines.stages.tracking import track

    out, metrics = tracked
    manifest = finetune_manifest(
        "tracked", tiny_model, tracking={"mlflow": {"trackingUri": mlflow_server, "experiment": "tone"}}
    )
    again = track(job_run(FineTuneJob.model_validate(manifest), str(out)), metrics, out)
    assert again["mlflow"]["runId"] == metrics["tracking"]["mlflow"]["runId"]
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tone")
    assert (
        len(
            client.search_runs([experiment.experiment_id], filter_string="tags.`slmops.run` LIKE '%tracked%'")
        )
        == 1
    )


def test_an_unreachable_server_never_fails_the_job(tiny_model, tmp_path):
    nobody = f"http://127.0.0.1:{free_port()}"
    manifest = finetune_manifest("untracked", tiny_model, tracking={"mlflow": {"trackingUri": nobody}})
    out = tmp_path / "untracked"
    outcome = run_finetune(job_run(FineTuneJob.model_validate(manifest), str(out)))
    assert (out / "manifest.json").exists() and outcome.metrics["train"]["global_step"] == 4
    recorded = json.loads((out / "metrics.json").read_text())["tracking"]["mlflow"]
    assert recorded["trackingUri"] == nobody and "error" in recorded and "runId" not in recorded


def test_search_trials_become_child_runs(tiny_model, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    manifest = finetune_manifest(
        "searched",
        tiny_model,
        tracking={"mlflow": {"trackingUri": mlflow_server, "experiment": "search"}},
        training={"maxSteps": 4, "evalSteps": 2, "saveSteps": 4},
        search={
            "strategy": "grid",
            "trials": 2,
            "space": {"training.learningRate": {"values": [1e-3, 5e-4]}},
        },
    )
    out = tmp_path / "searched"
    run_finetune(job_run(FineTuneJob.model_validate(manifest), str(out)))
    parent = json.loads((out / "metrics.json").read_text())["tracking"]["mlflow"]["runId"]
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("search")
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert len(children) == 2
    assert {c.data.params["training.learningRate"] for c in children} == {"0.001", "0.0005"}
    assert all("value" in c.data.metrics for c in children)
