"""Compute for a job's pods: nodes, processes, GPUs (whole, MIG slices or shared), requests,
limits, placement and how long a preempted training node gets to save its step."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from slmops_pipelines.specs.affinity import Affinity
from slmops_pipelines.specs.base import SECRET_NAME, SpecModel


class Toleration(SpecModel):
    """A Kubernetes toleration for the job's pods."""

    key: str | None = Field(default=None, description="Taint key; empty matches all keys (with Exists).")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches all effects."
    )
    toleration_seconds: int | None = Field(default=None, ge=0, description="For NoExecute: how long to stay.")


QUANTITY = r"^([0-9]+(\.[0-9]+)?)(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"
# An extended resource name: a DNS subdomain (with a dot), a slash, a qualified name.
GPU_RESOURCE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
MIG_PROFILE = re.compile(r"^mig-[1-7]g\.[0-9]+gb$")
_QUANTITY_SCALE = {
    "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40,
}  # fmt: skip


def quantity_value(quantity: str) -> float:
    """A Kubernetes quantity (``500m``, ``8``, ``32Gi``) as a number, to compare a limit with a request."""
    match = re.match(QUANTITY, quantity)
    if match is None:
        raise ValueError(f"{quantity!r} is not a quantity")
    return float(match.group(1)) * _QUANTITY_SCALE[match.group(3) or ""]


class ResourcesSpec(SpecModel):
    """Compute for the job: nodes, processes (GPUs) per node and pod resources."""

    nodes: int = Field(
        default=1, ge=1, le=1024, description="Nodes to train on (more than 1: a PyTorchJob/TrainJob)."
    )
    processes_per_node: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Training processes per node: GPUs per node on a cluster, CPU processes (gloo) without GPUs.",
    )
    cpu: Annotated[str, Field(pattern=QUANTITY)] | None = Field(
        default=None, description="CPU request, e.g. 8."
    )
    memory: Annotated[str, Field(pattern=QUANTITY)] | None = Field(
        default=None, description="Memory request, e.g. 32Gi."
    )
    gpus_per_node: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="GPUs per node on a cluster (default: processesPerNode; 0 trains on CPU).",
    )
    gpu_resource: str = Field(
        default="nvidia.com/gpu",
        pattern=GPU_RESOURCE,
        max_length=253,
        description=(
            "Extended resource name of the GPUs the pods ask for: nvidia.com/gpu, a MIG slice "
            "(nvidia.com/mig-1g.10gb: one process per pod), a time-sliced or renamed share "
            "(nvidia.com/gpu.shared), amd.com/gpu."
        ),
    )
    queue_cpu_steps: bool = Field(
        default=False,
        description=(
            "With the kueue.x-k8s.io/queue-name label on the job: send the pods that ask for no GPU through the "
            "queue too (default: only the pods that ask for a GPU, so CPU steps never wait for GPU quota)."
        ),
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, max_length=64, description="Node labels the pods must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Tolerations for the pods."
    )
    cpu_limit: Annotated[str, Field(pattern=QUANTITY)] | None = Field(
        default=None,
        description="CPU limit of the training (and optimize target) pods, e.g. 16; at least cpu.",
    )
    memory_limit: Annotated[str, Field(pattern=QUANTITY)] | None = Field(
        default=None,
        description="Memory limit of the training (and optimize target) pods, e.g. 64Gi; at least memory.",
    )
    affinity: Affinity | None = Field(
        default=None,
        description=(
            "A Kubernetes Affinity (nodeAffinity, podAffinity, podAntiAffinity) for the pods that do the work: "
            "the training nodes of a PyTorchJob/TrainJob, the train, evaluate and target steps.  On KFP's "
            "pipeline pods only nodeAffinity applies (the platform spec has no pod affinity)."
        ),
    )
    priority_class_name: str | None = Field(
        default=None,
        pattern=SECRET_NAME,
        max_length=253,
        description=(
            "PriorityClass of the training nodes of a PyTorchJob (with Kueue, a TrainJob's priority comes from "
            "the kueue.x-k8s.io/priority-class label, passed through from the job's labels)."
        ),
    )

    termination_grace_period_seconds: int | None = Field(
        default=None,
        ge=30,
        le=86400,
        description=(
            "Seconds the training nodes of a PyTorchJob get between SIGTERM (preemption, drain) and SIGKILL to "
            "finish their step and save a complete checkpoint of it (default: what a checkpoint of the model needs, "
            "from its size and the method, at least 180; docs/operations.md says how to size it)."
        ),
    )

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> ResourcesSpec:
        for name, request, limit in (
            ("cpu", self.cpu, self.cpu_limit),
            ("memory", self.memory, self.memory_limit),
        ):
            if request and limit and quantity_value(limit) < quantity_value(request):
                raise ValueError(
                    f"{name}Limit {limit} is below the {name} request {request}: Kubernetes refuses such pods"
                )
        return self

    @model_validator(mode="after")
    def _gpu_resource_is_a_gpu(self) -> ResourcesSpec:
        domain, _, name = self.gpu_resource.partition("/")
        if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
            raise ValueError(
                f"gpuResource {self.gpu_resource!r}: kubernetes.io names are Kubernetes' own resources, not a GPU"
            )
        if name.startswith("mig-"):
            if not MIG_PROFILE.match(name):
                raise ValueError(
                    f"gpuResource {self.gpu_resource!r} is not a MIG profile (like nvidia.com/mig-1g.10gb)"
                )
            if self.gpus > 1 or self.processes_per_node > 1:
                raise ValueError(
                    f"gpuResource {self.gpu_resource!r}: a process sees one MIG slice, so a pod takes one "
                    "(processesPerNode: 1, gpusPerNode: 1); train on more slices with more nodes"
                )
        return self

    @property
    def gpus(self) -> int:
        """GPUs each training pod asks for."""
        return self.processes_per_node if self.gpus_per_node is None else self.gpus_per_node
