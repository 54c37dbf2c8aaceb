"""Tenants stay in their lane in every operator mode: the admission policy, driven over HTTPS.

Each manifest is created through the emulated API server, which sends the AdmissionReview
to the running operator's webhook, as a real API server does.  The refusals reproduce what
a security review found (standalone KFP: KFP's own account, its database's claim, its
pull secrets, system priority, control-plane tolerations, a model's own code; every mode:
another namespace's output slot; local: the operator pod's own files); the accepted
manifests are what each mode's tenants legitimately write.  Accepted jobs are suspended, so
nothing runs.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import pytest

from slmops_operator import policy
from slmops_operator.handlers.validation import problems_of
from slmops_operator.settings import OperatorSettings
from tests.conftest import TONE_DATA, finetune_manifest
from tests.operator.conftest import (
    API,
    create,
    current,
    delete,
    local_settings,
    patch,
    running_operator,
    wait_until,
)
from tests.operator.test_kfp_backend import kfp_settings

ROOT = "s3://shared/slmops"
TEAM_A = {
    "team-a": {
        "serviceAccounts": ["team-a-trainer"],
        "claims": ["team-a-data"],
        "imagePullSecrets": ["team-a-registry"],
        "images": ["registry.example/team-a/"],
    }
}


def job(name: str, **spec) -> dict:
    """A suspended FineTuneJob (nothing runs) with ``spec`` merged in, per section."""
    manifest = finetune_manifest(name, Path("/models/tiny"), **spec)
    manifest["spec"]["suspend"] = True
    return manifest


def with_model(name: str, **model) -> dict:
    manifest = job(name)
    manifest["spec"]["model"].update(model)
    return manifest


async def admit(kube, namespace: str, body: dict) -> tuple[int, str]:
    response = await kube.post(f"{API}/{namespace}/finetunejobs", json=copy.deepcopy(body))
    answer = await response.json()
    return response.status, answer.get("message", "")


async def assert_refused(kube, namespace: str, body: dict, field: str, why: str) -> None:
    status, message = await admit(kube, namespace, body)
    assert status == 422, (body["metadata"]["name"], status, message)
    assert f"denied the request: {field}:" in message or f"; {field}:" in message, message
    assert why in message, message


async def assert_accepted(kube, namespace: str, body: dict) -> None:
    status, message = await admit(kube, namespace, body)
    assert status in (200, 201), (body["metadata"]["name"], message)


# -- standalone KFP: pods of every team share the KFP namespace ----------------------------------------


STANDALONE_REFUSED = [
    (job("kfp-account", serviceAccountName="ml-pipeline"), "spec.serviceAccountName", "allow-list"),
    (job("own-code", image="registry.example/team-b/x:1"), "spec.image", "allow-list"),
    (
        with_model("kfp-database", uri="pvc://mysql-pv-claim/models/x"),
        "spec.model.uri",
        "claim 'mysql-pv-claim'",
    ),
    (
        job("kfp-pull-secret", imagePullSecrets=[{"name": "mlpipeline-minio-artifact"}]),
        "spec.imagePullSecrets[0].name",
        "allow-list",
    ),
    (
        job("system-priority", resources={"priorityClassName": "system-node-critical"}),
        "spec.resources.priorityClassName",
        "reserved",
    ),
    (
        job(
            "control-plane",
            resources={
                "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]
            },
        ),
        "spec.resources.tolerations[0]",
        "control-plane",
    ),
    (
        job("every-taint", resources={"tolerations": [{"operator": "Exists"}]}),
        "spec.resources.tolerations[0]",
        "every taint",
    ),
    (
        with_model("remote-code", trustRemoteCode=True),
        "spec.model.trustRemoteCode",
        "SLMOPS_ALLOW_TRUST_REMOTE_CODE",
    ),
    (job("other-slot", output={"uri": f"{ROOT}/team-b/their-job"}), "spec.output.uri", "slot"),
    (job("dot-dot", output={"uri": f"{ROOT}/team-a/../team-b/x"}), "spec.output.uri", "'..'"),
    (job("double-slash", output={"uri": f"{ROOT}//team-b/x"}), "spec.output.uri", "'//'"),
    (
        job("read-other-slot", dataset={"uri": f"{ROOT}/team-b/ft/data.jsonl"}),
        "spec.dataset.uri",
        "another namespace's output",
    ),
]

STANDALONE_ACCEPTED = [
    job(
        "allowed",
        serviceAccountName="team-a-trainer",
        image="registry.example/team-a/slmops-trainer:0.1.0-cuda",
        imagePullSecrets=[{"name": "team-a-registry"}],
        dataset={"uri": "pvc://team-a-data/tone.jsonl"},
        output={"uri": f"{ROOT}/team-a/allowed"},
        resources={
            "priorityClassName": "high-priority",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    ),
    job("defaults"),  # KFP's default account, the default output slot
    job("own-slot-input", dataset={"uri": f"{ROOT}/team-a/prep/data.jsonl"}),
    job("elsewhere", output={"uri": "s3://team-a-bucket/runs/x"}),
]


async def test_standalone_kfp_admits_only_what_the_namespace_is_allowed(kube, fake_kfp, tmp_path):
    settings = kfp_settings(
        tmp_path, fake_kfp, kfp_multi_user=False, default_output=ROOT, tenant_allow=TEAM_A
    )
    async with running_operator(kube, settings):
        for body, field, why in STANDALONE_REFUSED:
            await assert_refused(kube, "team-a", body, field, why)
        for body in STANDALONE_ACCEPTED:
            await assert_accepted(kube, "team-a", body)
        # team-a's allow-list is not team-b's
        await assert_refused(
            kube,
            "team-b",
            job("borrowed", serviceAccountName="team-a-trainer"),
            "spec.serviceAccountName",
            "team-b",
        )


async def test_standalone_kfp_may_allow_a_models_own_code(kube, fake_kfp, tmp_path):
    settings = kfp_settings(
        tmp_path, fake_kfp, kfp_multi_user=False, default_output=ROOT, allow_trust_remote_code=True
    )
    async with running_operator(kube, settings):
        await assert_accepted(kube, "team-a", with_model("remote-code", trustRemoteCode=True))


# -- multi-user KFP: the pods run in the job's own namespace --------------------------------------------


async def test_multi_user_kfp_lets_a_namespace_use_what_it_owns(kube, multi_user_kfp, tmp_path):
    settings = kfp_settings(tmp_path, multi_user_kfp, kfp_multi_user=True, default_output=ROOT)
    async with running_operator(kube, settings):
        own = job(
            "own",
            serviceAccountName="default-editor",
            imagePullSecrets=[{"name": "registry"}],
            dataset={"uri": "pvc://team-a-data/tone.jsonl"},
        )
        own["spec"]["model"]["trustRemoteCode"] = True
        await assert_accepted(kube, "team-a", own)
        for body, field, why in STANDALONE_REFUSED:
            if field in (
                "spec.serviceAccountName",
                "spec.image",
                "spec.model.uri",
                "spec.imagePullSecrets[0].name",
            ):
                continue  # the namespace's own
            if field == "spec.model.trustRemoteCode":
                continue  # runs in the tenant's own pods
            await assert_refused(kube, "team-a", body, field, why)


async def test_a_mode_kfp_has_not_told_is_standalone(tmp_path):
    settings = OperatorSettings(backend="kfp", default_output=ROOT, local_state_dir=tmp_path)
    assert settings.mode == "standalone"
    body = job("kfp-account", serviceAccountName="ml-pipeline")
    body["metadata"]["namespace"] = "team-a"
    assert problems_of("FineTuneJob", body, settings=settings)


# -- the local backend: the work runs in the operator's own pod -----------------------------------------


def local_refusals(settings: OperatorSettings) -> list[tuple[dict, str, str]]:
    state = settings.local_state_dir
    return [
        (with_model("environ", uri="/proc/1/environ"), "spec.model.uri", "system files"),
        (
            job("token", dataset={"uri": "/var/run/secrets/kubernetes.io/serviceaccount/token"}),
            "spec.dataset.uri",
            "system files",
        ),
        (
            job("relative", dataset={"uri": "../../../../../../../proc/self/environ"}),
            "spec.dataset.uri",
            "system",
        ),
        (job("state", dataset={"uri": f"{state}/some-run.request.json"}), "spec.dataset.uri", "state folder"),
        (
            job("cert", dataset={"uri": f"{settings.webhook_cert_dir}/tls.key"}),
            "spec.dataset.uri",
            "certificate",
        ),
        (
            job("other-output", dataset={"uri": f"{policy.default_root(settings)}/team-b/ft/data.jsonl"}),
            "spec.dataset.uri",
            "another namespace's output",
        ),
        (
            with_model("remote-code", uri=str(tmp_model_dir(settings)), trustRemoteCode=True),
            "spec.model.trustRemoteCode",
            "own pod",
        ),
        (job("file-colon", dataset={"uri": "file:/etc/passwd"}), "spec.dataset.uri", "without '//'"),
    ]


def tmp_model_dir(settings: OperatorSettings) -> Path:
    return settings.local_state_dir.parent / "models" / "tiny"


async def test_the_local_backend_keeps_jobs_out_of_the_operators_files(kube, tmp_path):
    settings = local_settings(tmp_path)  # no allowed roots: the chart's default
    async with running_operator(kube, settings):
        for body, field, why in local_refusals(settings):
            await assert_refused(kube, "team-a", body, field, why)
        own = f"{policy.default_root(settings)}/team-a/prep/data.jsonl"
        await assert_accepted(kube, "team-a", job("ok", dataset={"uri": str(TONE_DATA)}))
        await assert_accepted(kube, "team-a", job("own-output", dataset={"uri": own}))


async def test_the_local_backend_with_allowed_roots(kube, tmp_path):
    models, data = tmp_path / "models", tmp_path / "data"
    settings = local_settings(tmp_path, local_allowed_roots=[models, data])
    async with running_operator(kube, settings):
        inside = with_model("inside", uri=str(models / "tiny"))
        inside["spec"]["dataset"]["uri"] = str(data / "tone.jsonl")
        await assert_accepted(kube, "team-a", inside)
        outside = with_model("outside", uri=str(models / "tiny"))  # the tone data is not under data/
        await assert_refused(kube, "team-a", outside, "spec.dataset.uri", "SLMOPS_LOCAL_ALLOWED_ROOTS")
        escape = with_model("escape", uri=f"{models}/../../../etc")
        await assert_refused(kube, "team-a", escape, "spec.model.uri", "SLMOPS_LOCAL_ALLOWED_ROOTS")
        for body, field, why in local_refusals(settings)[:2]:  # protected even when a root holds them
            await assert_refused(kube, "team-a", body, field, why)


@pytest.mark.parametrize("uri", ["/proc/self/environ", "/dev/shm/x"])
def test_the_local_backend_writes_no_system_folder(uri, tmp_path):
    settings = local_settings(tmp_path)
    body = job("out", output={"uri": uri})
    body["metadata"]["namespace"] = "team-a"
    assert any(p.startswith("spec.output.uri:") for p in problems_of("FineTuneJob", body, settings=settings))


def test_a_symlink_into_a_protected_folder_is_refused(tmp_path):
    settings = local_settings(tmp_path)
    link = tmp_path / "innocent"
    link.symlink_to("/proc/self")
    body = with_model("link", uri=str(link / "environ"))
    body["metadata"]["namespace"] = "team-a"
    [problem] = problems_of("FineTuneJob", body, settings=settings)
    assert problem.startswith("spec.model.uri:") and "system files" in problem


# -- status is not trusted: cancel, state and cleanup act on the run the operator names ---------------


async def patch_status(kube, namespace: str, name: str, status: dict) -> None:
    response = await kube.patch(
        f"{API}/{namespace}/finetunejobs/{name}/status",
        json={"status": status},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status == 200, await response.text()


async def test_a_patched_status_never_stops_or_reads_another_teams_run(kube, fake_kfp, tiny_model, tmp_path):
    """team-a points its status.run at team-b's run, then suspends and deletes its job: b's run goes on."""
    settings = kfp_settings(tmp_path, fake_kfp)
    async with running_operator(kube, settings):
        for namespace, name in (("team-a", "a"), ("team-b", "b")):
            await create(kube, namespace, "finetunejobs", finetune_manifest(name, tiny_model))
        await wait_until(lambda: len(fake_kfp.created) == 2, what="both runs")
        runs = {"a": next(r for r in fake_kfp.created if "-team-a-" in r["display_name"])}
        runs["b"] = next(r for r in fake_kfp.created if "-team-b-" in r["display_name"])
        await wait_until(
            lambda: (current(kube, "team-a", "finetunejobs", "a").get("status") or {}).get("run")
        )
        own = current(kube, "team-a", "finetunejobs", "a")["status"]["run"]
        await patch_status(kube, "team-a", "a", {"run": {**own, "id": runs["b"]["run_id"]}})
        fake_kfp.set_state(runs["b"]["run_id"], "FAILED", error="team-b's secret failure")
        await asyncio.sleep(1.5)  # several passes: a's status must not mirror b's run
        status = current(kube, "team-a", "finetunejobs", "a")["status"]
        assert status["phase"] == "Running" and "team-b" not in json.dumps(status)
        await patch(kube, "team-a", "finetunejobs", "a", {"spec": {"suspend": True}})
        await wait_until(lambda: runs["a"]["run_id"] in fake_kfp.terminated, what="a's own run cancelled")
        await delete(kube, "team-a", "finetunejobs", "a")
        await wait_until(lambda: current(kube, "team-a", "finetunejobs", "a") is None, what="deletion")
        assert runs["b"]["run_id"] not in fake_kfp.terminated


async def test_the_local_backend_names_its_files_never_from_status(tmp_path):
    """A status.run.id of '../victim' neither reads nor writes a file outside the state folder."""
    from slmops_operator.api.status import RunRef
    from slmops_operator.backends.base import JobRequest
    from slmops_operator.backends.local import LocalBackend
    from slmops_pipelines import jobs

    settings = local_settings(tmp_path)
    backend = LocalBackend(settings)
    victim = tmp_path / "victim.state.json"
    victim.write_text(json.dumps({"phase": "Succeeded", "metrics": {"secret": 1.0}}))
    spec = jobs.job_kind("FineTuneJob").spec_class.model_validate(job("x")["spec"])
    request = JobRequest("FineTuneJob", "team-a", "x", "uid-x", 1, spec, str(tmp_path / "out"))
    forged = RunRef(backend="local", id="../victim", name=request.run_name)
    await backend.cancel(forged, request)
    state = await backend.state(forged, request)
    assert state.metrics == {} and json.loads(victim.read_text())["phase"] == "Succeeded"
    assert (settings.local_state_dir / f"{request.run_name}.state.json").exists()
    assert sorted(p.parent for p in tmp_path.rglob("*.state.json")) == [tmp_path, settings.local_state_dir]


# -- no confused deputy: the operator reads a tenant's URI only with the tenant's keys ---------------


async def test_the_operator_never_reads_a_tenants_uri_with_its_own_keys(
    kube, fake_kfp, tiny_model, tmp_path, s3_env, s3_bucket
):
    """team-a names team-b's output as its own: the operator (whose keys could read it) neither mirrors
    its metrics nor its recorded error into team-a's status, and claims nothing there."""
    from slmops_pipelines.storage import open_store
    from tests.operator.test_kfp_backend import publish_outputs

    victim = f"s3://{s3_bucket}/team-b-private/job"
    published = tmp_path / "victim"
    publish_outputs(published)
    store = open_store(victim)  # with the ambient keys: the operator's own
    for path in published.rglob("*"):
        if path.is_file():
            store.upload_file(path, path.relative_to(published).as_posix())
    store.write_text(
        ".slmops/error.json", json.dumps({"message": "team-b's secret column", "reason": "InvalidInput"})
    )
    before = sorted(info.key for info in store.list(""))
    settings = kfp_settings(tmp_path, fake_kfp, default_output=f"s3://{s3_bucket}/slmops")
    async with running_operator(kube, settings):
        for name in ("thief", "thief-fails"):
            body = finetune_manifest(name, tiny_model, output={"uri": victim})
            await create(kube, "team-a", "finetunejobs", body)
        await wait_until(lambda: len(fake_kfp.created) == 2, what="both runs")
        by_name = {
            ("thief-fails" if "-thief-fails-" in r["display_name"] else "thief"): r for r in fake_kfp.created
        }
        fake_kfp.set_state(by_name["thief"]["run_id"], "SUCCEEDED")
        fake_kfp.set_state(by_name["thief-fails"]["run_id"], "FAILED", error="task train failed")

        def finished(name: str) -> dict | None:
            status = (current(kube, "team-a", "finetunejobs", name) or {}).get("status") or {}
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        succeeded = await wait_until(lambda: finished("thief"), what="thief to finish")
        failed = await wait_until(lambda: finished("thief-fails"), what="thief-fails to finish")
    assert succeeded["phase"] == "Succeeded" and not succeeded.get("metrics")
    assert "not read by the operator" in succeeded["message"]
    assert failed["message"] == "task train failed" and "secret column" not in json.dumps(failed)
    assert sorted(info.key for info in store.list("")) == before  # no claim written there either


