"""Production on shared or spot GPU pools: preemption, Kueue on every GPU pod, cost labels, GPU sharing.

Read as a platform engineer reads ``slmops compile JOB.yaml`` and the PyTorchJob a job's train
step creates.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from slmops_operator.api import FineTuneJob
from slmops_pipelines.kubeflow.distributed.manifests import DEFAULT_GRACE_SECONDS, Workload, build
from tests.kubeflow.test_gpu_clusters import big_finetune, compiled


def single_node(**resources: Any) -> dict[str, Any]:
    manifest = big_finetune()
    manifest["metadata"] = {"name": "one-gpu", "namespace": "team-a"}
    manifest["spec"]["resources"] = {"processesPerNode": 1, **resources}
    return manifest


# -- preemption ---------------------------------------------------------------------------------


def training_pods(manifest: dict[str, Any], engine: str = "pytorchjob") -> list[dict[str, Any]]:
    """The pod specs of the workload the job's train step would create."""
    spec = FineTuneJob.model_validate(manifest).spec
    w = Workload(
        name="slmops-big-0123abcd",
        namespace="team-a",
        job_name=manifest["metadata"]["name"],
        job_uid="uid-1",
        spec=spec,
        image="trainer:1",
        staging_uri="s3://models/team-a/big/.slmops/staging",
        output_uri="s3://models/team-a/big",
        labels=manifest["metadata"].get("labels") or {},
    )
    body = build(engine, w)
    if engine == "pytorchjob":
        return [r["template"] for r in body["spec"]["pytorchReplicaSpecs"].values()]
    return [
        {
            "metadata": {"labels": body["spec"]["labels"]},
            "spec": body["spec"]["podTemplateOverrides"][0]["spec"],
        }
    ]


def test_training_nodes_get_the_grace_period_a_checkpoint_needs():
    pods = training_pods(big_finetune())
    assert {pod["spec"]["terminationGracePeriodSeconds"] for pod in pods} == {
        DEFAULT_GRACE_SECONDS["adapter"]
    }
    full = big_finetune(method="full")
    full["spec"]["resources"]["terminationGracePeriodSeconds"] = 1200
    assert {pod["spec"]["terminationGracePeriodSeconds"] for pod in training_pods(full)} == {1200}


def test_a_full_fine_tune_gets_a_longer_default_grace_period():
    from slmops_pipelines.kubeflow.distributed.manifests import grace_period_seconds

    spec = FineTuneJob.model_validate(big_finetune(method="full")).spec
    assert grace_period_seconds(spec) == DEFAULT_GRACE_SECONDS["full"] > DEFAULT_GRACE_SECONDS["adapter"]


def test_a_too_short_grace_period_is_refused_naming_the_field():
    from pydantic import ValidationError

    manifest = single_node(terminationGracePeriodSeconds=5)
    with pytest.raises(ValidationError, match="terminationGracePeriodSeconds"):
        FineTuneJob.model_validate(manifest)


def test_a_failed_training_step_is_retried_and_resumes(tmp_path):
    ir, _platform = compiled(single_node(), tmp_path)
    tasks = ir["root"]["dag"]["tasks"]
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in tasks["publish-finetune"]


# -- Kueue on every GPU pod ------------------------------------------------------------------------

QUEUED = {"kueue.x-k8s.io/queue-name": "gpu-queue", "kueue.x-k8s.io/priority-class": "high"}


