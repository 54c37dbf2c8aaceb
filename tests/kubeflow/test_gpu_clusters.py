"""What a GPU cluster gets: per-job images and scheduling, launchers without GPUs, CUDA targets on GPU images.

Read as a platform engineer reads ``slmops compile JOB.yaml -o FILE``: the IR plus the
kfp-kubernetes platform spec of the pipeline the operator would submit for that job, and
the PyTorchJob/TrainJob its train step would create (their pod templates checked against
the Kubernetes schema with ``kubernetes-validate --strict``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from slmops_operator.api import FineTuneJob, OptimizeJob
from slmops_operator.api.manifests import ManifestError, load_resources
from slmops_operator.cli.main import cli
from slmops_pipelines.kubeflow.distributed.manifests import Workload, build
from slmops_pipelines.kubeflow.placement import LAUNCHER_CPU, LAUNCHER_MEMORY

IMAGE = "registry.example/team-a/slmops-trainer:0.1.0-custom"
AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
                    ]
                }
            ]
        }
    },
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 50,
                "podAffinityTerm": {
                    "labelSelector": {"matchLabels": {"app": "other"}},
                    "topologyKey": "kubernetes.io/hostname",
                },
            }
        ]
    },
}


def big_finetune(**spec: Any) -> dict[str, Any]:
    """2 nodes x 8 GPUs on a tainted H100 pool, with everything a platform team sets."""
    return {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "big", "namespace": "team-a"},
        "spec": {
            "model": {"uri": "hf://HuggingFaceTB/SmolLM2-1.7B-Instruct", "accessSecret": "hf-token"},
            "dataset": {
                "uri": "s3://data/tone.jsonl",
                "promptTemplate": "{text}",
                "completionTemplate": "{label}",
            },
            "image": IMAGE,
            "imagePullSecrets": [{"name": "regcred"}],
            "serviceAccountName": "trainer",
            "resources": {
                "nodes": 2,
                "processesPerNode": 8,
                "cpu": "32",
                "memory": "256Gi",
                "cpuLimit": "48",
                "memoryLimit": "320Gi",
                "nodeSelector": {"nvidia.com/gpu.product": "H100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "priorityClassName": "training-high",
                "affinity": AFFINITY,
            },
            "output": {"uri": "s3://models/team-a/big", "credentialsSecret": "s3-creds"},
            **spec,
        },
    }


def optimize_job(*targets: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "OptimizeJob",
        "metadata": {"name": "opt", "namespace": "team-a"},
        "spec": {"source": {"fineTuneJobRef": {"name": "big"}}, "targets": list(targets), **spec},
    }


CPU_INT4 = {"name": "cpu-int4", "provider": "CPUExecutionProvider", "precision": "int4"}
CUDA_FP16 = {"name": "cuda-fp16", "provider": "CUDAExecutionProvider", "precision": "fp16"}
CUDA_INT4 = {"name": "cuda-int4", "provider": "CUDAExecutionProvider", "precision": "int4"}


def compiled(manifest: dict[str, Any], tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``slmops compile JOB.yaml -o FILE``: the IR and the Kubernetes platform spec it wrote."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(manifest))
    out = tmp_path / "pipeline.yaml"
    result = CliRunner().invoke(cli, ["compile", str(job), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    ir, *platform = yaml.safe_load_all(out.read_text())  # no platform spec: nothing Kubernetes-specific
    return ir, platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}


def executor(ir: dict[str, Any], name: str) -> dict[str, Any]:
    return ir["deploymentSpec"]["executors"][f"exec-{name}"]["container"]


# -- slmops compile JOB -------------------------------------------------------------------------


def test_a_multi_node_launcher_holds_no_gpu_and_the_jobs_image_and_pull_secret_are_everywhere(tmp_path):
    ir, platform = compiled(big_finetune(), tmp_path)
    train = executor(ir, "train")
    assert "accelerator" not in train["resources"]
    assert train["resources"]["resourceCpuRequest"] == LAUNCHER_CPU
    assert train["resources"]["resourceMemoryRequest"] == LAUNCHER_MEMORY
    assert "resourceCpuLimit" not in train["resources"]
    # The launcher stays off the tainted GPU pool: no selector, no tolerations, no affinity.
    assert set(platform["exec-train"]) == {"imagePullSecret", "secretAsEnv", "podMetadata"}  # labels: the job
    for name, container in ir["deploymentSpec"]["executors"].items():
        assert container["container"]["image"] == IMAGE, name
        assert platform[name]["imagePullSecret"] == [
            {"secretName": "regcred", "secretNameParameter": {"runtimeValue": {"constant": "regcred"}}}
        ], name
    # The job's own Secrets, by name, with the keys they must hold (the operator mounts what they hold).
    mounted = {
        m["secretName"]: {e["secretKey"] for e in m["keyToEnv"]}
        for m in platform["exec-train"]["secretAsEnv"]
    }
    assert mounted == {
        "s3-creds": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
        "hf-token": {"HF_TOKEN"},
    }


def test_a_single_node_train_step_gets_the_gpus_requests_limits_and_placement(tmp_path):
    manifest = big_finetune()
    manifest["spec"]["resources"]["nodes"] = 1
    ir, platform = compiled(manifest, tmp_path)
    resources = executor(ir, "train")["resources"]
    assert resources["accelerator"]["resourceCount"] == "8"
    assert (resources["resourceCpuRequest"], resources["resourceCpuLimit"]) == ("32", "48")
    assert (resources["resourceMemoryRequest"], resources["resourceMemoryLimit"]) == ("256Gi", "320Gi")
    train = platform["exec-train"]
    assert train["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "H100"}
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert (
        train["nodeAffinity"][0]["nodeAffinityJson"]["runtimeValue"]["constant"] == AFFINITY["nodeAffinity"]
    )
    # Steps that only look at the world stay off the GPU pool.
    assert set(platform["exec-inspect-finetune"]) == {"imagePullSecret", "secretAsEnv", "podMetadata"}


def test_cuda_and_cpu_targets_build_in_their_own_images(tmp_path):
    ir, _ = compiled(optimize_job(CPU_INT4, CUDA_FP16, CUDA_INT4), tmp_path)
    executors = ir["deploymentSpec"]["executors"]
    builders = {
        name: spec["container"] for name, spec in executors.items() if name.startswith("exec-build-target")
    }
    images = {c["image"].rsplit("/", 1)[1].split(":")[0]: c for c in builders.values()}
    assert set(images) == {"slmops-optimizer", "slmops-optimizer-cuda"}
    assert "accelerator" not in (images["slmops-optimizer"].get("resources") or {})
    assert images["slmops-optimizer-cuda"]["resources"]["accelerator"]["resourceCount"] == "1"
    loops = [t for t in ir["root"]["dag"]["tasks"] if t.startswith("for-loop")]
    assert len(loops) == 2
    publish = ir["root"]["dag"]["tasks"]["publish-optimize"]
    assert {"targets", "more_targets"} <= set(publish["inputs"]["artifacts"])


def test_cpu_only_targets_need_no_gpu_image(tmp_path):
    ir, _ = compiled(optimize_job(CPU_INT4), tmp_path)
    images = {spec["container"]["image"] for spec in ir["deploymentSpec"]["executors"].values()}
    assert {image.rsplit(":", 1)[0] for image in images} == {"ghcr.io/slmops/slmops-optimizer"}


def test_the_plan_of_each_family_takes_its_own_targets():
    from slmops_pipelines.kubeflow.tasks import plan_targets

    spec = OptimizeJob.model_validate(optimize_job(CPU_INT4, CUDA_FP16, CUDA_INT4)).spec.to_manifest()
    names = {
        family: [v["targets"][0]["name"] for v in plan_targets(spec=spec, family=family)]
        for family in ("", "cpu", "cuda")
    }
    assert names == {
        "": ["cpu-int4", "cuda-fp16", "cuda-int4"],
        "cpu": ["cpu-int4"],
        "cuda": ["cuda-fp16", "cuda-int4"],
    }


def test_compile_takes_one_job_at_a_time(tmp_path):
    job = tmp_path / "two.yaml"
    job.write_text(yaml.safe_dump_all([big_finetune(), optimize_job(CPU_INT4)]))
    result = CliRunner().invoke(cli, ["compile", str(job), "-o", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2 and "one job at a time" in result.output


# -- the training nodes ------------------------------------------------------------------------


def workload(engine: str) -> dict[str, Any]:
    spec = FineTuneJob.model_validate(big_finetune()).spec
    w = Workload(
        name="slmops-big-0123abcd",
        namespace="team-a",
        job_name="big",
        job_uid="uid-1",
        spec=spec,
        image=spec.image or "unused",
        staging_uri="s3://models/team-a/big/.slmops/staging",
        output_uri="s3://models/team-a/big",
        labels={"kueue.x-k8s.io/queue-name": "gpu", "kueue.x-k8s.io/priority-class": "high"},
        runtime="torch-distributed-h100",
    )
    return build(engine, w)


def as_pod(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "node-0"}, "spec": spec}


def test_pytorchjob_nodes_get_everything_the_job_asks_for():
    import kubernetes_validate

    body = workload("pytorchjob")
    for replica in ("Master", "Worker"):
        template = body["spec"]["pytorchReplicaSpecs"][replica]["template"]
        pod = template["spec"]
        container = pod["containers"][0]
        assert container["image"] == IMAGE
        assert container["resources"] == {
            "requests": {"cpu": "32", "memory": "256Gi"},
            "limits": {"cpu": "48", "memory": "320Gi", "nvidia.com/gpu": "8"},
        }
        assert pod["affinity"] == AFFINITY and pod["priorityClassName"] == "training-high"
        assert pod["serviceAccountName"] == "trainer" and pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
        assert template["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
        kubernetes_validate.validate(as_pod(pod), "1.37", strict=True)
        assert restricted(pod), pod.get("securityContext")


def restricted(pod: dict[str, Any]) -> bool:
    """What Pod Security "restricted" asks of a pod and each container (the checks a namespace enforces)."""
    spec = pod.get("securityContext") or {}
    if not spec.get("runAsNonRoot") or (spec.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        return False
    for container in pod["containers"]:
        security = container.get("securityContext") or {}
        if security.get("allowPrivilegeEscalation") is not False:
            return False
        if (security.get("capabilities") or {}).get("drop") != ["ALL"] or security.get("privileged"):
            return False
    return True


def test_trainjob_nodes_get_the_runtime_and_overrides_the_trainer_api_has():
    import kubernetes_validate

    body = workload("trainjob")
    assert body["spec"]["runtimeRef"]["name"] == "torch-distributed-h100"
    override = body["spec"]["podTemplateOverrides"][0]["spec"]
    assert override["affinity"] == AFFINITY and override["serviceAccountName"] == "trainer"
    assert override["imagePullSecrets"] == [{"name": "regcred"}]
    assert "priorityClassName" not in override  # not in the Trainer's override API: Kueue's label carries it
    assert body["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
    trainer = body["spec"]["trainer"]
    assert trainer["image"] == IMAGE and trainer["resourcesPerNode"]["limits"]["memory"] == "320Gi"
    # The override's parts are pod spec parts: checked as one pod (with the trainer's container).
    container = {"name": "node", "image": trainer["image"], "resources": trainer["resourcesPerNode"]}
    pod = {**override, "containers": [{**override["containers"][0], **container}]}
    kubernetes_validate.validate(as_pod(pod), "1.37", strict=True)


# -- refused with reasons ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        ({"cpuLimit": "16"}, "spec.resources", "cpuLimit 16 is below the cpu request 32"),
        ({"memoryLimit": "200Gi"}, "spec.resources", "memoryLimit 200Gi is below the memory request 256Gi"),
        ({"affinity": {"nodeAfinity": {}}}, "spec.resources.affinity.nodeAfinity", "unknown field"),
        ({"affinity": {"nodeAffinity": []}}, "spec.resources.affinity.nodeAffinity", "valid dictionary"),
        (
            {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{}]}}},
            "spec.resources.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey",
            "required",
        ),
        ({"priorityClassName": "High_Priority"}, "spec.resources.priorityClassName", "pattern"),
        ({"cpuLimit": "lots"}, "spec.resources.cpuLimit", "pattern"),
    ],
)
def test_invalid_scheduling_is_refused_naming_the_field(tmp_path, change, path, reason):
    manifest = big_finetune()
    manifest["spec"]["resources"].update(change)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(manifest))
    with pytest.raises(ManifestError) as raised:
        load_resources([job])
    problems = [str(p) for p in raised.value.problems]
    assert any(path in p and reason in p for p in problems), problems


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"image": "not an image"}, "spec.image"),
        ({"imagePullSecrets": [{"name": "Reg_Cred"}]}, "spec.imagePullSecrets[0].name"),
        ({"imagePullSecrets": ["regcred"]}, "spec.imagePullSecrets[0]"),
        ({"serviceAccountName": "Trainer!"}, "spec.serviceAccountName"),
    ],
)
def test_invalid_pod_settings_are_refused_naming_the_field(tmp_path, change, path):
    manifest = big_finetune(**change)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(manifest))
    with pytest.raises(ManifestError) as raised:
        load_resources([job])
    assert any(p.path == path for p in raised.value.problems), raised.value.problems
