"""Multi-node training through a PyTorchJob or a TrainJob, against a Kubernetes API emulator.

KMock serves the Kubernetes API over HTTP; the launcher talks to it with the official
client, exactly as in a cluster.  The tests play the Training Operator: when the workload
appears they check it, start its pods' command as real processes (two nodes joined by
torchrun's rendezvous on this machine) and set its status from their exit codes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from slmops_operator.api import FineTuneJob
from slmops_pipelines.credentials import S3_KEYS
from slmops_pipelines.errors import InputError, JobError
from slmops_pipelines.kubeflow.distributed import launcher
from slmops_pipelines.kubeflow.distributed.train import STAGING, train_on_cluster
from slmops_pipelines.kubeflow.tasks import JobContext
from slmops_pipelines.specs.resources import Toleration
from slmops_pipelines.stages import finetune as stages
from slmops_pipelines.storage import open_store
from tests.conftest import REPO, finetune_manifest
from tests.fixtures.seaweedfs import free_ports

PYTORCHJOBS = "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs"
TRAINJOBS = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs"


def multi_node_spec(model: Path, output: str, **resources):
    manifest = finetune_manifest(
        "ft-multi",
        model,
        resources={"nodes": 2, "processesPerNode": 1, "gpusPerNode": 0, **resources},
        output={"uri": output, "credentialsSecret": "team-s3"},
    )
    return FineTuneJob.model_validate(manifest).spec


def context(engine: str = "pytorchjob") -> JobContext:
    return JobContext(
        kind="FineTuneJob",
        api_version="slmops.io/v1alpha1",
        name="ft-multi",
        namespace="team-a",
        uid="0b7a-uid",
        labels={"kueue.x-k8s.io/queue-name": "gpu-queue", "unrelated": "x"},
        distributed_engine=engine,
        trainer_image="registry.example/slmops-trainer:1.2.3",
        # What the operator mounted on the run's pods (a run-owned copy of the job's Secret).
        secrets=[
            {
                "name": "ftj-team-a-ft-multi-output",
                "keyToEnv": {k: k for k in S3_KEYS if k != "AWS_SESSION_TOKEN"},
            }
        ],
    )


@pytest.fixture
def api(kmock):
    from kubernetes import client

    configuration = client.Configuration(host=str(kmock.url).rstrip("/"))
    return client.CustomObjectsApi(client.ApiClient(configuration))


@pytest.fixture(autouse=True)
def workload_namespace(monkeypatch):
    monkeypatch.setenv("SLMOPS_WORKLOAD_NAMESPACE", "team-a")


@pytest.fixture
def prepared(tiny_model: Path, tmp_path: Path, s3_env, s3_bucket):
    """A job whose data is prepared, with its output on S3 (every node must reach it)."""
    output = f"s3://{s3_bucket}/jobs/ft-multi"
    spec = multi_node_spec(tiny_model, output)
    data_dir = tmp_path / "data"
    stages.prepare_data(spec, data_dir=data_dir, model_path=tiny_model)
    return spec, open_store(output), data_dir


async def wait_for_object(kmock, plural: str, timeout: float = 30) -> dict:
    for _ in range(int(timeout / 0.05)):
        for (resource, _namespace, _name), obj in list(kmock.objects.items()):
            if resource.plural == plural and not obj.deleted:
                return obj.raw
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {plural} was created")


async def set_status(kmock, path: str, name: str, condition: str, message: str = "") -> None:
    body = {"status": {"conditions": [{"type": condition, "status": "True", "message": message}]}}
    async with aiohttp.ClientSession() as session:
        url = f"{str(kmock.url).rstrip('/')}{path}/{name}"
        async with session.patch(
            url, json=body, headers={"Content-Type": "application/merge-patch+json"}
        ) as r:
            assert r.status == 200, await r.text()


def pod_env(container: dict, s3_server, *, nodes: int, rank: int, port: int, cache: Path) -> dict[str, str]:
    """What the kubelet and the Training Operator would give the pod."""
    secret = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_REGION": s3_server.region,
    }
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{REPO / 'pipelines'}:{REPO / 'operator'}"}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var["valueFrom"]["secretKeyRef"]["key"] in secret:
            env[var["name"]] = secret[var["valueFrom"]["secretKeyRef"]["key"]]
    env.update(
        SLMOPS_CACHE_DIR=str(cache),  # the pod's emptyDir
        HF_HUB_OFFLINE="1",
        PET_NNODES=str(nodes),
        PET_NODE_RANK=str(rank),
        PET_MASTER_ADDR="127.0.0.1",
        PET_MASTER_PORT=str(port),
    )
    return env


def start_step_process(kmock, spec, store, data_dir: Path, work: Path) -> subprocess.Popen:
    """The train step in a process of its own, talking to KMock through a kubeconfig."""
    tmp_path = work.parent
    kubeconfig = tmp_path / f"kubeconfig-{work.name}"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "kmock", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from slmops_pipelines.specs import FineTuneJobSpec\n"
        "from slmops_pipelines.kubeflow.tasks import JobContext\n"
        "from slmops_pipelines.kubeflow.distributed.train import train_on_cluster\n"
        "from slmops_pipelines.storage import open_store\n"
        "spec = FineTuneJobSpec.model_validate(json.loads(sys.argv[1]))\n"
        "ctx = JobContext.model_validate(json.loads(sys.argv[2]))\n"
        "train_on_cluster(spec, ctx, store=open_store(sys.argv[3]), data_dir=Path(sys.argv[4]),\n"
        "                 work=Path(sys.argv[5]), say=lambda s, m: print(m, flush=True), poll_s=0.2)\n"
    )
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PYTHONPATH": f"{REPO / 'pipelines'}:{REPO / 'operator'}:{REPO}",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            json.dumps(spec.model_dump(mode="json", by_alias=True)),
            context().model_dump_json(),
            store.uri,
            str(data_dir),
            str(work),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_phases_from_both_engines_conditions():
    def obj(*conditions):
        return {"status": {"conditions": [{"type": t, "status": s, "message": m} for t, s, m in conditions]}}

    assert launcher.phase_of("pytorchjob", {}).name == "Pending"
    assert (
        launcher.phase_of("pytorchjob", obj(("Created", "True", ""), ("Running", "True", ""))).name
        == "Running"
    )
    failed = launcher.phase_of("pytorchjob", obj(("Running", "False", ""), ("Failed", "True", "OOMKilled")))
    assert failed == launcher.Phase("Failed", "OOMKilled") and failed.finished
    assert launcher.phase_of("trainjob", obj(("Suspended", "True", "queued by Kueue"))).name == "Suspended"
    assert launcher.phase_of("trainjob", obj(("Complete", "True", "done"))).name == "Succeeded"


async def test_pytorchjob_trains_on_two_nodes(kmock, api, prepared, s3_server, tmp_path):
    spec, store, data_dir = prepared
    work, events, said = tmp_path / "work", [], []
    run = asyncio.create_task(
        asyncio.to_thread(
            train_on_cluster,
            spec,
            context(),
            store=store,
            data_dir=data_dir,
            work=work,
            say=lambda stage, message: said.append(message),
            on_event=events.append,
            client=launcher.WorkloadClient("pytorchjob", api=api),
            poll_s=0.2,
        )
    )
    job = await wait_for_object(kmock, "pytorchjobs")

    # The object: a Master and one Worker, one process each, the job's labels and Secret.
    name = job["metadata"]["name"]
    assert name.startswith("slmops-ft-multi-") and job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["metadata"]["labels"]["slmops.io/finetunejob"] == "ft-multi"
    assert "unrelated" not in job["metadata"]["labels"]
    assert job["spec"]["nprocPerNode"] == "1"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert {role: r["replicas"] for role, r in replicas.items()} == {"Master": 1, "Worker": 1}
    container = replicas["Master"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch" and container["image"] == "registry.example/slmops-trainer:1.2.3"
    assert container["command"] == ["python", "-m", "slmops_pipelines.steps.train.node"]
    assert container["args"] == [store.uri_of(STAGING), store.uri]
    secret_refs = [v["valueFrom"]["secretKeyRef"] for v in container["env"] if "valueFrom" in v]
    assert {r["name"] for r in secret_refs} == {"ftj-team-a-ft-multi-output"}
    assert len(secret_refs) == 4 and not any(r.get("optional") for r in secret_refs)  # never optional
    assert "limits" not in container["resources"]  # gpusPerNode: 0 trains on CPU

    # The Training Operator's part: two pods, joined by the rendezvous it provides.
    port = free_ports(1)[0]
    command = [sys.executable, *container["command"][1:], *container["args"]]
    pods = [
        subprocess.Popen(
            command,
            env=pod_env(
                container, s3_server, nodes=2, rank=rank, port=port, cache=tmp_path / f"cache-{rank}"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    await set_status(kmock, PYTORCHJOBS, name, "Running")
    codes = [await asyncio.to_thread(pod.wait, 240) for pod in pods]
    logs = [pod.stdout.read() for pod in pods]
    assert codes == [0, 0], logs
    await set_status(kmock, PYTORCHJOBS, name, "Succeeded")
    await asyncio.wait_for(run, 60)

    result = json.loads((work / "logs" / "train_result.json").read_text())
    assert result["world_size"] == 2 and result["global_step"] == 4
    assert (work / "adapter" / "adapter_model.safetensors").is_file()
    assert any(e.get("event") == "log" for e in events)  # progress came through while it ran
    assert any("Running" in m for m in said) and any("Succeeded" in m for m in said)
    assert [i.key for i in store.list("checkpoints") if i.key.endswith(".slmops-complete")]
    assert not list(store.list(STAGING))  # staging is cleaned up
    assert len(kmock["post"]) == 1  # exactly one workload


async def test_trainjob_failure_carries_the_recorded_field(kmock, api, prepared, tmp_path):
    spec, store, data_dir = prepared
    spec = spec.model_copy(
        update={
            "resources": spec.resources.model_copy(
                update={
                    "nodes": 3,
                    "processes_per_node": 4,
                    "gpus_per_node": None,
                    "cpu": "8",
                    "memory": "32Gi",
                    "node_selector": {"pool": "a100"},
                    "tolerations": [Toleration(key="gpu", operator="Exists")],
                }
            )
        }
    )
    run = asyncio.create_task(
        asyncio.to_thread(
            train_on_cluster,
            spec,
            context("trainjob"),
            store=store,
            data_dir=data_dir,
            work=tmp_path / "work",
            say=lambda *_: None,
            client=launcher.WorkloadClient("trainjob", api=api),
            poll_s=0.2,
        )
    )
    job = await wait_for_object(kmock, "trainjobs")
    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"] == {
        "name": "torch-distributed",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 4
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "8", "memory": "32Gi"},
        "limits": {"nvidia.com/gpu": "4"},
    }
    override = job["spec"]["podTemplateOverrides"][0]
    assert override["targetJobs"] == [{"name": "node"}]
    assert override["spec"]["nodeSelector"] == {"pool": "a100"}
    assert override["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"

    # Node 0 failed on the input and said why; the engine marks the TrainJob Failed.
    staging = open_store(store.uri_of(STAGING))
    staging.write_text(
        "error.json",
        json.dumps(
            {
                "message": "every training row was truncated",
                "field": "dataset.maxSeqLength",
                "reason": "InvalidInput",
            }
        ),
    )
    await set_status(kmock, TRAINJOBS, job["metadata"]["name"], "Failed", "node-0 exited with code 1")
    with pytest.raises(InputError) as raised:
        await asyncio.wait_for(run, 30)
    assert raised.value.field == "dataset.maxSeqLength"


async def test_failure_without_a_recorded_reason_says_what_the_engine_said(kmock, api, prepared, tmp_path):
    spec, store, data_dir = prepared
    run = asyncio.create_task(
        asyncio.to_thread(
            train_on_cluster,
            spec,
            context(),
            store=store,
            data_dir=data_dir,
            work=tmp_path / "work",
            say=lambda *_: None,
            client=launcher.WorkloadClient("pytorchjob", api=api),
            poll_s=0.2,
        )
    )
    job = await wait_for_object(kmock, "pytorchjobs")
    await set_status(
        kmock, PYTORCHJOBS, job["metadata"]["name"], "Failed", "pod ft-multi-worker-0 was OOMKilled"
    )
    with pytest.raises(JobError, match="OOMKilled"):
        await asyncio.wait_for(run, 30)


async def test_a_retried_step_adopts_the_running_workload(kmock, api, prepared, tmp_path):
    spec, store, data_dir = prepared
    first = start_step_process(kmock, spec, store, data_dir, tmp_path / "first")
    job = await wait_for_object(kmock, "pytorchjobs", timeout=60)
    await set_status(kmock, PYTORCHJOBS, job["metadata"]["name"], "Running")
    first.kill()  # the step's pod is lost without cleaning up; KFP retries the step
    await asyncio.to_thread(first.wait, 30)
    said: list[str] = []
    retry = asyncio.create_task(
        asyncio.to_thread(
            train_on_cluster,
            spec,
            context(),
            store=store,
            data_dir=data_dir,
            work=tmp_path / "retry",
            say=lambda stage, message: said.append(message),
            client=launcher.WorkloadClient("pytorchjob", api=api),
            poll_s=0.2,
        )
    )
    for _ in range(100):
        if any("adopted" in m for m in said):
            break
        await asyncio.sleep(0.1)
    assert any("adopted" in m for m in said), said
    assert len(kmock["post"]) == 1  # no second workload
    staging = open_store(store.uri_of(STAGING))  # node 0 finishes its work
    staging.write_text("result/logs/train_result.json", "{}")
    staging.write_text("result/COMPLETE", "")
    await set_status(kmock, PYTORCHJOBS, job["metadata"]["name"], "Succeeded")
    await asyncio.wait_for(retry, 30)
    assert (tmp_path / "retry" / "logs" / "train_result.json").exists()
    assert not kmock["delete"]


async def test_sigterm_deletes_the_workload(kmock, prepared, s3_server, tmp_path):
    """KFP cancels a run by deleting the step's pod: the step must take its workload with it."""
    spec, store, data_dir = prepared
    step = start_step_process(kmock, spec, store, data_dir, tmp_path / "work")
    job = await wait_for_object(kmock, "pytorchjobs", timeout=60)
    await set_status(kmock, PYTORCHJOBS, job["metadata"]["name"], "Running")
    await asyncio.sleep(0.5)
    step.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(step.wait, 30)
    output = step.stdout.read()
    assert code != 0, output
    assert "cancelled: deleting PyTorchJob" in output
    deletes = [r for r in kmock["delete"] if str(r.url).endswith(f"/pytorchjobs/{job['metadata']['name']}")]
    assert len(deletes) == 1, output


def test_job_context_reads_the_pipeline_parameter():
    ctx = JobContext.model_validate(
        {
            "kind": "FineTuneJob",
            "apiVersion": "slmops.io/v1alpha1",
            "name": "a",
            "namespace": "ns",
            "distributedEngine": "trainjob",
            "trainjobRuntime": "torch-cuda",
        }
    )
    assert ctx.distributed_engine == "trainjob" and ctx.trainjob_runtime == "torch-cuda"
    with pytest.raises(ValueError, match="distributedEngine"):
        JobContext.model_validate(
            {
                "kind": "FineTuneJob",
                "apiVersion": "slmops.io/v1alpha1",
                "name": "a",
                "distributedEngine": "mpijob",
            }
        )
