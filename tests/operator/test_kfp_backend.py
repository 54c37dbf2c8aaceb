"""The kfp backend against a fake KFP API: submit once, poll, succeed, fail, cancel, KFP down."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from pathlib import Path

import kmock
import pytest

from slmops_operator.settings import OperatorSettings
from tests.conftest import finetune_manifest
from tests.fixtures.fake_kfp import FakeKfp, pipeline_ir
from tests.operator.conftest import (
    create,
    current,
    delete,
    running_operator,
    serving,
    wait_until,
    webhook_settings,
)


def kfp_settings(tmp_path: Path, fake, **overrides) -> OperatorSettings:
    return OperatorSettings(
        **{
            "backend": "kfp",
            "kfp_host": fake.url,
            "kfp_ui": "https://kfp.example.com",
            "kfp_auth": "none",
            "poll_seconds": 0.3,
            "backend_retries": 3,
            "metrics_port": 0,
            "local_state_dir": tmp_path / "state",
            "default_output": str(tmp_path / "outputs"),
            **webhook_settings(tmp_path),
            **overrides,
        }
    )


class SlowExecutor(concurrent.futures.ThreadPoolExecutor):
    """kopf's executor on a busy machine: each sync handler starts ``delay_s`` late."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(max_workers=4)
        self.delay_s = delay_s

    def submit(self, fn, /, *args, **kwargs):
        def late():
            time.sleep(self.delay_s)
            return fn(*args, **kwargs)

        return super().submit(late)


def job(name: str, model: Path, **overrides) -> dict:
    manifest = finetune_manifest(name, model, **overrides)
    manifest["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-queue"}
    return manifest


def phase(kube, name: str) -> str | None:
    return ((current(kube, "default", "finetunejobs", name) or {}).get("status") or {}).get("phase")


