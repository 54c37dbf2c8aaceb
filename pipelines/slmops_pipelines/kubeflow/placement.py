"""Where each component's pod runs and what it gets: GPUs, nodes, the S3 Secret, the model cache.

A :class:`Placement` is decided when a pipeline is compiled: the operator compiles one per
job from its ``spec.resources`` (each job kind decides how: :meth:`slmops_pipelines.jobs.JobKind.placement`) (compiling takes milliseconds and needs no torch), and
``slmops compile`` writes the general-purpose pipelines with :meth:`Placement.default`.

What goes where, and why:

* training and fine-tune evaluation get the GPUs, the CPU/memory requests, the node
  selector and the tolerations (GPU pools are usually tainted);
* optimize targets get a GPU only when a target's provider needs one (CUDA, TensorRT);
* every pod that asks for a GPU carries the job's Kueue labels (queue name, priority class),
  so that Kueue's pod integration holds single-node jobs to the queue's quota too; the CPU
  steps only with ``resources.queueCpuSteps``; every pod carries the job's name, kind and
  namespace as labels, for cost tools;
* every pod gets the job's Secrets (:class:`SecretMount`: exactly the keys the operator saw
  in them, never ``optional``, so a Secret that goes missing stops the pod instead of
  silently running without credentials) and, when configured, the model cache volume, so
  that a model is downloaded once per cluster rather than once per pod.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from slmops_pipelines.specs.resources import ResourcesSpec
from slmops_pipelines.uris import PVC_ROOT

if TYPE_CHECKING:
    from kfp.dsl import PipelineTask

CACHE_MOUNT = "/var/cache/slmops"

# Kueue's labels, passed through from the job's own: the LocalQueue of the job's pods and
# their WorkloadPriorityClass.  Kueue's pod integration queues every pod carrying the first.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
KUEUE_LABELS = (QUEUE_LABEL, PRIORITY_LABEL)
# Which job a pod works for, for cost tools (OpenCost, Kubecost) that group pods by label:
# in standalone KFP the pods run in KFP's namespace, so the job's namespace is a label too.
JOB_NAME_LABEL = "slmops.io/job"
JOB_KIND_LABEL = "slmops.io/kind"
JOB_NAMESPACE_LABEL = "slmops.io/namespace"


def label_value(text: str) -> str:
    """``text`` as a label value: at most 63 characters, alphanumeric at both ends."""
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63])


def job_pod_labels(kind: str, name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    """The placement settings a job's own metadata decides: its pods' cost labels and Kueue's."""
    return {
        "pod_labels": {
            JOB_NAME_LABEL: label_value(name),
            JOB_KIND_LABEL: label_value(kind.lower()),
            JOB_NAMESPACE_LABEL: label_value(namespace),
        },
        "queue_labels": {key: labels[key] for key in KUEUE_LABELS if labels.get(key)},
    }


# What the train step of a multi-node job needs: the kubernetes client following one object.
LAUNCHER_CPU = "250m"
LAUNCHER_MEMORY = "512Mi"
# The general-purpose pipelines (``slmops compile``) mount the chart's Secret with these keys.
DEFAULT_SECRET = "slmops-s3"
DEFAULT_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")


class SecretMount(BaseModel):
    """A Secret mounted as variables: its name, and Secret key -> variable (all required)."""

    model_config = ConfigDict(populate_by_name=True)

    name: str
    key_to_env: dict[str, str] = Field(alias="keyToEnv")


