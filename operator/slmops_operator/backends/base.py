"""What a backend is asked to run, and what it reports back."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from slmops_operator.api.status import RunRef
from slmops_operator.credentials import ResolvedSecret
from slmops_pipelines import jobs
from slmops_pipelines.specs import JobSpec

RunPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Cancelled"]


def status_run(status: dict[str, Any], run_name: str) -> RunRef | None:
    """``status.run`` when it names the run ``run_name``; None otherwise.

    Anyone who may patch ``*/status`` writes it: its name is checked here, its id by the
    backend (see ``Backend.state``), before either is acted on.
    """
    run = status.get("run") or {}
    return RunRef.model_validate(run) if run.get("name") == run_name else None


def run_name(kind: str, namespace: str, name: str, uid: str, attempt: int) -> str:
    """Deterministic: a retried handler or a restarted operator finds the run instead of starting another.

    ``attempt`` counts the job's runs (``status.runAttempt``): it moves only when a suspended
    job whose run was cancelled resumes, never on an edit (a TTL, a label, a quick suspend
    and resume the operator did not act on), so an edit never starts a second run.
    """
    digest = hashlib.sha256(f"{kind}/{namespace}/{name}/{uid}/{attempt}".encode()).hexdigest()[:10]
    prefix = jobs.job_kind(kind).run_prefix
    return f"{prefix}-{namespace}-{name}"[:52].rstrip("-") + f"-{digest}"


@dataclass
class JobRequest:
    """One job, as a backend needs it."""

    kind: str  # a kind of the registry (slmops_pipelines.jobs.KINDS)
    namespace: str
    name: str
    uid: str
    attempt: int  # the job's run number: 1, then one more for each resume after a cancelled run
    spec: JobSpec  # the kind's spec class
    output_uri: str
    labels: dict[str, str] = field(default_factory=dict)
    source_uri: str = ""  # the output of the job's upstream (an OptimizeJob's fineTuneJobRef)
    created: float | None = None  # the resource's creationTimestamp (epoch seconds)
    # The job's Secrets, read in its namespace before submitting (values in memory only).
    secrets: list[ResolvedSecret] | None = field(default=None, repr=False)

    @property
    def secrets_named(self) -> bool:
        """Whether the spec names any Secret (its run may hold copies of them)."""
        return bool(jobs.secret_refs(self.spec))

    @property
    def run_name(self) -> str:
        return run_name(self.kind, self.namespace, self.name, self.uid, self.attempt)

    def job_run(self) -> jobs.JobRun:
        """The job as every engine and stage takes it (its output already resolved)."""
        return jobs.job_kind(self.kind).new_run(
            self.name,
            self.spec,
            default_output=self.output_uri,
            namespace=self.namespace,
            source_uri=self.source_uri,
            uid=self.uid,
        )

    def job_context(
        self, *, distributed_engine: str, trainjob_runtime: str = "torch-distributed", trainer_image: str = ""
    ) -> dict[str, Any]:
        """The pipelines' ``job`` parameter (see slmops_pipelines.kubeflow.tasks.common.JobContext)."""
        return {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "labels": dict(self.labels),
            "distributedEngine": distributed_engine,
            "trainjobRuntime": trainjob_runtime,
            **({"trainerImage": trainer_image} if trainer_image else {}),
        }


@dataclass
class RunState:
    """What the backend knows about a run."""

    phase: RunPhase
    message: str = ""
    reason: str = ""
    spec_field: str | None = None  # the spec field a failure is about
    progress: dict[str, Any] | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    usage: dict[str, Any] | None = None  # status.usage: what the run cost, per stage
    tracking: dict[str, Any] | None = None  # status.tracking: where MLflow has the run, or why not
    # A run that succeeded but whose results could not be read (a bucket the operator may not
    # read, say): the reconciler retries, then fails the job with this message.
    outputs_error: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed", "Cancelled")


class Backend(Protocol):
    name: str

    async def submit(self, request: JobRequest) -> RunRef:
        """Start the job's run, or find the one already started under ``request.run_name``."""

    async def find(self, request: JobRequest) -> RunRef | None:
        """The job's run if an earlier operator process started it unsaid (killed before its
        status write): looked for only where one may have, at most once per process and job."""

    async def state(self, run: RunRef, request: JobRequest) -> RunState:
        """The run's phase, progress and, once finished, results or failure.

        ``run`` comes from the job's status, which is not trusted: a backend acts only on the run
        of ``request.run_name`` (the name the operator gives the job's attempt).
        """

    async def cancel(self, run: RunRef, request: JobRequest) -> None:
        """Stop the job's run, ``request.run_name`` (idempotent: a run that is gone is stopped)."""

    async def close(self) -> None:
        """Release what the backend holds (worker processes, clients)."""
