"""A cluster shared by teams: credentials only from the job's namespace, deletes only of what a job owns, checks
that do not hang on the webhook.

Each test here reproduces a hole a platform engineer found in an earlier release.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from slmops_pipelines import jobs
from slmops_pipelines.storage import open_store
from tests.conftest import finetune_manifest
from tests.operator.conftest import (
    create,
    create_secret,
    current,
    delete,
    events,
    local_settings,
    running_operator,
    s3_secret_data,
    wait_until,
)
from tests.operator.test_kfp_backend import kfp_settings, phase, publish_outputs


def _keys(uri: str) -> list[str]:
    return sorted(info.key for info in open_store(uri).list(""))


async def test_deleting_a_job_never_deletes_another_jobs_output(
    kube, fake_kfp, tiny_model, tmp_path, s3_server, s3_bucket
):
    """B points its output at A's: the operator's own claim refuses B before any run; deleting B keeps
    A's artifacts, deleting A removes them.  Both read and write with their own output Secret."""
    shared = f"s3://{s3_bucket}/team-a/tone"
    await create_secret(kube, "default", "team-s3", s3_secret_data(s3_server))
    output = {"uri": shared, "credentialsSecret": "team-s3"}
    settings = kfp_settings(
        tmp_path, fake_kfp, delete_artifacts=True, default_output=f"s3://{s3_bucket}/jobs"
    )
    store = open_store(shared, credentials=jobs.s3_credentials_from(s3_secret_data(s3_server)))
    async with running_operator(kube, settings):
        await create(kube, "default", "finetunejobs", finetune_manifest("a", tiny_model, output=output))
        await wait_until(lambda: len(fake_kfp.created) == 1, what="A's run")
        run_a = fake_kfp.created[0]
        assert json.loads(store.read_text(".slmops/job.json"))["name"] == "a"  # claimed before the run
        local = tmp_path / "published"
        publish_outputs(local)
        manifest = json.loads((local / "manifest.json").read_text())
        manifest["job"] = json.loads(store.read_text(".slmops/job.json"))
        (local / "manifest.json").write_text(json.dumps(manifest))
        for path in local.rglob("*"):
            if path.is_file():
                store.upload_file(path, path.relative_to(local).as_posix())
        fake_kfp.set_state(run_a["run_id"], "SUCCEEDED")
        await wait_until(lambda: phase(kube, "a") == "Succeeded", what="A to succeed")
        assert current(kube, "default", "finetunejobs", "a")["status"]["metrics"]  # read with A's keys
        owned_by_a = sorted(info.key for info in store.list(""))

        await create(kube, "default", "finetunejobs", finetune_manifest("b", tiny_model, output=output))
        await wait_until(lambda: phase(kube, "b") == "Failed", what="B to fail")
        message = current(kube, "default", "finetunejobs", "b")["status"]["message"]
        assert (
            message.startswith("spec.output.uri:")
            and "already holds the output of FineTuneJob default/a" in message
        )
        assert len(fake_kfp.created) == 1, "B's run was started: a custom image would skip the pod's check"

        await delete(kube, "default", "finetunejobs", "b")
        await wait_until(lambda: current(kube, "default", "finetunejobs", "b") is None, what="B deleted")
        assert set(owned_by_a) <= {info.key for info in store.list("")}, "deleting B deleted A's artifacts"
        kept = await wait_until(  # kopf posts Events in the background
            lambda: [e for e in events(kube, "default", "b") if e.get("reason") == "ArtifactsKept"],
            what="ArtifactsKept",
        )
        assert "claimed by FineTuneJob default/a" in kept[0]["message"]

        await delete(kube, "default", "finetunejobs", "a")
        await wait_until(lambda: current(kube, "default", "finetunejobs", "a") is None, what="A deleted")
        assert [info.key for info in store.list("")] == []


async def test_outputs_the_webhook_would_refuse_fail_the_job_without_it(kube, tiny_model, tmp_path):
    """The webhook may be bypassed or absent: the reconciler checks the operator's own folders too."""
    settings = local_settings(tmp_path, webhook_port=0)  # no webhook installed
    async with running_operator(kube, settings):
        for name, uri in (("at-root", settings.default_output), ("at-state", str(settings.local_state_dir))):
            await create(
                kube, "default", "finetunejobs", finetune_manifest(name, tiny_model, output={"uri": uri})
            )
        for name in ("at-root", "at-state"):
            await wait_until(
                lambda name=name: (
                    (current(kube, "default", "finetunejobs", name) or {}).get("status", {}).get("phase")
                    == "Failed"
                ),
                what=f"{name} to fail",
            )
            status = current(kube, "default", "finetunejobs", name)["status"]
            assert status["message"].startswith("spec.output.uri:")
            assert any(c.get("reason") == "InvalidSpec" for c in status.get("conditions", []))
    assert not list((tmp_path / "operator-state").glob("*.request.json")), "a run was started"


