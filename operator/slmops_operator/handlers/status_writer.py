"""How the reconciler writes a job's status: phase transitions, backend trouble, a run's state.

:meth:`JobPass.go` writes a phase (with its conditions, from the pure functions of
:mod:`.conditions`) into the pass's patch and posts one Event when the phase changes;
:func:`mirror` turns a backend's :class:`~slmops_operator.backends.base.RunState` into a
transition; :func:`backend_trouble` says in status that the backend cannot be reached,
after ``SLMOPS_BACKEND_RETRIES`` attempts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf

from slmops_operator.api.status import RunRef
from slmops_operator.backends.base import JobRequest, RunState
from slmops_operator.handlers.conditions import backend_recovered, changed, phase_patch, set_condition
from slmops_operator.handlers.reconciler import BackendUnavailable, Reconciler
from slmops_operator.metrics import OperatorMetrics
from slmops_pipelines import jobs


@dataclass
class JobPass:
    """One reconciliation of one job: what kopf handed the handler, and the patch its status goes to."""

    kind: str
    body: kopf.Body
    status: dict[str, Any]  # the status as it was at the start of the pass
    patch: kopf.Patch
    logger: logging.Logger
    metrics: OperatorMetrics | None = None

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.body.get("metadata") or {})

    @property
    def uid(self) -> str:
        return self.meta.get("uid") or ""

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation") or 1)

    def go(
        self,
        phase: str,
        *,
        reason: str,
        message: str = "",
        suspended: bool = False,
        extra: dict[str, Any] | None = None,
        backend_ok: bool = False,
    ) -> None:
        """Write the phase (and ``extra``) into the patch; post an Event when the phase changes.

        ``backend_ok``: this pass reached the backend, so a ``BackendAvailable=False`` recovers.
        """
        update = phase_patch(
            self.status,
            phase,
            reason=reason,
            message=message,
            generation=self.generation,
            suspended=suspended,
        )
        if backend_ok:
            update["conditions"] = backend_recovered(update["conditions"], generation=self.generation)
        update.update(extra or {})
        if not changed(self.status, update):
            return
        for key, value in update.items():
            self.patch.status[key] = value
        if self.status.get("phase") != phase or self.status.get("observedGeneration") != self.generation:
            # The operator's log tells each job's story: one line per transition.
            self.logger.info(
                f"{self.status.get('phase') or 'new'} -> {phase} ({reason}){': ' + message if message else ''}"
            )
            kopf.event(
                self.body,
                type="Warning" if phase == "Failed" else "Normal",
                reason=reason,
                message=f"{phase}: {message}"[:1024] if message else phase,
            )
            if self.metrics is not None:
                self.metrics.transitions.labels(kind=self.kind, phase=phase).inc()


def backend_trouble(reconciler: Reconciler, exc: BackendUnavailable, job: JobPass) -> None:
    """Retry with backoff; after ``SLMOPS_BACKEND_RETRIES`` say so in status (and fail a job never started)."""
    job.logger.warning(str(exc))
    if exc.attempts < reconciler.settings.backend_retries:
        return
    message = f"{exc} (host: {reconciler.settings.kfp_host})" if exc.backend == "kfp" else str(exc)
    if exc.operation in ("claim", "submit") and not (job.status.get("run") or {}).get("name"):
        job.go("Failed", reason="BackendUnreachable", message=message)
        return
    conditions = set_condition(
        list(job.status.get("conditions") or []),
        "BackendAvailable",
        "False",
        reason="BackendUnreachable",
        message=message,
        generation=job.generation,
    )
    job.patch.status["conditions"] = conditions
    job.patch.status["message"] = message[:1024]
    if exc.attempts == reconciler.settings.backend_retries:
        kopf.event(job.body, type="Warning", reason="BackendUnreachable", message=message[:1024])


def progress_of(state: RunState) -> dict[str, Any] | None:
    if not state.progress:
        return None
    p = state.progress
    progress = {
        "stage": p.get("stage"),
        "step": p.get("step"),
        "totalSteps": p.get("totalSteps"),
        "percent": p.get("percent"),
        "loss": p.get("loss"),
        "evalLoss": p.get("evalLoss"),
        "etaSeconds": p.get("etaSeconds"),
        "trials": p.get("trials"),
    }
    return {k: v for k, v in progress.items() if v is not None}


def mirror(reconciler: Reconciler, request: JobRequest, run: RunRef, state: RunState, job: JobPass) -> None:
    """The run's state, into the job's phase, progress, results or failure."""
    extra: dict[str, Any] = {}
    progress = progress_of(state)
    if progress:
        extra["progress"] = progress
    if state.phase == "Succeeded" and state.outputs_error:
        outputs_unreadable(reconciler, request, state, job, extra)
    elif state.phase == "Succeeded":
        reconciler.output_failures.pop(request.uid, None)
        extra.update(artifacts=state.artifacts, metrics=state.metrics)
        if state.usage:
            extra["usage"] = state.usage
        if state.tracking:
            extra["tracking"] = state.tracking
        extra.update(jobs.KINDS[request.kind].status_details(request.spec, state.artifacts))
        job.go(
            "Succeeded", reason="RunSucceeded", message=state.message or "done", extra=extra, backend_ok=True
        )
        tracked(job, state.tracking)
    elif state.phase == "Failed":
        where = f"spec.{state.spec_field}: " if state.spec_field else ""
        message = f"{where}{state.message}"
        job.go("Failed", reason=state.reason or "RunFailed", message=message, extra=extra, backend_ok=True)
    elif state.phase == "Cancelled":
        job.go(
            "Cancelled",
            reason="RunCancelled",
            message=state.message or "cancelled",
            extra=extra,
            backend_ok=True,
        )
    else:
        message = state.message or f"{state.phase.lower()} on {run.backend}"
        job.go("Running", reason="RunRunning", message=message, extra=extra, backend_ok=True)


def tracked(job: JobPass, tracking: dict[str, Any] | None) -> None:
    """The ``Tracked`` condition: where MLflow has the run, or why it could not be logged there
    (an unreachable tracking server never fails the job: this is where it says so)."""
    mlflow = (tracking or {}).get("mlflow")
    if not mlflow:
        return
    ok = not mlflow.get("error")
    conditions = list(job.patch.status.get("conditions") or job.status.get("conditions") or [])
    job.patch.status["conditions"] = set_condition(
        conditions,
        "Tracked",
        "True" if ok else "False",
        reason="Tracked" if ok else "TrackingUnavailable",
        message=mlflow.get("url", "") if ok else f"{mlflow.get('trackingUri')}: {mlflow.get('error')}",
        generation=job.generation,
    )


def outputs_unreadable(
    reconciler: Reconciler, request: JobRequest, state: RunState, job: JobPass, extra: dict[str, Any]
) -> None:
    """The run succeeded but its results cannot be read: a condition while retrying, then Failed."""
    failures = reconciler.output_failures[request.uid] = reconciler.output_failures.get(request.uid, 0) + 1
    message = f"the run succeeded but its results cannot be read: {state.outputs_error}"
    if failures >= reconciler.settings.backend_retries:
        reconciler.output_failures.pop(request.uid, None)
        job.go("Failed", reason="OutputsUnreadable", message=message, extra=extra, backend_ok=True)
        return
    generation = job.status.get("observedGeneration")
    conditions = set_condition(
        # Running's own conditions, the backend reachable (it answered), the results not readable.
        backend_recovered(list(job.status.get("conditions") or []), generation=generation),
        "OutputsReadable",
        "False",
        reason="OutputsUnreadable",
        message=f"{message} (attempt {failures} of {reconciler.settings.backend_retries})",
        generation=generation,
    )
    job.go("Running", reason="RunRunning", message=message, extra={**extra, "conditions": conditions})
