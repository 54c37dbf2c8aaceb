"""The train step with ``resources.nodes > 1``: stage, run a PyTorchJob/TrainJob, collect.

Staging lives in the job's output location (``.slmops/distributed/``): every node can reach
it, it is excluded from the manifest, and it is removed once the result is collected.
Checkpoints go where single-node training puts them (``checkpoints/`` in the output), so
a retried step or a restarted node resumes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from slmops_pipelines.errors import InputError, JobError
from slmops_pipelines.kubeflow.distributed import launcher
from slmops_pipelines.kubeflow.distributed.manifests import Workload, build, workload_name
from slmops_pipelines.kubeflow.images import Images
from slmops_pipelines.models.resolve import model_bytes
from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.stages import usage
from slmops_pipelines.stages.outputs import spec_hash
from slmops_pipelines.steps.train import node
from slmops_pipelines.storage import ArtifactStore, open_store

STAGING = ".slmops/distributed"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

Say = Callable[[str, str], None]


def workload_namespace(job_namespace: str) -> str:
    """Where the workload goes: SLMOPS_WORKLOAD_NAMESPACE, else this pod's namespace, else the job's."""
    if os.environ.get("SLMOPS_WORKLOAD_NAMESPACE"):
        return os.environ["SLMOPS_WORKLOAD_NAMESPACE"]
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return job_namespace


class EventFollower:
    """Report the events node 0 mirrors to staging, each once."""

    def __init__(self, staging: ArtifactStore, on_event: Callable[[dict], None]) -> None:
        self.staging, self.on_event, self.seen = staging, on_event, 0

    def __call__(self) -> None:
        if not self.staging.exists(node.EVENTS):
            return
        lines = [line for line in self.staging.read_text(node.EVENTS).splitlines() if line.strip()]
        for line in lines[self.seen :]:
            self.on_event(json.loads(line))
        self.seen = len(lines)


def _recorded_error(staging: ArtifactStore) -> JobError | None:
    if not staging.exists(node.ERROR):
        return None
    return JobError.from_dict(json.loads(staging.read_text(node.ERROR)))


def _cancel_on_sigterm(cancelled: threading.Event) -> None:
    """KFP cancels a run by deleting its pods: SIGTERM must delete the workload, not orphan it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda _signum, _frame: cancelled.set())


def train_on_cluster(
    spec: FineTuneJobSpec,
    ctx,
    *,
    store: ArtifactStore,
    data_dir: Path,
    work: Path,
    say: Say,
    on_event: Callable[[dict], None] = lambda _event: None,
    client: launcher.WorkloadClient | None = None,
    cancelled: threading.Event | None = None,
    poll_s: float = 10.0,
) -> None:
    """Run the multi-node workload for this job and put its result into ``work``."""
    if store.local_root() is not None:
        raise InputError(
            f"{spec.resources.nodes} nodes need an output every node can reach (s3://...), not {store.uri}",
            field="output.uri",
        )
    staging = open_store(store.uri_of(STAGING))
    for stale in (node.RESULT, node.ERROR, node.EVENTS):  # a previous attempt's, not this one's
        staging.delete_prefix(stale)
    staging.upload_dir(data_dir, "data")
    staging.write_text(node.REQUEST, json.dumps({"spec": spec.model_dump(mode="json", by_alias=True)}))

    namespace = workload_namespace(ctx.namespace)
    workload = Workload(
        # The same job and training spec: the same workload (a retried step adopts it).
        name=workload_name(ctx.name, f"{ctx.namespace}/{ctx.name}/{ctx.uid}/{spec_hash(spec)}"),
        namespace=namespace,
        job_name=ctx.name,
        job_uid=ctx.uid,
        spec=spec,
        image=spec.image or ctx.trainer_image or Images.default().trainer,
        staging_uri=staging.uri,
        output_uri=store.uri,
        labels=ctx.labels,
        job_namespace=ctx.namespace,
        model_bytes=model_bytes(spec.model),
        runtime=ctx.trainjob_runtime,
        secrets=list(ctx.secrets),
    )
    body = build(ctx.distributed_engine, workload)
    client = client or launcher.WorkloadClient(ctx.distributed_engine)
    cancelled = cancelled or threading.Event()
    _cancel_on_sigterm(cancelled)
    say(
        "train",
        f"{spec.resources.nodes} nodes x {spec.resources.processes_per_node} processes via {client.kind}",
    )
    launcher.submit(client, body, say=say)
    try:
        launcher.wait(
            client,
            namespace,
            workload.name,
            say=say,
            on_poll=EventFollower(staging, on_event),
            cancelled=cancelled,
            poll_s=poll_s,
        )
    except JobError as exc:
        raise (_recorded_error(staging) or exc) from exc
    if not staging.exists(node.COMPLETE):
        raise JobError(
            f"{client.kind} {workload.name} succeeded without a complete result at {staging.uri}/{node.RESULT}",
            reason="TrainingFailed",
        )
    usage.hold_gpus(spec.resources.nodes * spec.resources.gpus)  # the nodes', for as long as this step ran
    staging.download_dir(node.RESULT, work)
    (work / "COMPLETE").unlink(missing_ok=True)
    staging.delete_prefix("")