# -- credentials come only from the job's own namespace ------------------------------------------

S3_KEYS_HELD = {"AWS_ACCESS_KEY_ID": "team-a-key", "AWS_SECRET_ACCESS_KEY": "team-a-secret-value"}


def _secret_mounts(run: dict) -> dict[str, list[dict]]:
    """executor -> secretAsEnv entries, from the run's compiled platform spec."""
    platform = run["pipeline_spec"].get("platform_spec") or {}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {name: config.get("secretAsEnv", []) for name, config in executors.items()}


def _no_secret_values_in(kube, fake, namespace: str, name: str, values: list[str]) -> None:
    job = current(kube, namespace, "finetunejobs", name)
    visible = json.dumps([job.get("status"), events(kube, namespace, name), fake.created])
    assert not any(value in visible for value in values)


async def test_a_missing_secret_fails_the_job_at_start(kube, fake_kfp, tiny_model, tmp_path):
    """Even when the KFP namespace holds a Secret of that name (the operator-wide one, say)."""
    await create_secret(kube, "kubeflow", "slmops-s3", S3_KEYS_HELD)
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        body = finetune_manifest("creds", tiny_model, output={"credentialsSecret": "slmops-s3"})
        body["metadata"]["namespace"] = "team-a"
        await create(kube, "team-a", "finetunejobs", body)
        await wait_until(
            lambda: (
                ((current(kube, "team-a", "finetunejobs", "creds") or {}).get("status") or {}).get("phase")
                == "Failed"
            ),
            what="the job to fail",
        )
    status = current(kube, "team-a", "finetunejobs", "creds")["status"]
    assert status["message"] == (
        "spec.output.credentialsSecret: Secret 'slmops-s3' does not exist in namespace team-a"
    )
    assert any(c.get("reason") == "MissingCredentials" for c in status["conditions"])
    assert fake_kfp.created == []


async def test_a_secret_without_any_usable_key_is_missing_too(kube, fake_kfp, tiny_model, tmp_path):
    await create_secret(kube, "default", "wrong-keys", {"password": "x"})
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        body = finetune_manifest("creds", tiny_model)
        body["spec"]["model"]["accessSecret"] = "wrong-keys"
        await create(kube, "default", "finetunejobs", body)
        await wait_until(lambda: phase(kube, "creds") == "Failed", what="the job to fail")
    message = current(kube, "default", "finetunejobs", "creds")["status"]["message"]
    assert message.startswith("spec.model.accessSecret: Secret 'wrong-keys' holds none of the keys")


