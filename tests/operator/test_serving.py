"""``spec.serve``: an OptimizeJob that passed its gates gets its InferenceService; a failed one never replaces it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.operator.conftest import create, current, running_operator, wait_until
from tests.operator.test_kfp_backend import claimed_by, kfp_settings

ISVC = "serving.kserve.io/v1beta1/inferenceservices"
ISVC_API = "/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices"


def serve_job(name: str, model: Path, **serve) -> dict:
    return {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "OptimizeJob",
        "metadata": {"name": name},
        "spec": {
            "source": {"model": {"uri": str(model)}},
            "targets": [
                {"name": "gpu-fp16", "provider": "CUDAExecutionProvider", "precision": "fp16"},
                {"name": "cpu-int4", "provider": "CPUExecutionProvider", "precision": "int4"},
            ],
            "serve": {"name": "tone", **serve},
        },
    }


def publish_targets(out: Path) -> None:
    """What an OptimizeJob's publish step leaves behind once every gate passed."""
    files = []
    for target in ("gpu-fp16", "cpu-int4"):
        (out / "targets" / target).mkdir(parents=True, exist_ok=True)
        (out / "targets" / target / "genai_config.json").write_text("{}")
        files.append({"path": f"targets/{target}/genai_config.json"})
    metrics = {
        "targets": {"gpu-fp16": {"metrics": {}}, "cpu-int4": {"metrics": {"size_mb": 84.0}}},
        "gates": [],
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "manifest.json").write_text(json.dumps({"files": files, **claimed_by(out)}))


def status(kube, name: str) -> dict:
    return (current(kube, "default", "optimizejobs", name) or {}).get("status") or {}


def serving_condition(kube, name: str) -> dict:
    return next((c for c in status(kube, name).get("conditions") or [] if c["type"] == "Serving"), {})


def isvc(kube, name: str = "tone") -> dict | None:
    try:
        obj = kube.objects[ISVC, "default", name]
    except KeyError:
        return None
    return None if obj.deleted else obj.raw


async def finish(kube, fake_kfp, tmp_path: Path, name: str, *, succeed: bool) -> None:
    run_name = await wait_until(
        lambda: (status(kube, name).get("run") or {}).get("name"), what=f"{name}'s run"
    )
    run = next(r for r in fake_kfp.created if r["display_name"] == run_name)
    if succeed:
        publish_targets(tmp_path / "outputs" / "default" / name)
        fake_kfp.set_state(run["run_id"], "SUCCEEDED")
    else:
        fake_kfp.set_state(run["run_id"], "FAILED", error="gate maxAccuracyDrop violated by cpu-int4")
    phase = "Succeeded" if succeed else "Failed"
    await wait_until(lambda: status(kube, name).get("phase") == phase, what=f"{name} {phase}")


