"""End to end with the local backend: kubectl-apply a job, watch it run, read the results in status."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import generate_latest

from slmops_pipelines.storage import open_store
from tests.conftest import finetune_manifest
from tests.operator.conftest import (
    create,
    create_secret,
    current,
    delete,
    events,
    local_settings,
    patch,
    running_operator,
    s3_secret_data,
    wait_until,
)


def optimize_manifest(name: str, ref: str, **spec) -> dict:
    return {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "OptimizeJob",
        "metadata": {"name": name},
        "spec": {
            "source": {"fineTuneJobRef": {"name": ref}},
            "targets": [{"name": "cpu-int4", "provider": "CPUExecutionProvider", "precision": "int4"}],
            "evaluation": {"maxNewTokens": 4, "maxSamples": 4, "metrics": ["accuracy", "size"]},
            "output": {"credentialsSecret": "team-s3"},  # reads its source from S3
            **spec,
        },
    }


def condition(obj: dict, type_: str) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


async def test_finetune_then_optimize(kube, tiny_model: Path, tmp_path, s3_env, s3_bucket, mlflow_server):
    async with running_operator(kube, local_settings(tmp_path)) as operator:
        await _finetune_then_optimize(kube, tiny_model, s3_env, s3_bucket, mlflow_server)
    exposition = generate_latest(operator.metrics.registry).decode()
    assert 'slmops_transitions_total{kind="FineTuneJob",phase="Succeeded"} 1.0' in exposition
    assert 'slmops_jobs{kind="FineTuneJob",phase="Succeeded"} 1.0' in exposition
    assert "slmops_reconcile_seconds_count" in exposition


async def _finetune_then_optimize(kube, tiny_model: Path, s3_env, s3_bucket, mlflow_server: str) -> None:
    # Both jobs log to MLflow with the team's Secret (the server has no auth: it ignores them).
    await create_secret(
        kube, "default", "team-mlflow", {"MLFLOW_TRACKING_USERNAME": "team", "MLFLOW_TRACKING_PASSWORD": "pw"}
    )
    tracking = {
        "mlflow": {"trackingUri": mlflow_server, "experiment": "team", "credentialsSecret": "team-mlflow"}
    }
    # The OptimizeJob first: it waits for the FineTuneJob it refers to.
    await create(kube, "default", "optimizejobs", optimize_manifest("tone-opt", "tone", tracking=tracking))
    await wait_until(
        lambda: (
            (current(kube, "default", "optimizejobs", "tone-opt") or {}).get("status", {}).get("phase")
            == "Pending"
        ),
        what="the OptimizeJob to wait",
    )
    waiting = current(kube, "default", "optimizejobs", "tone-opt")["status"]
    assert "waiting for FineTuneJob tone" in waiting["message"]

    # The worker gets the job's Secret, never the operator's own AWS_* (s3_env sets those).
    await create_secret(kube, "default", "team-s3", s3_secret_data(s3_env))
    body = finetune_manifest(
        "tone",
        tiny_model,
        output={"uri": f"s3://{s3_bucket}/jobs/tone", "credentialsSecret": "team-s3"},
        training={"maxSteps": 6},
        tracking=tracking,
    )
    await create(kube, "default", "finetunejobs", body)
    phases, progress = [], []

    def finished():
        obj = current(kube, "default", "finetunejobs", "tone") or {}
        status = obj.get("status") or {}
        if status.get("phase") and (not phases or phases[-1] != status["phase"]):
            phases.append(status["phase"])
        if (status.get("progress") or {}).get("step"):
            progress.append(status["progress"])
        return status.get("phase") in ("Succeeded", "Failed") and obj

    obj = await wait_until(finished, timeout=240, what="the FineTuneJob to finish")
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    assert phases[0] == "Running" and phases[-1] == "Succeeded"
    assert progress and progress[-1]["totalSteps"] == 6
    assert status["observedGeneration"] == 1 and status["run"]["backend"] == "local"
    assert condition(obj, "Ready")["status"] == "True" and condition(obj, "Succeeded")["status"] == "True"
    assert condition(obj, "Failed")["status"] == "False"
    assert status["startTime"] <= status["completionTime"]
    assert {"trainLoss", "accuracy", "tokensPerSecond"} <= status["metrics"].keys()
    assert {"data", "train", "evaluate"} <= status["usage"]["stages"].keys()
    assert status["usage"]["gpuSeconds"] == 0 and status["usage"]["cpuSeconds"] > 0
    for key in ("adapter", "manifest", "report"):
        assert status["artifacts"][key].startswith(f"s3://{s3_bucket}/jobs/tone/")
    store = open_store(status["artifacts"]["output"])
    assert store.exists("manifest.json") and store.exists("adapter/adapter_config.json")

    # kopf posts Events in the background: the last one may follow the status by a moment.
    await wait_until(
        lambda: "RunSucceeded" in [e["reason"] for e in events(kube, "default", "tone")], what="RunSucceeded"
    )
    reasons = [e["reason"] for e in events(kube, "default", "tone")]
    assert reasons.count("Accepted") == 1  # the create handler ran exactly once
    assert "RunSubmitted" in reasons
    text = json.dumps(obj) + json.dumps(events(kube, "default", "tone"))
    assert s3_env.secret_key not in text and s3_env.access_key not in text  # no secret ever shows

    opt = await wait_until(
        lambda: (
            (o := current(kube, "default", "optimizejobs", "tone-opt"))
            and o.get("status", {}).get("phase") in ("Succeeded", "Failed")
            and o
        ),
        timeout=240,
        what="the OptimizeJob to finish",
    )
    assert opt["status"]["phase"] == "Succeeded", opt["status"]
    assert opt["status"]["metrics"]["cpu-int4.sizeMb"] > 0
    _both_runs_are_in_mlflow(mlflow_server, obj, opt)
    assert open_store(opt["status"]["artifacts"]["manifest"].rsplit("/", 1)[0]).exists(
        "targets/cpu-int4/genai_config.json"
    )


def phase_of(kube, name: str) -> str | None:
    return ((current(kube, "default", "finetunejobs", name) or {}).get("status") or {}).get("phase")


def long_job(name: str, model: Path, **overrides) -> dict:
    return finetune_manifest(
        name, model, training={"maxSteps": 400, "saveSteps": 5, "loggingSteps": 1}, **overrides
    )


async def test_deleting_a_running_job_stops_its_worker(kube, tiny_model: Path, tmp_path):
    async with running_operator(kube, local_settings(tmp_path, delete_artifacts=True)):
        await create(kube, "default", "finetunejobs", long_job("stop-me", tiny_model))
        obj = await wait_until(
            lambda: (
                (o := current(kube, "default", "finetunejobs", "stop-me"))
                and (o.get("status", {}).get("progress") or {}).get("step")
                and o
            ),
            what="training to make progress",
        )
        state_file = tmp_path / "operator-state" / f"{obj['status']['run']['name']}.state.json"
        pid = json.loads(state_file.read_text())["pid"]
        await delete(kube, "default", "finetunejobs", "stop-me")
        await wait_until(lambda: current(kube, "default", "finetunejobs", "stop-me") is None, what="deletion")
    assert json.loads(state_file.read_text())["phase"] == "Cancelled"
    assert not list(
        (tmp_path / "outputs" / "default" / "stop-me").rglob("*.safetensors")
    )  # artifacts deleted
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


async def test_a_restarted_operator_adopts_the_running_worker(kube, tiny_model: Path, tmp_path):
    settings = local_settings(tmp_path)
    body = finetune_manifest("adopt", tiny_model, training={"maxSteps": 30, "loggingSteps": 1})
    async with running_operator(kube, settings):
        await create(kube, "default", "finetunejobs", body)
        await wait_until(
            lambda: (
                (current(kube, "default", "finetunejobs", "adopt") or {}).get("status", {}).get("progress")
                or {}
            ).get("step"),
            what="training to make progress",
        )
    # The operator is gone; its worker trains on.  A new operator takes over.
    async with running_operator(kube, settings):
        await wait_until(
            lambda: phase_of(kube, "adopt") in ("Succeeded", "Failed"), timeout=240, what="the end"
        )
    obj = current(kube, "default", "finetunejobs", "adopt")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    starts = (tmp_path / "operator-state" / f"{obj['status']['run']['name']}.starts").read_text().split()
    assert len(starts) == 1  # one worker, adopted: no duplicate run
    assert [e["reason"] for e in events(kube, "default", "adopt")].count("Accepted") == 1


async def test_the_namespace_limit_queues_and_suspend_holds(kube, tiny_model: Path, tmp_path):
    """A suspended job holds without a run; resumed while the namespace's one slot is taken,
    it queues, then runs once the slot is free (the race of the limit: test_kfp_backend)."""
    settings = local_settings(tmp_path, max_running_per_namespace=1)
    seen: set[str] = set()

    async with running_operator(kube, settings):
        await create(kube, "default", "finetunejobs", finetune_manifest("held", tiny_model, suspend=True))
        await create(kube, "default", "finetunejobs", finetune_manifest("first", tiny_model))
        await wait_until(lambda: phase_of(kube, "first") == "Running", what="the first job to run")
        held = current(kube, "default", "finetunejobs", "held")["status"]
        assert held["phase"] == "Pending" and "run" not in held
        suspended = next(c for c in held["conditions"] if c["type"] == "Suspended")
        assert suspended["status"] == "True"

        await patch(kube, "default", "finetunejobs", "held", {"spec": {"suspend": False}})

        def held_done() -> bool:
            if phase := phase_of(kube, "held"):
                seen.add(phase)
            return phase == "Succeeded"

        await wait_until(held_done, timeout=240, what="the resumed job")
        assert phase_of(kube, "first") == "Succeeded"
        assert "Queued" in seen  # resumed while the first one held the slot
        status = current(kube, "default", "finetunejobs", "held")["status"]
        assert status["observedGeneration"] == 2


async def test_a_bad_dataset_fails_the_job_and_its_dependents(kube, tiny_model: Path, tmp_path):
    async with running_operator(kube, local_settings(tmp_path)):
        await create(kube, "default", "optimizejobs", optimize_manifest("bad-opt", "bad"))
        body = finetune_manifest("bad", tiny_model, dataset={"promptTemplate": "Tone of: {sentence}"})
        body["spec"]["ttlSecondsAfterFinished"] = 2
        await create(kube, "default", "finetunejobs", body)
        failed = await wait_until(
            lambda: (
                (o := current(kube, "default", "finetunejobs", "bad"))
                and o.get("status", {}).get("phase") == "Failed"
                and o
            ),
            what="the FineTuneJob to fail",
        )
        assert failed["status"]["message"].startswith("spec.dataset.promptTemplate: ")
        assert "sentence" in failed["status"]["message"]
        assert (
            next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")["reason"]
            == "InvalidInput"
        )
        await wait_until(
            lambda: (
                (current(kube, "default", "optimizejobs", "bad-opt") or {}).get("status", {}).get("phase")
                == "Failed"
            ),
            what="the OptimizeJob to fail",
        )
        assert (
            current(kube, "default", "optimizejobs", "bad-opt")["status"]["conditions"][-2]["reason"]
            == "FineTuneJobFailed"
        )
        # ttlSecondsAfterFinished: the finished job goes away; its outputs would stay.
        await wait_until(lambda: current(kube, "default", "finetunejobs", "bad") is None, what="the TTL")


async def test_a_search_shows_its_trials_in_status(kube, tiny_model: Path, tmp_path):
    body = finetune_manifest(
        "searched",
        tiny_model,
        training={"maxSteps": 2},
        search={"strategy": "grid", "trials": 2, "space": {"lora.r": {"values": [4, 8]}}},
    )
    async with running_operator(kube, local_settings(tmp_path)):
        await create(kube, "default", "finetunejobs", body)
        await wait_until(
            lambda: phase_of(kube, "searched") in ("Succeeded", "Failed"), timeout=240, what="the end"
        )
    status = current(kube, "default", "finetunejobs", "searched")["status"]
    assert status["phase"] == "Succeeded", status
    trials = status["progress"]["trials"]
    assert trials["total"] == 2 and trials["done"] == 2 and trials["running"] == 0
    assert trials["bestTrial"] in (0, 1) and trials["bestValue"] > 0


def _both_runs_are_in_mlflow(mlflow_server: str, finetune: dict, optimize: dict) -> None:
    """The FineTuneJob's run and the OptimizeJob's, linked, read back with MLflow's own client."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    runs = {}
    for obj in (finetune, optimize):
        assert condition(obj, "Tracked")["status"] == "True", obj["status"]["conditions"]
        recorded = obj["status"]["tracking"]["mlflow"]
        assert condition(obj, "Tracked")["message"] == recorded["url"]
        runs[obj["kind"]] = client.get_run(recorded["runId"])
    tuned, optimized = runs["FineTuneJob"], runs["OptimizeJob"]
    assert tuned.data.params["training.maxSteps"] == "6" and client.get_metric_history(
        tuned.info.run_id, "loss"
    )
    assert optimized.data.tags["slmops.finetune_run_id"] == tuned.info.run_id
    assert optimized.data.metrics["targets.cpu-int4.metrics.size_mb"] > 0
    assert "targets.cpu-int4.metrics.accuracy" in optimized.data.metrics


async def test_find_names_a_run_an_earlier_process_started_and_nothing_else(tmp_path, tiny_model):
    """A finished run, or a live worker, is the job's; no state, or a dead unfinished worker
    (restarted by submit), is not."""
    import os

    from slmops_operator.backends.base import JobRequest
    from slmops_operator.backends.local import LocalBackend
    from slmops_pipelines.specs import FineTuneJobSpec

    settings = local_settings(tmp_path)
    backend = LocalBackend(settings)
    spec = FineTuneJobSpec.model_validate(finetune_manifest("x", tiny_model)["spec"])
    request = JobRequest("FineTuneJob", "default", "x", "uid-x", 1, spec, str(tmp_path / "out"))
    state = Path(settings.local_state_dir) / f"{request.run_name}.state.json"
    assert await backend.find(request) is None
    state.write_text(json.dumps({"phase": "Running", "pid": os.getpid()}))  # not this run's worker
    assert await backend.find(request) is None
    state.write_text(json.dumps({"phase": "Succeeded"}))
    found = await backend.find(request)
    assert found is not None and found.name == request.run_name
    await backend.close()