async def test_standalone_kfp_mounts_a_run_owned_copy_and_deletes_it(
    kube, fake_kfp, tiny_model, tmp_path, s3_server, s3_bucket
):
    keys = s3_secret_data(s3_server)  # the operator claims the output with them before the run
    await create_secret(kube, "team-a", "team-s3", keys)
    await create_secret(kube, "team-a", "hub", {"HF_TOKEN": "hf_team_a_token"})
    settings = kfp_settings(
        tmp_path, fake_kfp, kfp_namespace="pipelines", default_output=f"s3://{s3_bucket}/jobs"
    )
    async with running_operator(kube, settings):
        body = finetune_manifest("creds", tiny_model, output={"credentialsSecret": "team-s3"})
        body["spec"]["model"] = {"uri": "hf://org/gated-model", "accessSecret": "hub"}
        body["metadata"]["namespace"] = "team-a"
        await create(kube, "team-a", "finetunejobs", body)
        await wait_until(lambda: len(fake_kfp.created) == 1, what="the run")
        run = fake_kfp.created[0]
        run_name = run["display_name"]
        copy = current_secret(kube, "pipelines", f"{run_name}-output")
        assert copy["data"] == {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()}
        assert copy["metadata"]["labels"]["slmops.io/run"] == run_name
        hub = current_secret(kube, "pipelines", f"{run_name}-model")
        assert set(hub["data"]) == {"HF_TOKEN"}
        for executor, mounts in _secret_mounts(run).items():
            by_name = {m["secretName"]: m for m in mounts}
            assert set(by_name) == {f"{run_name}-output", f"{run_name}-model"}, executor
            assert not any(m.get("optional") for m in mounts)  # never optional
            assert {e["envVar"] for e in by_name[f"{run_name}-output"]["keyToEnv"]} == set(keys)
            assert [e["envVar"] for e in by_name[f"{run_name}-model"]["keyToEnv"]] == [
                "SLMOPS_MODEL_HF_TOKEN"
            ]
        assert run["runtime_config"]["parameters"]["job"]["secrets"][0]["name"] == f"{run_name}-output"
        fake_kfp.set_state(run["run_id"], "FAILED", error="boom")
        await wait_until(
            lambda: (
                ((current(kube, "team-a", "finetunejobs", "creds") or {}).get("status") or {}).get("phase")
                == "Failed"
            ),
            what="the job to finish",
        )
        await wait_until(
            lambda: current_secret(kube, "pipelines", f"{run_name}-output") is None, what="the copy gone"
        )
        assert current_secret(kube, "pipelines", f"{run_name}-model") is None
        secret_values = [keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"], "hf_team_a_token"]
        _no_secret_values_in(kube, fake_kfp, "team-a", "creds", secret_values)


async def test_multi_user_kfp_runs_in_the_jobs_namespace_with_its_own_secret(
    kube, multi_user_kfp, tiny_model, tmp_path, s3_server, s3_bucket
):
    await create_secret(kube, "team-a", "team-s3", s3_secret_data(s3_server))
    settings = kfp_settings(tmp_path, multi_user_kfp, default_output=f"s3://{s3_bucket}/jobs")
    async with running_operator(kube, settings):
        body = finetune_manifest("creds", tiny_model, output={"credentialsSecret": "team-s3"})
        body["metadata"]["namespace"] = "team-a"
        await create(kube, "team-a", "finetunejobs", body)
        await wait_until(lambda: len(multi_user_kfp.created) == 1, what="the run")
        run = multi_user_kfp.created[0]
        assert run["namespace"] == "team-a"
        experiment = multi_user_kfp.experiments[run["experiment_id"]]
        assert experiment["namespace"] == "team-a" and experiment["display_name"] == "slmops-team-a"
        for mounts in _secret_mounts(run).values():
            [mount] = mounts
            assert mount["secretName"] == "team-s3" and not mount.get("optional")
        assert not [key for key in kube.objects if key[0].plural == "secrets" and key[1] != "team-a"], (
            "a copy was made"
        )
        multi_user_kfp.set_state(run["run_id"], "RUNNING")
        await wait_until(
            lambda: (
                ((current(kube, "team-a", "finetunejobs", "creds") or {}).get("status") or {}).get("phase")
                == "Running"
            ),
            what="Running",
        )
    assert len(multi_user_kfp.created) == 1


async def test_a_local_worker_never_inherits_the_operators_credentials(
    kube, tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "operator-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_operator")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "operator-kubeconfig"))
    await create_secret(kube, "default", "hub", {"HF_TOKEN": "hf_job_token"})
    async with running_operator(kube, local_settings(tmp_path)):
        training = {"maxSteps": 400, "saveSteps": 50, "loggingSteps": 1}
        await create(
            kube, "default", "finetunejobs", finetune_manifest("plain", tiny_model, training=training)
        )
        body = finetune_manifest("gated", tiny_model, training=training)
        body["spec"]["model"]["accessSecret"] = "hub"
        await create(kube, "default", "finetunejobs", body)
        envs = {}
        for name in ("plain", "gated"):
            envs[name] = await wait_until(
                lambda name=name: worker_env(kube, tmp_path, name), what=f"{name}'s worker"
            )
    assert not [k for k in envs["plain"] if k.startswith("AWS_") or k in ("HF_TOKEN", "KUBECONFIG")]
    assert envs["gated"].get("SLMOPS_MODEL_HF_TOKEN") == "hf_job_token"
    assert "HF_TOKEN" not in envs["gated"] and "AWS_ACCESS_KEY_ID" not in envs["gated"]


def worker_env(kube, tmp_path, name: str) -> dict[str, str] | None:
    run = (((current(kube, "default", "finetunejobs", name) or {}).get("status") or {}).get("run") or {}).get(
        "name"
    )
    state = tmp_path / "operator-state" / f"{run}.state.json"
    if not run or not state.exists():
        return None
    try:
        raw = Path(f"/proc/{json.loads(state.read_text())['pid']}/environ").read_bytes()
    except (OSError, ValueError, KeyError):
        return None
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def current_secret(kube, namespace: str, name: str) -> dict | None:
    try:
        obj = kube.objects["v1/secrets", namespace, name]
    except KeyError:
        return None
    return None if obj.deleted else obj.raw