def publish_outputs(out: Path) -> None:
    """What the pipeline's publish step leaves behind."""
    (out / "adapter").mkdir(parents=True, exist_ok=True)
    (out / "adapter" / "adapter_config.json").write_text("{}")
    metrics = {
        "train": {"train_loss": 0.25, "tokens_per_second": 900.0},
        "evaluation": {"finetuned": {"accuracy": 0.9}},
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    files = [{"path": "adapter/adapter_config.json"}, {"path": "metrics.json"}]
    (out / "manifest.json").write_text(json.dumps({"files": files, **claimed_by(out)}))


def claimed_by(out: Path) -> dict:
    """The job a real publish step records in the manifest: the one whose claim the output holds."""
    claim = out / ".slmops" / "job.json"
    return {"job": json.loads(claim.read_text())} if claim.exists() else {}


async def test_submit_poll_succeed(kube, fake_kfp, tiny_model, tmp_path):
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "finetunejobs", job("tone", tiny_model))
        await wait_until(lambda: phase(kube, "tone") == "Running", what="Running")
        assert len(fake_kfp.created) == 1
        run = fake_kfp.created[0]
        status = current(kube, "default", "finetunejobs", "tone")["status"]
        assert run["display_name"] == status["run"]["name"] and status["run"]["backend"] == "kfp"
        assert status["run"]["url"] == f"https://kfp.example.com/#/runs/details/{run['run_id']}"
        assert fake_kfp.experiments[run["experiment_id"]]["display_name"] == "slmops-default"
        parameters = run["runtime_config"]["parameters"]
        assert parameters["output_uri"] == str(tmp_path / "outputs" / "default" / "tone")
        assert parameters["spec"]["training"]["maxSteps"] == 4
        assert parameters["job"]["name"] == "tone" and parameters["job"]["uid"]
        assert parameters["job"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
        assert pipeline_ir(run)["pipelineInfo"]["name"] == "slmops-finetune"
        # Every pod names its job (cost tools); the job's queue goes on the pods that ask for a GPU.
        platform = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
        gpu_pods = {
            name
            for name, e in pipeline_ir(run)["deploymentSpec"]["executors"].items()
            if (e["container"].get("resources") or {}).get("accelerator")
        }
        assert gpu_pods == {"exec-train", "exec-evaluate-finetune"}
        for name, config in platform["deploymentSpec"]["executors"].items():
            labels = config["podMetadata"]["labels"]
            assert labels["slmops.io/job"] == "tone" and labels["slmops.io/namespace"] == "default", name
            assert (labels.get("kueue.x-k8s.io/queue-name") == "team-queue") == (name in gpu_pods), name

        fake_kfp.set_state(run["run_id"], "RUNNING")
        # The train step mirrors its progress into the output location; status follows.
        progress = tmp_path / "outputs" / "default" / "tone" / ".slmops" / "progress.json"
        progress.parent.mkdir(parents=True, exist_ok=True)
        progress.write_text(
            json.dumps({"stage": "train", "step": 3, "totalSteps": 6, "loss": 1.25, "etaSeconds": 9})
        )

        def progress_shown():
            status = current(kube, "default", "finetunejobs", "tone")["status"]
            return (status.get("progress") or {}).get("step") == 3 and status["progress"]

        shown = await wait_until(progress_shown, what="progress in status")
        assert shown == {"stage": "train", "step": 3, "totalSteps": 6, "loss": 1.25, "etaSeconds": 9}
        publish_outputs(tmp_path / "outputs" / "default" / "tone")
        fake_kfp.set_state(run["run_id"], "SUCCEEDED")
        await wait_until(lambda: phase(kube, "tone") == "Succeeded", what="Succeeded")
        status = current(kube, "default", "finetunejobs", "tone")["status"]
        assert status["artifacts"]["adapter"] == str(tmp_path / "outputs" / "default" / "tone" / "adapter")
        assert status["metrics"] == {"trainLoss": 0.25, "tokensPerSecond": 900.0, "accuracy": 0.9}
        assert len(fake_kfp.created) == 1


async def test_failure_reports_the_field_the_step_recorded(kube, fake_kfp, tiny_model, tmp_path):
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "finetunejobs", job("bad", tiny_model))
        await wait_until(lambda: fake_kfp.created, what="a run")
        error = tmp_path / "outputs" / "default" / "bad" / ".slmops" / "error.json"
        error.parent.mkdir(parents=True, exist_ok=True)  # the operator claimed it before the run
        error.write_text(
            json.dumps(
                {
                    "message": "no column 'sentence' (columns: phrase, tone)",
                    "field": "dataset.promptTemplate",
                    "reason": "InvalidInput",
                }
            )
        )
        fake_kfp.set_state(fake_kfp.created[0]["run_id"], "FAILED", error="task prepare-data failed")
        await wait_until(lambda: phase(kube, "bad") == "Failed", what="Failed")
        status = current(kube, "default", "finetunejobs", "bad")["status"]
        assert (
            status["message"] == "spec.dataset.promptTemplate: no column 'sentence' (columns: phrase, tone)"
        )
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["status"] == "True" and failed["reason"] == "InvalidInput"


async def test_failure_without_a_record_uses_the_runs_error(kube, fake_kfp, tiny_model, tmp_path):
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "finetunejobs", job("oom", tiny_model))
        await wait_until(lambda: fake_kfp.created, what="a run")
        fake_kfp.set_state(fake_kfp.created[0]["run_id"], "FAILED", error="pod train OOMKilled")
        await wait_until(lambda: phase(kube, "oom") == "Failed", what="Failed")
        assert "OOMKilled" in current(kube, "default", "finetunejobs", "oom")["status"]["message"]


async def test_deleting_the_job_terminates_its_run(kube, fake_kfp, tiny_model, tmp_path):
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "finetunejobs", job("gone", tiny_model))
        await wait_until(lambda: phase(kube, "gone") == "Running", what="Running")
        await delete(kube, "default", "finetunejobs", "gone")
        await wait_until(lambda: current(kube, "default", "finetunejobs", "gone") is None, what="deletion")
        assert fake_kfp.terminated == [fake_kfp.created[0]["run_id"]]


