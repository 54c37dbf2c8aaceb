"""Production on shared or spot GPU pools: preemption, Kueue on every GPU pod, cost labels, GPU sharing.

Read as a platform engineer reads ``slmops compile JOB.yaml`` and the PyTorchJob a job's train
step creates.
"""

from __future__ import annotations

from typing import Any

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
    import pytest
    from pydantic import ValidationError

    manifest = single_node(terminationGracePeriodSeconds=5)
    with pytest.raises(ValidationError, match="terminationGracePeriodSeconds"):
        FineTuneJob.model_validate(manifest)


def test_a_failed_training_step_is_retried_and_resumes(tmp_path):
    ir, _platform = compiled(single_node(), tmp_path)
    tasks = ir["root"]["dag"]["tasks"]
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in tasks["publish-finetune"]
