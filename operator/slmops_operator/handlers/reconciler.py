"""The state the job handlers share, and the one way they call the backend.

A :class:`Reconciler` holds the settings, the backend, the metrics and the API connection,
plus what the operator process remembers between passes: runs submitted but not yet seen,
runs it cancelled for a suspend, failed reads of a run's results, and the backoff of each
job whose backend calls fail (:meth:`Reconciler.backend_call`).

One retry policy, :func:`backoff`, for every handler: the job timers skip a job until its
next attempt is due; the finalizer, which kopf retries itself, raises
``kopf.TemporaryError(delay=backoff(...))``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf

from slmops_operator.api.resources import Resource
from slmops_operator.api.status import RunRef
from slmops_operator.backends.base import Backend, JobRequest
from slmops_operator.credentials import Credentials
from slmops_operator.handlers.kube import KubeApi
from slmops_operator.metrics import OperatorMetrics
from slmops_operator.settings import OperatorSettings

MAX_BACKOFF_S = 60.0
RUNS_REMEMBERED = 10_000  # more than the jobs one operator watches at once
PHASE_COUNT_S = 1.0


def backoff(failures: int, base_s: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures: doubling from ``base_s``, at most a minute."""
    return min(MAX_BACKOFF_S, base_s * 2 ** min(failures, 16))


class Reconciler:
    """The state the handlers share: settings, the backend, metrics, in-flight submissions."""

    def __init__(
        self,
        settings: OperatorSettings,
        backend: Backend,
        metrics: OperatorMetrics,
        kube: KubeApi,
        *,
        credentials: Credentials | None = None,
    ) -> None:
        self.settings, self.backend, self.metrics, self.kube = settings, backend, metrics, kube
        self.credentials = credentials or Credentials(kube)
        self.submitting: dict[str, set[str]] = {}  # namespace -> runs submitted, not yet seen in any state
        # Runs this process submitted or found, by name: a timer's body lags its own status write
        # until the watch brings it, and a run lost meanwhile must not be submitted again.
        self.runs: collections.OrderedDict[str, RunRef] = collections.OrderedDict()
        self.output_failures: dict[str, int] = {}  # job uid -> failed reads of a succeeded run's results
        self.cancelled: set[str] = (
            set()
        )  # runs this process cancelled for a suspend (terminate is idempotent)
        self.locks: dict[str, asyncio.Lock] = {}
        self.failures: dict[str, int] = {}  # job uid -> consecutive failed backend calls
        self.next_attempt: dict[str, float] = {}  # job uid -> monotonic time of the next backend call
        self._phases_counted: dict[str, float] = {}  # kind -> monotonic time of the last phase count

    # -- helpers -----------------------------------------------------------------------------

    def output_uri(self, resource: Resource) -> str:
        """The job's output location, resolved by its kind (``spec.output.uri``, else its slot here)."""
        root = self.settings.default_output or (
            str(self.settings.local_state_dir / "outputs") if self.settings.backend == "local" else ""
        )
        slot = f"{root.rstrip('/')}/{resource.namespace}/{resource.name}" if root else ""
        run = resource.job_kind.new_run(
            resource.name, resource.spec, default_output=slot, namespace=resource.namespace
        )
        if not run.output_uri:
            raise kopf.PermanentError("output.uri is required: this operator has no SLMOPS_DEFAULT_OUTPUT")
        return run.output_uri

    def request(
        self, resource: Resource, meta: Mapping[str, Any], source_uri: str = "", *, attempt: int = 1
    ) -> JobRequest:
        return JobRequest(
            kind=resource.kind_name,
            namespace=resource.namespace,
            name=resource.name,
            uid=meta.get("uid") or "",
            attempt=attempt,
            spec=resource.spec,
            output_uri=self.output_uri(resource),
            labels=dict(meta.get("labels") or {}),
            source_uri=source_uri,
            created=_epoch(meta.get("creationTimestamp")),
        )

    def phase_counts_due(self, kind: str) -> bool:
        """Whether the jobs-by-phase gauge of ``kind`` is due a recount (once a second at most:
        a count walks every job of the kind, and each job's tick would otherwise make one)."""
        now = time.monotonic()
        if now - self._phases_counted.get(kind, -PHASE_COUNT_S) < PHASE_COUNT_S:
            return False
        self._phases_counted[kind] = now
        return True

    def remember_run(self, run_name: str, run: RunRef) -> None:
        self.runs[run_name] = run
        self.runs.move_to_end(run_name)
        while len(self.runs) > RUNS_REMEMBERED:
            self.runs.popitem(last=False)

    def release_slot(self, namespace: str, run_name: str) -> None:
        """The run was seen (in any state), cancelled or deleted: the index or nothing holds it now."""
        self.submitting.get(namespace, set()).discard(run_name)

    def backing_off(self, uid: str) -> bool:
        return time.monotonic() < self.next_attempt.get(uid, 0.0)

    async def backend_call(self, operation: str, coro, *, uid: str = ""):
        """Call the backend; count consecutive failures per job and back off exponentially."""
        try:
            result = await coro
        except Exception as exc:
            raise self.failed(operation, exc, uid=uid) from exc
        self.failures.pop(uid, None)
        self.next_attempt.pop(uid, None)
        return result

    def failed(self, operation: str, exc: Exception, *, uid: str = "") -> BackendUnavailable:
        """Count a failed call of the job's and set its backoff; the error to raise.

        Only a backend call that succeeds clears the count: a step before it that succeeds
        (the output claim) does not, or a backend that is down would never be reported.
        """
        self.metrics.backend_errors.labels(backend=self.backend.name, operation=operation).inc()
        failures = self.failures[uid] = self.failures.get(uid, 0) + 1
        self.next_attempt[uid] = time.monotonic() + backoff(failures, self.settings.poll_seconds)
        return BackendUnavailable(self.backend.name, operation, failures, exc)


class BackendUnavailable(Exception):
    def __init__(self, backend: str, operation: str, attempts: int, cause: Exception) -> None:
        super().__init__(f"{backend} backend: {operation} failed ({attempts} attempt(s)): {cause}")
        self.backend, self.operation, self.attempts = backend, operation, attempts


def _epoch(timestamp: Any) -> float | None:
    """An API server's RFC 3339 timestamp in epoch seconds (None when absent or unreadable)."""
    if not timestamp:
        return None
    try:
        return datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