async def test_a_restarted_operator_finds_the_run_instead_of_submitting_another(
    kube, fake_kfp, tiny_model, tmp_path
):
    settings = kfp_settings(tmp_path, fake_kfp)
    async with running_operator(kube, settings):
        await create(kube, "default", "finetunejobs", job("again", tiny_model))
        await wait_until(lambda: fake_kfp.created, what="a run")
    # The status write may or may not have landed before the stop; either way, start again.
    async with running_operator(kube, settings):
        await wait_until(lambda: phase(kube, "again") == "Running", what="Running after the restart")
        publish_outputs(tmp_path / "outputs" / "default" / "again")
        fake_kfp.set_state(fake_kfp.created[0]["run_id"], "SUCCEEDED")
        await wait_until(lambda: phase(kube, "again") == "Succeeded", what="Succeeded")
    assert len(fake_kfp.created) == 1


async def test_kfp_unreachable_retries_then_says_so(kube, fake_kfp, tiny_model, tmp_path):
    fake_kfp.down = True
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "finetunejobs", job("down", tiny_model))
        await wait_until(lambda: phase(kube, "down") == "Failed", timeout=60, what="Failed")
        status = current(kube, "default", "finetunejobs", "down")["status"]
        assert "BackendUnreachable" in [c["reason"] for c in status["conditions"]]
        assert "3 attempt(s)" in status["message"] and fake_kfp.url in status["message"]
        assert not fake_kfp.created


async def test_a_searchs_trials_show_in_status(kube, fake_kfp, tiny_model, tmp_path):
    body = job(
        "hpo", tiny_model, search={"trials": 4, "parallelism": 2, "space": {"lora.r": {"values": [4, 8]}}}
    )
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "finetunejobs", body)
        await wait_until(lambda: fake_kfp.created, what="a run")
        run = fake_kfp.created[0]
        assert pipeline_ir(run)["pipelineInfo"]["name"] == "slmops-finetune-search"
        trials = tmp_path / "outputs" / "default" / "hpo" / ".slmops" / "trials"
        trials.mkdir(parents=True, exist_ok=True)
        (trials / "trial-000.json").write_text(
            json.dumps({"trial": 0, "state": "COMPLETE", "value": 0.7, "params": {}})
        )
        (trials / "trial-001.json").write_text(
            json.dumps({"trial": 1, "state": "COMPLETE", "value": 0.4, "params": {}})
        )
        (trials / "trial-002.json").write_text(
            json.dumps({"trial": 2, "state": "RUNNING", "value": None, "params": {}})
        )
        fake_kfp.set_state(run["run_id"], "RUNNING")

        def shown():
            status = current(kube, "default", "finetunejobs", "hpo").get("status") or {}
            return (status.get("progress") or {}).get("trials")

        trials_status = await wait_until(shown, what="trials in status")
        assert trials_status == {
            "total": 4,
            "done": 2,
            "running": 1,
            "pruned": 0,
            "failed": 0,
            "bestTrial": 1,
            "bestValue": 0.4,
        }