async def test_the_operator_never_writes_a_secret_it_did_not_make(kube):
    """RBAC cannot limit writes in the KFP namespace by name: the operator checks its label first."""
    import kopf
    import pytest

    from slmops_operator.credentials import Credentials, MissingCredentials, ResolvedSecret
    from slmops_operator.handlers.kube import KubeApi
    from slmops_pipelines.jobs import SecretRef
    from tests.operator.conftest import create_secret

    await create_secret(kube, "kubeflow", "run-x-output", {"AWS_ACCESS_KEY_ID": "kfp-own"})
    server = str(kube.url).rstrip("/")
    api = KubeApi(lambda **_: kopf.ConnectionInfo(server=server, insecure=True))
    credentials = Credentials(api)
    secret = ResolvedSecret(
        SecretRef("output", "output.credentialsSecret", "s3"), {"AWS_ACCESS_KEY_ID": "dGVuYW50"}
    )
    job_of = {"kind": "FineTuneJob", "namespace": "team-a", "name": "x"}
    try:
        with pytest.raises(MissingCredentials, match="did not make"):
            await credentials.stage_copies([secret], run_name="run-x", namespace="kubeflow", job=job_of)
        await credentials.release_copies(run_name="run-x", namespace="kubeflow")
        kept = await api.get("/api/v1/namespaces/kubeflow/secrets/run-x-output")
        assert kept is not None and kept["data"]["AWS_ACCESS_KEY_ID"] != "dGVuYW50"
        # its own copy: made, made again (a retried submit), released
        for _ in range(2):
            await credentials.stage_copies([secret], run_name="run-y", namespace="kubeflow", job=job_of)
        assert (await api.get("/api/v1/namespaces/kubeflow/secrets/run-y-output"))["data"] == secret.data
        await credentials.release_copies(run_name="run-y", namespace="kubeflow")
        assert await api.get("/api/v1/namespaces/kubeflow/secrets/run-y-output") is None
    finally:
        await api.close()