def labelled(manifest: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    manifest["metadata"]["labels"] = dict(labels)
    return manifest


def pod_labels(platform: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        name.removeprefix("exec-"): (config.get("podMetadata") or {}).get("labels") or {}
        for name, config in platform.items()
    }


def test_compile_shows_the_queue_on_every_gpu_step_of_a_single_node_job(tmp_path):
    from click.testing import CliRunner

    from slmops_operator.cli.main import cli

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(labelled(single_node(), QUEUED)))
    result = CliRunner().invoke(cli, ["compile", str(job), "-o", str(tmp_path / "p.yaml")])
    assert result.exit_code == 0, result.output
    assert "Kueue queue gpu-queue: evaluate-finetune, train" in result.output
    ir, *platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    labels = pod_labels(platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"])
    gpu_steps = {
        name.removeprefix("exec-")
        for name, executor in ir["deploymentSpec"]["executors"].items()
        if (executor["container"].get("resources") or {}).get("accelerator")
    }
    assert gpu_steps == {"train", "evaluate-finetune"}
    for step, found in labels.items():
        queued = {k: v for k, v in found.items() if k.startswith("kueue.x-k8s.io/")}
        assert queued == (QUEUED if step in gpu_steps else {}), step


def test_cpu_steps_join_the_queue_only_when_asked(tmp_path):
    _ir, platform = compiled(labelled(single_node(queueCpuSteps=True), QUEUED), tmp_path)
    for step, found in pod_labels(platform).items():
        assert {k: v for k, v in found.items() if k.startswith("kueue")} == QUEUED, step


def test_without_a_queue_label_no_pod_is_queued_and_every_pod_names_its_job(tmp_path):
    _ir, platform = compiled(single_node(), tmp_path)
    for step, found in pod_labels(platform).items():
        assert found == {
            "slmops.io/job": "one-gpu",
            "slmops.io/kind": "finetunejob",
            "slmops.io/namespace": "team-a",
        }, step


def test_a_job_named_like_a_yaml_number_or_boolean_keeps_its_name_as_a_string(tmp_path):
    """Every job's package is the shared one with its name put in: never re-typed by YAML."""
    for name in ("123", "true", "1e3"):
        manifest = single_node()
        manifest["metadata"]["name"] = name
        _ir, platform = compiled(manifest, tmp_path)
        assert {found["slmops.io/job"] for found in pod_labels(platform).values()} == {name}


def test_a_multi_node_launcher_stays_outside_the_queue_and_its_nodes_carry_it(tmp_path):
    manifest = labelled(big_finetune(), QUEUED)
    _ir, platform = compiled(manifest, tmp_path)
    assert not any(k.startswith("kueue") for k in pod_labels(platform)["train"])
    for engine in ("pytorchjob", "trainjob"):
        for pod in training_pods(manifest, engine):
            labels = pod["metadata"]["labels"]
            assert {k: labels[k] for k in QUEUED} == QUEUED
            assert labels["slmops.io/job"] == "big" and labels["slmops.io/namespace"] == "team-a"


# -- GPU sharing ---------------------------------------------------------------------------------


def test_a_mig_slice_is_rendered_as_the_pods_gpu(tmp_path):
    ir, _platform = compiled(single_node(gpuResource="nvidia.com/mig-1g.10gb"), tmp_path)
    train = ir["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["accelerator"]
    assert train["resourceType"] == "nvidia.com/mig-1g.10gb" and train["resourceCount"] == "1"
    manifest = big_finetune()
    manifest["spec"]["resources"].update(processesPerNode=1, gpuResource="nvidia.com/gpu.shared")
    for pod in training_pods(manifest):
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu.shared"] == "1"


@pytest.mark.parametrize(
    ("resources", "says"),
    [
        ({"gpuResource": "gpu"}, "gpuResource"),
        ({"gpuResource": "kubernetes.io/gpu"}, "gpuResource"),
        ({"gpuResource": "nvidia.com/mig-one"}, "MIG profile"),
        ({"gpuResource": "nvidia.com/mig-1g.10gb", "processesPerNode": 2}, "one MIG slice"),
    ],
)
def test_an_invalid_gpu_resource_is_refused_naming_the_field(tmp_path, resources, says):
    from click.testing import CliRunner

    from slmops_operator.cli.main import cli

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(single_node(**resources)))
    result = CliRunner().invoke(cli, ["validate", str(job)])
    assert result.exit_code == 2, result.output
    assert "resources" in result.output and says in result.output, result.output


def test_the_grace_period_follows_the_size_of_the_model(tiny_model):
    from slmops_pipelines.kubeflow.distributed.manifests import MAX_GRACE_SECONDS, grace_period_seconds
    from slmops_pipelines.models.resolve import model_bytes
    from slmops_pipelines.specs import ModelSpec

    adapter = FineTuneJob.model_validate(big_finetune()).spec
    full = FineTuneJob.model_validate(big_finetune(method="full")).spec
    size = model_bytes(ModelSpec(uri=str(tiny_model)))
    assert size and size == sum(p.stat().st_size for p in tiny_model.rglob("*") if p.is_file())
    assert grace_period_seconds(adapter, size) == DEFAULT_GRACE_SECONDS["adapter"]  # a tiny model
    gigabytes_3_4 = int(3.4e9)  # 1.7B parameters in bf16: its full checkpoint is ~20 GB
    assert 500 < grace_period_seconds(full, gigabytes_3_4) < 600
    assert grace_period_seconds(adapter, gigabytes_3_4) == DEFAULT_GRACE_SECONDS["adapter"]
    assert grace_period_seconds(full, int(140e9)) == MAX_GRACE_SECONDS
    assert model_bytes(ModelSpec(uri="s3://no-such-bucket-here/model")) is None