async def test_the_runs_of_one_job_share_one_compiled_package(fake_kfp, tiny_model, tmp_path, monkeypatch):
    import slmops_pipelines.kubeflow.pipelines as pipelines
    from slmops_operator.backends.base import JobRequest
    from slmops_operator.backends.kfp import KfpBackend
    from slmops_pipelines.specs import FineTuneJobSpec

    compiled = []
    real_compile = pipelines.compile_pipeline
    monkeypatch.setattr(
        pipelines, "compile_pipeline", lambda p, path: (compiled.append(path), real_compile(p, path))
    )

    def request(name: str, attempt: int = 1, **overrides) -> JobRequest:
        spec = FineTuneJobSpec.model_validate(job(name, tiny_model, **overrides)["spec"])
        return JobRequest("FineTuneJob", "default", name, f"uid-{name}", attempt, spec, str(tmp_path / name))

    backend = KfpBackend(kfp_settings(tmp_path, fake_kfp))
    for name in ("a", "b"):
        await backend.submit(request(name, training={"maxSteps": 3 if name == "a" else 5}))
    # A's next run (resumed after a suspend) with another spec value: the same placement, the same package.
    await backend.submit(request("a", attempt=2, training={"maxSteps": 4}))
    await backend.submit(request("big", resources={"gpusPerNode": 2, "nodeSelector": {"gpu": "h200"}}))
    # One package per placement, shared by every job and run with it: the spec's values are run
    # arguments, and each job's name and namespace (its pods' cost labels) are put into its copy.
    assert len(compiled) == 2
    runs = {run["runtime_config"]["parameters"]["job"]["name"]: run for run in fake_kfp.created[1:]}
    assert fake_kfp.created[0]["runtime_config"]["parameters"]["spec"]["training"]["maxSteps"] == 3
    assert runs["a"]["runtime_config"]["parameters"]["spec"]["training"]["maxSteps"] == 4
    assert runs["b"]["runtime_config"]["parameters"]["spec"]["training"]["maxSteps"] == 5
    assert "h200" not in json.dumps(runs["a"]) and "h200" in json.dumps(runs["big"])
    for run in fake_kfp.created:
        name = run["runtime_config"]["parameters"]["job"]["name"]
        labels = [
            executor["podMetadata"]["labels"]
            for executor in run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"][
                "deploymentSpec"
            ]["executors"].values()
        ]
        assert labels and all(found["slmops.io/job"] == name for found in labels), name
        assert all(found["slmops.io/namespace"] == "default" for found in labels)
        assert "stand-in" not in json.dumps(run)
    assert len(fake_kfp.experiments) == 1
    assert not list(backend._package_dir.glob("*-default-*.yaml"))  # each job's copy is removed once sent
    await backend.close()


async def test_a_run_carries_the_jobs_service_account_image_and_trainjob_runtime(
    kube, fake_kfp, tiny_model, tmp_path
):
    """Every pod of the run runs as the job's ServiceAccount; multi-node workers get its image and runtime."""
    image = "registry.example/team/slmops-trainer:1.0-custom"
    manifest = job("sa", tiny_model, image=image, serviceAccountName="trainer")
    settings = kfp_settings(
        tmp_path,
        fake_kfp,
        distributed_engine="trainjob",
        trainjob_runtime="torch-h100",
        tenant_allow={"default": {"serviceAccounts": ["trainer"], "images": ["registry.example/team/"]}},
    )
    async with running_operator(kube, settings):
        await create(kube, "default", "finetunejobs", manifest)
        await wait_until(lambda: phase(kube, "sa") == "Running", what="Running")
        [run] = fake_kfp.created
        assert run["service_account"] == "trainer"
        context = run["runtime_config"]["parameters"]["job"]
        assert context["trainerImage"] == image
        assert (context["distributedEngine"], context["trainjobRuntime"]) == ("trainjob", "torch-h100")
        images = {e["container"]["image"] for e in pipeline_ir(run)["deploymentSpec"]["executors"].values()}
        assert images == {image}


class LateCreation(FakeKfp):
    """KFP whose first run creation fails with 500, and the run appears a second later all the same
    (a proxy timed out while the API server went on; an operator killed mid-call)."""

    def __init__(self, landing_after: float) -> None:
        super().__init__()
        self.landing_after, self.lost_answers = landing_after, 0

    def dispatch(self, request: kmock.Request):
        method, path = str(request.method).rsplit(".", 1)[-1].upper(), request.url.path
        if path == "/apis/v2beta1/runs" and method == "POST" and not self.lost_answers:
            self.lost_answers += 1
            asyncio.get_running_loop().call_later(self.landing_after, super().dispatch, request)
            return kmock.Response(status=500, payload={"error": "upstream timed out", "code": 13})
        return super().dispatch(request)


def finetune_request(name: str, model: Path, tmp_path: Path, *, created: float | None = None):
    from slmops_operator.backends.base import JobRequest
    from slmops_pipelines.specs import FineTuneJobSpec

    spec = FineTuneJobSpec.model_validate(job(name, model)["spec"])
    return JobRequest(
        "FineTuneJob", "default", name, f"uid-{name}", 1, spec, str(tmp_path / name), created=created
    )