async def test_a_job_that_passed_its_gates_is_served_and_a_failed_one_never_replaces_it(
    kube, fake_kfp, tiny_model, tmp_path
):
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        body = serve_job(
            "tone-v1",
            tiny_model,
            replicas=2,
            resources={"cpu": "2", "memoryLimit": "2Gi"},
            serviceAccountName="kserve-s3",
        )
        await create(kube, "default", "optimizejobs", body)
        await wait_until(lambda: status(kube, "tone-v1").get("phase") == "Running", what="Running")
        assert isvc(kube) is None  # nothing is served before the gates passed
        await finish(kube, fake_kfp, tmp_path, "tone-v1", succeed=True)

        v1_output = tmp_path / "outputs" / "default" / "tone-v1"
        targets = status(kube, "tone-v1")["targets"]
        assert targets["cpu-int4"] == {
            "storageUri": str(v1_output / "targets" / "cpu-int4"),
            "provider": "CPUExecutionProvider",
            "precision": "int4",
        }
        assert targets["gpu-fp16"]["storageUri"] == str(v1_output / "targets" / "gpu-fp16")
        served = await wait_until(lambda: isvc(kube), what="the InferenceService")
        job_uid = current(kube, "default", "optimizejobs", "tone-v1")["metadata"]["uid"]
        [owner] = served["metadata"]["ownerReferences"]
        assert owner["uid"] == job_uid and owner["kind"] == "OptimizeJob" and owner["controller"] is True
        predictor = served["spec"]["predictor"]
        assert predictor["minReplicas"] == predictor["maxReplicas"] == 2
        assert predictor["serviceAccountName"] == "kserve-s3"
        assert predictor["model"] == {
            "modelFormat": {"name": "onnxruntime-genai"},
            "runtime": "slmops-onnxruntime-genai",
            "storageUri": str(v1_output / "targets" / "cpu-int4"),  # the CPU target: the runtime's
            "resources": {"requests": {"cpu": "2"}, "limits": {"memory": "2Gi"}},
        }
        await wait_until(
            lambda: serving_condition(kube, "tone-v1").get("reason") == "NotReady", what="NotReady"
        )

        # KServe reports it ready: the job's status says where.
        url = "http://tone.default.example.com"
        ready = {"status": {"url": url, "conditions": [{"type": "Ready", "status": "True"}]}}
        response = await kube.patch(
            f"{ISVC_API}/tone/status", json=ready, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert response.status == 200, await response.text()
        await wait_until(lambda: serving_condition(kube, "tone-v1").get("status") == "True", what="Serving")
        assert status(kube, "tone-v1")["serving"] == {
            "name": "tone",
            "target": "cpu-int4",
            "storageUri": str(v1_output / "targets" / "cpu-int4"),
            "url": url,
            "ready": True,
        }

        # KServe's webhook defaults fields we never set: the operator does not patch them back.
        defaulted = {"spec": {"predictor": {"model": {"protocolVersion": "v1"}}}}
        response = await kube.patch(
            f"{ISVC_API}/tone", json=defaulted, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert response.status == 200, await response.text()
        version = isvc(kube)["metadata"]["resourceVersion"]
        await asyncio.sleep(1.5)  # five of the operator's passes
        assert isvc(kube)["metadata"]["resourceVersion"] == version

        # A later job whose gates fail: what serves stays v1's.
        await create(kube, "default", "optimizejobs", serve_job("tone-v2", tiny_model))
        await finish(kube, fake_kfp, tmp_path, "tone-v2", succeed=False)
        await wait_until(
            lambda: serving_condition(kube, "tone-v2").get("reason") == "NotServed", what="NotServed"
        )
        assert isvc(kube)["spec"]["predictor"]["model"]["storageUri"] == str(
            v1_output / "targets" / "cpu-int4"
        )
        assert isvc(kube)["metadata"]["ownerReferences"][0]["uid"] == job_uid

        # A later job that passes takes the name over; v1 says so and stops acting.
        await create(kube, "default", "optimizejobs", serve_job("tone-v3", tiny_model))
        await finish(kube, fake_kfp, tmp_path, "tone-v3", succeed=True)
        v3_target = str(tmp_path / "outputs" / "default" / "tone-v3" / "targets" / "cpu-int4")
        await wait_until(
            lambda: isvc(kube)["spec"]["predictor"]["model"]["storageUri"] == v3_target, what="the takeover"
        )
        v3_uid = current(kube, "default", "optimizejobs", "tone-v3")["metadata"]["uid"]
        assert [o["uid"] for o in isvc(kube)["metadata"]["ownerReferences"]] == [v3_uid]
        await wait_until(
            lambda: serving_condition(kube, "tone-v1").get("reason") == "Replaced", what="Replaced"
        )
        assert status(kube, "tone-v1")["serving"]["replacedBy"] == "tone-v3"
        await wait_until(
            lambda: status(kube, "tone-v3").get("serving", {}).get("name") == "tone", what="v3 serving"
        )
        assert isvc(kube)["spec"]["predictor"]["model"]["storageUri"] == v3_target  # v1 never took it back


async def test_an_inference_service_slmops_did_not_make_is_never_changed(
    kube, fake_kfp, tiny_model, tmp_path
):
    theirs = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "tone"},
        "spec": {
            "predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://theirs/model"}}
        },
    }
    response = await kube.post(ISVC_API, json=theirs)
    assert response.status in (200, 201), await response.text()
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "optimizejobs", serve_job("tone-v1", tiny_model))
        await finish(kube, fake_kfp, tmp_path, "tone-v1", succeed=True)
        await wait_until(
            lambda: serving_condition(kube, "tone-v1").get("reason") == "NameTaken", what="NameTaken"
        )
    assert isvc(kube)["spec"]["predictor"]["model"]["storageUri"] == "s3://theirs/model"


async def test_serve_must_name_a_target_the_cpu_runtime_runs(kube, tiny_model):
    body = serve_job("tone-gpu", tiny_model, target="gpu-fp16")
    response = await kube.post("/apis/slmops.io/v1alpha1/namespaces/default/optimizejobs", json=body)
    assert response.status == 422
    assert "serve.target" in (await response.json())["message"]


async def test_without_kserve_the_job_says_serving_is_unavailable(kube, fake_kfp, tiny_model, tmp_path):
    del kube.resources[ISVC]  # a cluster without KServe's CRDs: the API server answers 404
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "optimizejobs", serve_job("tone-v1", tiny_model))
        await finish(kube, fake_kfp, tmp_path, "tone-v1", succeed=True)
        unavailable = await wait_until(
            lambda: (
                serving_condition(kube, "tone-v1").get("reason") == "ServingUnavailable"
                and serving_condition(kube, "tone-v1")
            ),
            what="ServingUnavailable",
        )
        assert "inferenceservices" in unavailable["message"] and unavailable["status"] == "False"
        assert status(kube, "tone-v1")["phase"] == "Succeeded"  # the job's own verdict stands
