"""End to end with the local backend: kubectl-apply a job, watch it run, read the results in status."""

from __future__ import annotations

import json
from pathlib import Path

from slmops_pipelines.storage import open_store
from tests.conftest import finetune_manifest
from tests.operator.conftest import create, current, events, local_settings, running_operator, wait_until


def optimize_manifest(name: str, ref: str) -> dict:
    return {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "OptimizeJob",
        "metadata": {"name": name},
        "spec": {
            "source": {"fineTuneJobRef": {"name": ref}},
            "targets": [{"name": "cpu-int4", "provider": "CPUExecutionProvider", "precision": "int4"}],
            "evaluation": {"maxNewTokens": 4, "maxSamples": 4, "metrics": ["accuracy", "size"]},
        },
    }


def condition(obj: dict, type_: str) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


async def test_finetune_then_optimize(kube, tiny_model: Path, tmp_path, s3_env, s3_bucket):
    async with running_operator(kube, local_settings(tmp_path)):
        await _finetune_then_optimize(kube, tiny_model, s3_env, s3_bucket)


async def _finetune_then_optimize(kube, tiny_model: Path, s3_env, s3_bucket) -> None:
    # The OptimizeJob first: it waits for the FineTuneJob it refers to.
    await create(kube, "default", "optimizejobs", optimize_manifest("tone-opt", "tone"))
    await wait_until(
        lambda: (
            (current(kube, "default", "optimizejobs", "tone-opt") or {}).get("status", {}).get("phase")
            == "Pending"
        ),
        what="the OptimizeJob to wait",
    )
    waiting = current(kube, "default", "optimizejobs", "tone-opt")["status"]
    assert "waiting for FineTuneJob tone" in waiting["message"]

    body = finetune_manifest(
        "tone", tiny_model, output={"uri": f"s3://{s3_bucket}/jobs/tone"}, training={"maxSteps": 6}
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
    for key in ("adapter", "manifest", "report"):
        assert status["artifacts"][key].startswith(f"s3://{s3_bucket}/jobs/tone/")
    store = open_store(status["artifacts"]["output"])
    assert store.exists("manifest.json") and store.exists("adapter/adapter_config.json")

    reasons = [e["reason"] for e in events(kube, "default", "tone")]
    assert reasons.count("Accepted") == 1  # the create handler ran exactly once
    assert "RunSubmitted" in reasons and "RunSucceeded" in reasons
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
    assert open_store(opt["status"]["artifacts"]["manifest"].rsplit("/", 1)[0]).exists(
        "targets/cpu-int4/genai_config.json"
    )