async def test_a_creation_whose_answer_was_lost_is_looked_for_again_not_repeated(tiny_model, tmp_path):
    from slmops_operator.backends.kfp import KfpBackend

    async with serving(LateCreation(landing_after=1.0)) as fake:
        backend = KfpBackend(kfp_settings(tmp_path, fake, submit_grace_seconds=3))
        request = finetune_request("lost", tiny_model, tmp_path)
        with pytest.raises(Exception, match="500"):
            await backend.submit(request)
        assert not fake.created  # not yet: it lands while the retry waits
        run = await backend.submit(request)  # retried at once, as a handler with no backoff would
        await asyncio.sleep(1.5)  # past the late landing, whatever the retry did
        assert [r["run_id"] for r in fake.created] == [run.id]
        await backend.close()


async def test_a_restarted_operator_waits_for_a_creation_its_predecessor_left_in_flight(tiny_model, tmp_path):
    from slmops_operator.backends.kfp import KfpBackend

    async with serving(LateCreation(landing_after=1.0)) as fake:
        created = time.time() - 5  # the job is older than the operator process
        killed = KfpBackend(kfp_settings(tmp_path, fake, submit_grace_seconds=3))
        with pytest.raises(Exception, match="500"):  # its process dies before the answer
            await killed.submit(finetune_request("mid-call", tiny_model, tmp_path, created=created))
        restarted = KfpBackend(kfp_settings(tmp_path, fake, submit_grace_seconds=3))
        started = time.monotonic()
        run = await restarted.submit(finetune_request("mid-call", tiny_model, tmp_path, created=created))
        await asyncio.sleep(max(0.0, started + 1.5 - time.monotonic()))  # past the late landing
        assert [r["run_id"] for r in fake.created] == [run.id]
        assert time.monotonic() - started >= 2.5  # it waited out the grace from its own start
        # A job created after the process started cannot have a creation in flight: no wait.
        started = time.monotonic()
        await restarted.submit(finetune_request("new", tiny_model, tmp_path, created=time.time() + 1))
        assert time.monotonic() - started < 2.0 and len(fake.created) == 2
        await killed.close()
        await restarted.close()


async def test_the_namespace_limit_holds_while_the_index_catches_up(kube, fake_kfp, tiny_model, tmp_path):
    """One run at a time in a namespace, however the timers and the index interleave.

    kopf hands a job's timer the body it just watched before the namespace's index of active
    runs has taken it in (sync index functions run in kopf's executor); a queued job ticking
    in that moment must still count the run.  A slow executor (a busy machine) widens that
    moment; three jobs tick through it: a second run at any moment is the race.
    """
    settings = kfp_settings(tmp_path, fake_kfp, max_running_per_namespace=1, poll_seconds=0.05)
    names = [f"q{i}" for i in range(3)]
    async with running_operator(kube, settings) as operator:
        operator.kopf_settings.execution.executor = SlowExecutor(delay_s=0.2)
        for name in names:
            await create(kube, "default", "finetunejobs", job(name, tiny_model))
        for finished in range(len(names)):
            await the_only_run(kube, fake_kfp, names, finished, tmp_path)


async def the_only_run(kube, fake_kfp, names: list[str], finished: int, tmp_path: Path) -> None:
    """With ``finished`` jobs done, one more run and no other; then it succeeds."""
    await wait_until(lambda: len(fake_kfp.created) > finished, what=f"run {finished + 1}")
    run = fake_kfp.created[finished]
    owner = run["runtime_config"]["parameters"]["job"]["name"]
    waiting = [n for n in names if phase(kube, n) not in ("Succeeded", "Running") and n != owner]
    await wait_until(lambda: all(phase(kube, n) for n in waiting), what="the rest to be seen")
    await asyncio.sleep(1.0)  # dozens of ticks of every queued job
    assert len(fake_kfp.created) == finished + 1, "a second run started under a limit of 1"
    assert {phase(kube, n) for n in waiting} <= {"Queued"}
    publish_outputs(tmp_path / "outputs" / "default" / owner)
    fake_kfp.set_state(run["run_id"], "SUCCEEDED")
    await wait_until(lambda: phase(kube, owner) == "Succeeded", what=f"{owner} to succeed")
