"""The workload objects for multi-node training: a PyTorchJob or a TrainJob.

Both run the same container: the trainer image with
``python -m slmops_pipelines.steps.train.node STAGING_URI OUTPUT_URI`` (see
:mod:`slmops_pipelines.steps.train.node`), once per node, with ``processesPerNode`` torchrun
processes each.  The engine supplies the rendezvous (``PET_*``/``MASTER_*`` variables);
nothing here is a launcher of our own.

* **PyTorchJob** (Kubeflow Training Operator, ``kubeflow.org/v1``): a ``Master`` and
  ``nodes - 1`` ``Worker`` replicas, ``nprocPerNode``, restart on failure (a restarted node
  resumes from the last complete checkpoint).
* **TrainJob** (Kubeflow Trainer v2, ``trainer.kubeflow.org/v1alpha1``, v2.0/v2.1 API): the
  ``torch-distributed`` ClusterTrainingRuntime (``SLMOPS_TRAINJOB_RUNTIME``), ``numNodes``,
  ``numProcPerNode``, ``resourcesPerNode``; node selector, tolerations, affinity, service
  account, pull secrets and volumes through ``podTemplateOverrides`` on the ``node`` job.

Both get the job's ``spec.image`` (else the trainer image the run names), its
``imagePullSecrets`` and ``serviceAccountName``, and ``resources``' node selector,
tolerations, affinity, CPU/memory requests and limits and GPUs; a PyTorchJob's pods also
its ``priorityClassName``.

Labels link the workload to its FineTuneJob (``slmops.io/finetunejob``, ``slmops.io/job-uid``)
and carry ``kueue.x-k8s.io/queue-name`` and ``kueue.x-k8s.io/priority-class`` through from the
job's labels, so that Kueue admits and orders the workload itself.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

from slmops_pipelines.kubeflow.placement import (
    CACHE_MOUNT,
    JOB_NAME_LABEL,
    JOB_NAMESPACE_LABEL,
    KUEUE_LABELS,
    SecretMount,
    label_value,
)
from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.specs.locations import spec_claims
from slmops_pipelines.uris import PVC_ROOT

JOB_LABEL = "slmops.io/finetunejob"
UID_LABEL = "slmops.io/job-uid"
ENGINES = {
    "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
    "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"),
}

# The releases whose API takes the workloads built below (docs/install.md's compatibility table).
SUPPORTED_RELEASES = {
    "pytorchjob": "the Kubeflow Training Operator v1 (kubeflow.org/v1 PyTorchJobs)",
    "trainjob": "Kubeflow Trainer v2.1 and v2.2 (spec.podTemplateOverrides: v2.0 named it podSpecOverrides, "
    "v2.3 replaced it with runtimePatches)",
}
NODE_MODULE = ["python", "-m", "slmops_pipelines.steps.train.node"]


@dataclass
class Workload:
    """Everything that decides the workload object, from the job and the run."""

    name: str  # of the workload object
    namespace: str
    job_name: str  # the FineTuneJob
    job_uid: str
    spec: FineTuneJobSpec
    image: str
    staging_uri: str
    output_uri: str
    labels: dict[str, str] = field(default_factory=dict)
    runtime: str = "torch-distributed"  # TrainJob: the ClusterTrainingRuntime
    secrets: list[dict[str, Any]] = field(default_factory=list)  # the run's mounts, by name
    job_namespace: str = ""  # the FineTuneJob's (the workload may run in KFP's namespace)
    model_bytes: int | None = None  # the base model's size, for the grace period of its nodes


def workload_name(job_name: str, key: str) -> str:
    """A DNS-1035 name, stable for one job and run (so a retried step adopts its workload)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    base = re.sub(r"[^a-z0-9-]", "-", job_name.lower()).strip("-")[: 63 - len("slmops--") - 8] or "job"
    name = f"slmops-{base}-{digest}"
    return name if name[0].isalpha() else f"s{name[1:]}"


def _labels(w: Workload) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/managed-by": "slmops",
        "app.kubernetes.io/component": "trainer",
        JOB_LABEL: label_value(w.job_name),
        JOB_NAME_LABEL: label_value(w.job_name),  # what every pod of a job carries, for cost tools
        JOB_NAMESPACE_LABEL: label_value(w.job_namespace or w.namespace),
    }
    if w.job_uid:
        labels[UID_LABEL] = w.job_uid
    for passed in KUEUE_LABELS:  # Kueue admits and orders the workload itself
        if passed in w.labels:
            labels[passed] = w.labels[passed]
    return labels


def _env(w: Workload) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "SLMOPS_CACHE_DIR", "value": CACHE_MOUNT},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    for mount in (SecretMount.model_validate(m) for m in w.secrets):  # the pipeline pods' own, required
        env += [
            {"name": var, "valueFrom": {"secretKeyRef": {"name": mount.name, "key": key}}}
            for key, var in sorted(mount.key_to_env.items())
        ]
    return env