class Placement(BaseModel):
    """Pod placement for one compiled pipeline."""

    gpus: int = Field(default=0, ge=0, description="GPUs for the training and evaluation pods.")
    target_gpus: int = Field(default=0, ge=0, description="GPUs for each optimize target's pod.")
    gpu_resource: str = Field(default="nvidia.com/gpu", description="Extended resource name of a GPU.")
    cpu: str | None = Field(default=None, description="CPU request of the training pod.")
    memory: str | None = Field(default=None, description="Memory request of the training pod.")
    cpu_limit: str | None = Field(default=None, description="CPU limit of the pods that get requests.")
    memory_limit: str | None = Field(default=None, description="Memory limit of the pods that get requests.")
    node_affinity: dict[str, Any] | None = Field(
        default=None, description="A Kubernetes NodeAffinity for the pods that do the work."
    )
    image_pull_secrets: list[str] = Field(default_factory=list, description="Pull secrets of every pod.")
    claims: list[str] = Field(
        default_factory=list,
        description="PersistentVolumeClaims the job's pvc:// URIs name, mounted in every pod at /mnt/pvc/<claim>.",
    )
    multi_node: bool = Field(
        default=False,
        description="Training runs on a PyTorchJob/TrainJob: the train step only launches and follows it.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    secrets: list[SecretMount] = Field(
        default_factory=list, description="Secrets every pod mounts as variables (never optional)."
    )
    cache_pvc: str | None = Field(default=None, description="PersistentVolumeClaim for the model cache.")
    cache_max_gb: float | None = Field(
        default=None, gt=0, description="The input cache's size limit (SLMOPS_CACHE_MAX_GB) in the pods."
    )
    target_parallelism: int = Field(default=4, ge=1, description="Optimize targets built at once.")
    target_families: list[str] = Field(
        default_factory=lambda: ["cpu"],
        description="The optimizer images the targets are built in (cpu, cuda): one ParallelFor each.",
    )
    trial_parallelism: int = Field(default=2, ge=1, description="Search trials trained at once.")
    caching: bool = Field(default=True, description="Reuse the outputs of steps whose inputs did not change.")
    pod_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels of every pod: the job it works for (cost tools group by them).",
    )
    queue_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Kueue's labels (queue name, priority class) for every pod that asks for a GPU.",
    )
    queue_cpu_steps: bool = Field(
        default=False, description="The pods that ask for no GPU go through the queue too."
    )
    train_retries: int = Field(
        default=2,
        ge=0,
        description="Retries of a failed training step (a preempted node): each resumes from the last checkpoint.",
    )

    @classmethod
    def default(cls, *, gpus: int = 1) -> Placement:
        """The pipelines in ``pipelines/compiled/``: GPUs for training, the chart's Secret and cache."""
        secret = SecretMount(name=DEFAULT_SECRET, key_to_env={k: k for k in DEFAULT_SECRET_KEYS})
        return cls(gpus=gpus, secrets=[secret], cache_pvc="slmops-model-cache")

    def for_local(self) -> Placement:
        """For ``kfp.local``: no GPUs, Secrets, volumes or node selection (the local environment rules)."""
        return self.model_copy(
            update={
                "gpus": 0,
                "target_gpus": 0,
                "secrets": [],
                "cache_pvc": None,
                "node_selector": {},
                "tolerations": [],
                "node_affinity": None,
                "image_pull_secrets": [],
                "claims": [],
                "pod_labels": {},
                "queue_labels": {},
                "train_retries": 0,  # here a failure is the test's or the user's to see at once
            }
        )

    @classmethod
    def for_resources(
        cls,
        resources: ResourcesSpec,
        *,
        secrets: list[SecretMount],
        cache_pvc: str | None,
        cache_max_gb: float | None = None,
        **overrides: Any,
    ) -> Placement:
        """From a job's ``spec.resources``; ``overrides`` are what the job kind decides itself."""
        tolerations = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in resources.tolerations
        ]
        placed = {
            "gpus": resources.gpus,
            "gpu_resource": resources.gpu_resource,
            "cpu": resources.cpu,
            "memory": resources.memory,
            "cpu_limit": resources.cpu_limit,
            "memory_limit": resources.memory_limit,
            "node_affinity": resources.affinity.to_pod().get("nodeAffinity") if resources.affinity else None,
            "node_selector": dict(resources.node_selector),
            "tolerations": tolerations,
            "secrets": list(secrets),
            "cache_pvc": cache_pvc,
            "cache_max_gb": cache_max_gb,
            "multi_node": resources.nodes > 1,
            "queue_cpu_steps": resources.queue_cpu_steps,
        }
        return cls(**{**placed, **overrides})

    # -- applying it to tasks ----------------------------------------------------------------

    def common(self, task: PipelineTask, *, name: str | None = None) -> PipelineTask:
        """What every pod gets: the Secrets and the model cache (and ``name`` in the dashboard)."""
        from kfp import kubernetes

        if name:
            task.set_display_name(name)
        if self.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(self.image_pull_secrets))
        for secret in self.secrets:
            kubernetes.use_secret_as_env(
                task, secret_name=secret.name, secret_key_to_env=dict(secret.key_to_env), optional=False
            )
        for claim in self.claims:  # pvc://claim/path is /mnt/pvc/claim/path to the steps
            kubernetes.mount_pvc(task, pvc_name=claim, mount_path=f"{PVC_ROOT}/{claim}")
        if self.cache_pvc:
            kubernetes.mount_pvc(task, pvc_name=self.cache_pvc, mount_path=CACHE_MOUNT)
            task.set_env_variable("SLMOPS_CACHE_DIR", CACHE_MOUNT)
        if self.cache_max_gb:
            task.set_env_variable("SLMOPS_CACHE_MAX_GB", f"{self.cache_max_gb:g}")
        task.set_caching_options(enable_caching=self.caching)
        for key, value in sorted(self.pod_labels.items()):
            kubernetes.add_pod_label(task, label_key=key, label_value=value)
        if self.queue_cpu_steps:  # every pod, whatever it asks for
            self._queue(task)
        return task

    def _queue(self, task: PipelineTask) -> None:
        """Kueue's pod integration admits the pod against the queue's quota (once per pod)."""
        from kfp import kubernetes

        for key, value in sorted(self.queue_labels.items()):
            kubernetes.add_pod_label(task, label_key=key, label_value=value)

    def compute(
        self, task: PipelineTask, *, gpus: int, requests: bool = True, name: str | None = None
    ) -> PipelineTask:
        """A pod that does the heavy work: GPUs, requests, node selector and tolerations."""
        from kfp import kubernetes

        self.common(task, name=name)
        if gpus:
            task.set_accelerator_type(self.gpu_resource).set_accelerator_limit(gpus)
            if not self.queue_cpu_steps:  # common() queued it already
                self._queue(task)
        if requests:
            self._requests_and_limits(task)
        if self.node_affinity:
            kubernetes.add_node_affinity_json(task, self.node_affinity)
        for key, value in sorted(self.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in self.tolerations:
            kubernetes.add_toleration(
                task,
                key=toleration.get("key"),
                operator=toleration.get("operator", "Equal"),
                value=toleration.get("value"),
                effect=toleration.get("effect"),
                toleration_seconds=toleration.get("tolerationSeconds"),
            )
        return task

    def _requests_and_limits(self, task: PipelineTask) -> None:
        for value, setter in (
            (self.cpu, task.set_cpu_request),
            (self.memory, task.set_memory_request),
            (self.cpu_limit, task.set_cpu_limit),
            (self.memory_limit, task.set_memory_limit),
        ):
            if value:
                setter(value)

    def retried(self, task: PipelineTask) -> PipelineTask:
        """A training step: KFP runs it again when its pod fails (preempted, drained, evicted),
        and the new pod resumes from the last complete checkpoint in the output."""
        if self.train_retries:
            task.set_retry(num_retries=self.train_retries, backoff_duration="60s", backoff_factor=2)
        return task

    def launcher(self, task: PipelineTask, *, name: str | None = None) -> PipelineTask:
        """The train step of a multi-node job: it creates and follows the PyTorchJob/TrainJob.

        No GPU and a small request, without the GPU pool's node selector and tolerations: on a
        pool of exactly N GPU nodes a launcher holding one node's GPUs would keep the N workers
        from ever scheduling.  The workers get the GPUs, selector, tolerations and affinity.
        """
        self.common(task, name=name)
        task.set_cpu_request(LAUNCHER_CPU).set_memory_request(LAUNCHER_MEMORY)
        return task

    def uncached(self, task: PipelineTask, *, name: str | None = None) -> PipelineTask:
        """Steps that look at the world (claims, fingerprints, publishing) always run."""
        self.common(task, name=name)
        task.set_caching_options(enable_caching=False)
        return task