def _resources(w: Workload) -> dict[str, Any]:
    r = w.spec.resources
    requests = {k: v for k, v in (("cpu", r.cpu), ("memory", r.memory)) if v}
    limits = {k: v for k, v in (("cpu", r.cpu_limit), ("memory", r.memory_limit)) if v}
    if r.gpus:
        limits[r.gpu_resource] = str(r.gpus)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _volumes(w: Workload) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A scratch model cache, shared memory for NCCL (the default 64 MiB /dev/shm is too small),
    and, read-only, the claims the job's pvc:// inputs name (the nodes write to the staging area)."""
    volumes: list[dict[str, Any]] = [
        {"name": "cache", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "cache", "mountPath": CACHE_MOUNT},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for number, claim in enumerate(spec_claims(w.spec)):
        volumes.append(
            {"name": f"pvc-{number}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": f"pvc-{number}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    return volumes, mounts


def _tolerations(w: Workload) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in w.spec.resources.tolerations]


def _scheduling(w: Workload, *, priority: bool) -> dict[str, Any]:
    """What the job's spec says of where and as whom its nodes run: one place for both engines."""
    r, spec = w.spec.resources, w.spec
    found: dict[str, Any] = {
        "nodeSelector": dict(r.node_selector) or None,
        "tolerations": _tolerations(w) or None,
        "affinity": r.affinity.to_pod() if r.affinity else None,
        "serviceAccountName": spec.service_account_name,
        "imagePullSecrets": [{"name": ref.name} for ref in spec.image_pull_secrets] or None,
        # A TrainJob's podTemplateOverrides have no priorityClassName (Kueue's label carries it).
        "priorityClassName": r.priority_class_name if priority else None,
    }
    return {key: value for key, value in found.items() if value}


# Between SIGTERM and SIGKILL a training node finishes its step and saves a checkpoint of it
# (steps/train/preemption.py): one step plus writing and uploading the checkpoint.  An adapter's
# is megabytes; a full fine-tune's holds the weights and Adam's two moments in fp32 (12 bytes a
# parameter: 20 GB for 1.7B parameters, minutes at the bandwidths of a cloud disk and S3).
DEFAULT_GRACE_SECONDS = {"adapter": 180, "full": 900}  # the model's size unknown
MAX_GRACE_SECONDS = 3600
STEP_SECONDS = 120  # the step in progress, and starting the save
CHECKPOINT_BYTES_PER_SECOND = 50e6  # written, then uploaded: a slow disk and a slow store
ADAPTER_SHARE = 0.02  # LoRA/DoRA train ~1% of the weights: twice that, to be safe


def grace_period_seconds(spec: FineTuneJobSpec, model_bytes: int | None = None) -> int:
    """``resources.terminationGracePeriodSeconds``, else what a checkpoint of this model needs
    (from its size as shipped, 16-bit weights), else the method's default."""
    given = spec.resources.termination_grace_period_seconds
    if given:
        return given
    if not model_bytes:
        return DEFAULT_GRACE_SECONDS["full" if spec.method == "full" else "adapter"]
    parameters = model_bytes / 2
    trained = parameters if spec.method == "full" else parameters * ADAPTER_SHARE
    seconds = STEP_SECONDS + trained * 12 / CHECKPOINT_BYTES_PER_SECOND
    return int(min(MAX_GRACE_SECONDS, max(DEFAULT_GRACE_SECONDS["adapter"], math.ceil(seconds))))


# Pod Security "restricted": namespaces that enforce it admit the training nodes.  uid 10001
# is our images' user; a custom spec.image runs as it too (its files must be readable by it).
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def pytorchjob(w: Workload) -> dict[str, Any]:
    volumes, mounts = _volumes(w)
    pod_spec: dict[str, Any] = {
        "containers": [
            {
                "name": "pytorch",  # the Training Operator looks for this container name
                "image": w.image,
                "command": NODE_MODULE,
                "args": [w.staging_uri, w.output_uri],
                "env": _env(w),
                "resources": _resources(w),
                "volumeMounts": mounts,
                "securityContext": CONTAINER_SECURITY,
            }
        ],
        "volumes": volumes,
        "securityContext": POD_SECURITY,
        "terminationGracePeriodSeconds": grace_period_seconds(w.spec, w.model_bytes),
        **_scheduling(w, priority=True),
    }
    labels = _labels(w)

    def replica(count: int) -> dict[str, Any]:
        return {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        }

    nodes = w.spec.resources.nodes
    replicas = {"Master": replica(1)}
    if nodes > 1:
        replicas["Worker"] = replica(nodes - 1)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": w.name, "namespace": w.namespace, "labels": labels},
        "spec": {
            "nprocPerNode": str(w.spec.resources.processes_per_node),
            "runPolicy": {"backoffLimit": 3, "cleanPodPolicy": "Running"},
            "pytorchReplicaSpecs": replicas,
        },
    }


def trainjob(w: Workload) -> dict[str, Any]:
    """A TrainJob; its pods' security context and grace period are the ClusterTrainingRuntime's
    (Trainer's podTemplateOverrides have no field for them): docs/operator.md says what to set there."""
    volumes, mounts = _volumes(w)
    override: dict[str, Any] = {
        "volumes": volumes,
        "containers": [{"name": "node", "volumeMounts": mounts}],
        **_scheduling(w, priority=False),
    }
    labels = _labels(w)
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": w.name, "namespace": w.namespace, "labels": labels},
        "spec": {
            "runtimeRef": {
                "name": w.runtime,
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
            },
            "labels": labels,  # onto the JobSet and its Jobs
            "trainer": {
                "image": w.image,
                "command": NODE_MODULE,
                "args": [w.staging_uri, w.output_uri],
                "env": _env(w),
                "numNodes": w.spec.resources.nodes,
                "numProcPerNode": w.spec.resources.processes_per_node,
                "resourcesPerNode": _resources(w),
            },
            "podTemplateOverrides": [{"targetJobs": [{"name": "node"}], "spec": override}],
        },
    }


BUILDERS = {"pytorchjob": pytorchjob, "trainjob": trainjob}


def build(engine: str, w: Workload) -> dict[str, Any]:
    return BUILDERS[engine](w)
