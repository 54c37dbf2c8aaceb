"""The reconciliation of FineTuneJob and OptimizeJob: from the resource to a run, and back to status.

One kopf **timer** per job (every ``SLMOPS_POLL_SECONDS``) reconciles it; kopf serializes
the calls for one object and applies the status patch after each.  A reconciliation reads
the resource and its status, asks the backend (never the other way round), and writes at
most one status patch and one Event per transition:

1. finished -> final: only ``ttlSecondsAfterFinished`` remains to honour;
2. ``spec.suspend`` -> cancel the run if there is one; Pending with ``Suspended=True``;
3. an OptimizeJob's ``fineTuneJobRef`` -> Pending until that job Succeeded (its output is
   the source), Failed when it Failed;
4. no run yet -> Queued while the namespace's running limit is reached, else submit: the
   backend finds the run by its deterministic name before starting one, so a retried
   handler or a restarted operator never starts a second run;
5. a run -> mirror its phase, progress, artifacts and metrics, or its failure (reason,
   message and the spec field it is about).

Deleting a resource cancels its run and, with ``SLMOPS_DELETE_ARTIFACTS``, deletes the
output it owns (:mod:`.finalizer`, bounded by ``SLMOPS_FINALIZER_TIMEOUT``).  The spec is
immutable once created (the CRD's CEL rules and the webhook refuse changes but ``suspend``
and ``ttlSecondsAfterFinished``).  **A job has at most one active run**: runs are named
after the job's uid and its run number (``status.runAttempt``), not its generation, so an
edit never starts a run; the number moves only when a suspended job, whose run the
operator cancelled, resumes: the new run resumes from the last checkpoint of the same output.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import kopf

from slmops_operator.api.resources import GROUP, VERSION, FineTuneJob, OptimizeJob, Resource
from slmops_operator.api.status import RunRef
from slmops_operator.backends.base import Backend, JobRequest, RunState
from slmops_operator.credentials import Credentials, MissingCredentials
from slmops_operator.handlers import finalizer, validation
from slmops_operator.handlers.conditions import (
    FINISHED,
    backend_recovered,
    changed,
    condition_status,
    phase_patch,
    set_condition,
)
from slmops_operator.handlers.kube import KubeApi
from slmops_operator.metrics import OperatorMetrics
from slmops_operator.settings import OperatorSettings

KINDS: dict[str, type[Resource]] = {"FineTuneJob": FineTuneJob, "OptimizeJob": OptimizeJob}
ACTIVE = ("Running",)


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
        self.output_failures: dict[str, int] = {}  # job uid -> failed reads of a succeeded run's results
        self.cancelled: set[str] = (
            set()
        )  # runs this process cancelled for a suspend (terminate is idempotent)
        self.locks: dict[str, asyncio.Lock] = {}
        self.failures: dict[str, int] = {}  # job uid -> consecutive failed backend calls
        self.next_attempt: dict[str, float] = {}  # job uid -> monotonic time of the next backend call

    # -- helpers -----------------------------------------------------------------------------

    def output_uri(self, resource: Resource) -> str:
        if resource.spec.output.uri:
            return resource.spec.output.uri
        root = self.settings.default_output or (
            str(self.settings.local_state_dir / "outputs") if self.settings.backend == "local" else ""
        )
        if not root:
            raise kopf.PermanentError("output.uri is required: this operator has no SLMOPS_DEFAULT_OUTPUT")
        return f"{root.rstrip('/')}/{resource.namespace}/{resource.name}"

    def request(
        self, resource: Resource, meta: kopf.Meta, source_uri: str = "", *, attempt: int = 1
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
        )

    def release_slot(self, namespace: str, run_name: str) -> None:
        """The run was seen (in any state), cancelled or deleted: the index or nothing holds it now."""
        self.submitting.get(namespace, set()).discard(run_name)

    def backing_off(self, uid: str) -> bool:
        return time.monotonic() < self.next_attempt.get(uid, 0.0)

    async def _backend_call(self, operation: str, coro, *, uid: str = ""):
        """Call the backend; count consecutive failures per job and back off exponentially."""
        try:
            result = await coro
        except Exception as exc:
            self.metrics.backend_errors.labels(backend=self.backend.name, operation=operation).inc()
            failures = self.failures[uid] = self.failures.get(uid, 0) + 1
            delay = min(60.0, self.settings.poll_seconds * 2**failures)
            self.next_attempt[uid] = time.monotonic() + delay
            raise BackendUnavailable(self.backend.name, operation, failures, exc) from exc
        self.failures.pop(uid, None)
        self.next_attempt.pop(uid, None)
        return result


class BackendUnavailable(Exception):
    def __init__(self, backend: str, operation: str, attempts: int, cause: Exception) -> None:
        super().__init__(f"{backend} backend: {operation} failed ({attempts} attempt(s)): {cause}")
        self.backend, self.operation, self.attempts = backend, operation, attempts


def _transition(
    body: kopf.Body,
    status: dict[str, Any],
    patch: kopf.Patch,
    phase: str,
    *,
    reason: str,
    message: str,
    generation: int,
    suspended: bool = False,
    extra: dict[str, Any] | None = None,
    metrics: OperatorMetrics | None = None,
    backend_ok: bool = False,
) -> None:
    """Write the phase (and ``extra``) into the patch; post an Event when the phase changes.

    ``backend_ok``: this pass reached the backend, so a ``BackendAvailable=False`` recovers.
    """
    update = phase_patch(
        status, phase, reason=reason, message=message, generation=generation, suspended=suspended
    )
    if backend_ok:
        update["conditions"] = backend_recovered(update["conditions"], generation=generation)
    update.update(extra or {})
    if not changed(status, update):
        return
    for key, value in update.items():
        patch.status[key] = value
    if status.get("phase") != phase or status.get("observedGeneration") != generation:
        kopf.event(
            body,
            type="Warning" if phase == "Failed" else "Normal",
            reason=reason,
            message=f"{phase}: {message}"[:1024] if message else phase,
        )
        if metrics is not None:
            metrics.transitions.labels(kind=body.get("kind", ""), phase=phase).inc()


def request_uid(meta: kopf.Meta) -> str:
    return meta.get("uid") or ""


def _backend_trouble(
    reconciler: Reconciler,
    exc: BackendUnavailable,
    *,
    body: kopf.Body,
    meta: kopf.Meta,
    status: dict[str, Any],
    patch: kopf.Patch,
    logger: logging.Logger,
) -> None:
    """Retry with backoff; after ``SLMOPS_BACKEND_RETRIES`` say so in status (and fail a job never started)."""
    logger.warning(str(exc))
    if exc.attempts < reconciler.settings.backend_retries:
        return
    generation = int(meta.get("generation") or 1)
    message = f"{exc} (host: {reconciler.settings.kfp_host})" if exc.backend == "kfp" else str(exc)
    if exc.operation == "submit" and not (status.get("run") or {}).get("name"):
        _transition(
            body,
            status,
            patch,
            "Failed",
            reason="BackendUnreachable",
            message=message,
            generation=generation,
            metrics=reconciler.metrics,
        )
        return
    conditions = set_condition(
        list(status.get("conditions") or []),
        "BackendAvailable",
        "False",
        reason="BackendUnreachable",
        message=message,
        generation=generation,
    )
    patch.status["conditions"] = conditions
    patch.status["message"] = message[:1024]
    if exc.attempts == reconciler.settings.backend_retries:
        kopf.event(body, type="Warning", reason="BackendUnreachable", message=message[:1024])


def _progress(state: RunState) -> dict[str, Any] | None:
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


def _run_ref(status: dict[str, Any], run_name: str) -> RunRef | None:
    run = status.get("run") or {}
    return RunRef.model_validate(run) if run.get("name") == run_name else None


async def reconcile(
    reconciler: Reconciler,
    kind: str,
    *,
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    finetunejobs_index: kopf.Index | None = None,
    active: set[str] | None = None,
    logger: logging.Logger,
) -> None:
    started = time.perf_counter()
    uid = meta.get("uid") or ""
    if reconciler.backing_off(uid):
        return
    try:
        await _reconcile(
            reconciler,
            kind,
            body=body,
            meta=meta,
            status=dict(status or {}),
            patch=patch,
            finetunejobs_index=finetunejobs_index,
            active=active or set(),
            logger=logger,
        )
    except BackendUnavailable as exc:
        _backend_trouble(
            reconciler, exc, body=body, meta=meta, status=dict(status or {}), patch=patch, logger=logger
        )
    finally:
        reconciler.metrics.reconcile_seconds.labels(kind=kind).observe(time.perf_counter() - started)


async def _reconcile(
    reconciler: Reconciler,
    kind: str,
    *,
    body: kopf.Body,
    meta: kopf.Meta,
    status: dict[str, Any],
    patch: kopf.Patch,
    finetunejobs_index: kopf.Index | None,
    active: set[str],
    logger: logging.Logger,
) -> None:
    generation = int(meta.get("generation") or 1)
    metrics = reconciler.metrics

    def go(
        phase: str, *, reason: str, message: str = "", suspended: bool = False, extra=None, backend_ok=False
    ) -> None:
        _transition(
            body,
            status,
            patch,
            phase,
            reason=reason,
            message=message,
            generation=generation,
            suspended=suspended,
            extra=extra,
            metrics=metrics,
            backend_ok=backend_ok,
        )

    phase = status.get("phase")
    if phase not in FINISHED:
        # The webhook may be bypassed or not installed: the same checks, once more.
        problems = validation.problems_of(kind, dict(body), settings=reconciler.settings)
        if problems:
            go("Failed", reason="InvalidSpec", message="; ".join(problems)[:1000])
            return
    try:
        resource = KINDS[kind].model_validate(dict(body))
    except Exception as exc:  # a finished job of an older, looser release: keep its verdict
        if phase not in FINISHED:
            go("Failed", reason="InvalidSpec", message=str(exc)[:1000])
        return

    if phase in FINISHED:
        # Final: only suspend and ttlSecondsAfterFinished may change (the webhook sees to it),
        # and neither reruns a finished job.
        if status.get("observedGeneration") != generation:
            patch.status["observedGeneration"] = generation
        await _honour_ttl(reconciler, resource, status, logger)
        return

    # Suspended: stop what runs; once resumed, the job's next run resumes from its checkpoint.
    # The intent is written first (Suspended=True, in this pass's patch) and the run cancelled
    # in the next pass: killed in between, the operator still knows the run was its to cancel,
    # and a resumed job starts its next run instead of taking the cancelled one as a verdict.
    previous = status.get("run") or {}
    if resource.spec.suspend:
        if previous.get("name") and condition_status(status, "Suspended") == "True":
            await _cancel_once(reconciler, previous, namespace=resource.namespace, uid=request_uid(meta))
        go("Pending", reason="Suspended", message="spec.suspend is true", suspended=True)
        return
    if previous.get("name") and condition_status(status, "Suspended") == "True":
        # Resumed: the suspended run is cancelled (if that pass never came) before the next one starts.
        await _cancel_once(reconciler, previous, namespace=resource.namespace, uid=request_uid(meta))

    source_uri = ""
    if isinstance(resource, OptimizeJob) and resource.spec.source.fine_tune_job_ref is not None:
        ref = resource.spec.source.fine_tune_job_ref.name
        found = list((finetunejobs_index or {}).get((resource.namespace, ref), []))
        if not found:
            go(
                "Pending",
                reason="WaitingForFineTuneJob",
                message=f"waiting for FineTuneJob {ref} to be created",
            )
            return
        dependency = found[0]
        if dependency["phase"] in ("Failed", "Cancelled"):
            go(
                "Failed",
                reason="FineTuneJobFailed",
                message=f"FineTuneJob {ref} {dependency['phase'].lower()}: {dependency.get('message') or ''}".strip(),
            )
            return
        if dependency["phase"] != "Succeeded" or not dependency.get("output"):
            go("Pending", reason="WaitingForFineTuneJob", message=f"waiting for FineTuneJob {ref} to succeed")
            return
        source_uri = dependency["output"]

    try:
        request = reconciler.request(resource, meta, source_uri, attempt=run_attempt(status))
    except kopf.PermanentError as exc:
        go("Failed", reason="InvalidSpec", message=str(exc))
        return
    run = _run_ref(status, request.run_name)

    if run is None:
        await _start(reconciler, request, go, active)
        return

    state = await reconciler._backend_call("state", reconciler.backend.state(run, request), uid=request.uid)
    reconciler.release_slot(resource.namespace, request.run_name)  # seen: the index has it, or it ended
    _mirror(reconciler, request, run, state, go, status)


async def _cancel_once(reconciler: Reconciler, run: dict[str, Any], *, namespace: str, uid: str) -> None:
    """Cancel a run the operator stopped (suspend); once per run and operator process."""
    if run["name"] in reconciler.cancelled:
        return
    await reconciler._backend_call("cancel", reconciler.backend.cancel(RunRef.model_validate(run)), uid=uid)
    reconciler.cancelled.add(run["name"])
    reconciler.release_slot(namespace, run["name"])


def run_attempt(status: dict[str, Any]) -> int:
    """The job's current run number; one more when a suspended job whose run was cancelled resumes."""
    attempt = int(status.get("runAttempt") or 1)
    resumed = condition_status(status, "Suspended") == "True" and (status.get("run") or {}).get("name")
    return attempt + 1 if resumed else attempt


def _mirror(reconciler: Reconciler, request: JobRequest, run: RunRef, state: RunState, go, status) -> None:
    """The run's state, into the job's phase, progress, results or failure."""
    extra: dict[str, Any] = {}
    progress = _progress(state)
    if progress:
        extra["progress"] = progress
    if state.phase == "Succeeded" and state.outputs_error:
        _outputs_unreadable(reconciler, request, state, go, status, extra)
    elif state.phase == "Succeeded":
        reconciler.output_failures.pop(request.uid, None)
        extra.update(artifacts=state.artifacts, metrics=state.metrics)
        go("Succeeded", reason="RunSucceeded", message=state.message or "done", extra=extra, backend_ok=True)
    elif state.phase == "Failed":
        where = f"spec.{state.spec_field}: " if state.spec_field else ""
        message = f"{where}{state.message}"
        go("Failed", reason=state.reason or "RunFailed", message=message, extra=extra, backend_ok=True)
    elif state.phase == "Cancelled":
        go(
            "Cancelled",
            reason="RunCancelled",
            message=state.message or "cancelled",
            extra=extra,
            backend_ok=True,
        )
    else:
        message = state.message or f"{state.phase.lower()} on {run.backend}"
        go("Running", reason="RunRunning", message=message, extra=extra, backend_ok=True)


def _outputs_unreadable(
    reconciler: Reconciler, request: JobRequest, state: RunState, go, status, extra
) -> None:
    """The run succeeded but its results cannot be read: a condition while retrying, then Failed."""
    failures = reconciler.output_failures[request.uid] = reconciler.output_failures.get(request.uid, 0) + 1
    message = f"the run succeeded but its results cannot be read: {state.outputs_error}"
    if failures >= reconciler.settings.backend_retries:
        reconciler.output_failures.pop(request.uid, None)
        go("Failed", reason="OutputsUnreadable", message=message, extra=extra, backend_ok=True)
        return
    generation = status.get("observedGeneration")
    conditions = set_condition(
        # Running's own conditions, the backend reachable (it answered), the results not readable.
        backend_recovered(list(status.get("conditions") or []), generation=generation),
        "OutputsReadable",
        "False",
        reason="OutputsUnreadable",
        message=f"{message} (attempt {failures} of {reconciler.settings.backend_retries})",
        generation=generation,
    )
    go("Running", reason="RunRunning", message=message, extra={**extra, "conditions": conditions})


async def _start(reconciler: Reconciler, request: JobRequest, go, active: set[str]) -> None:
    """Submit, unless the namespace's running limit is reached (then Queued)."""
    limit = reconciler.settings.max_running_per_namespace
    namespace = request.namespace
    lock = reconciler.locks.setdefault(namespace, asyncio.Lock())
    async with lock:  # two queued jobs of one namespace must not both take the last slot
        if limit:
            active = (active | reconciler.submitting.get(namespace, set())) - {request.run_name}
            if len(active) >= limit:
                go(
                    "Queued",
                    reason="NamespaceLimit",
                    message=f"{len(active)} of {limit} jobs running in {namespace}; waiting for a slot",
                    extra={"runAttempt": request.attempt},
                )
                return
        try:  # only what the job's own namespace holds, checked before anything starts
            request.secrets = await reconciler.credentials.resolve(request.namespace, request.spec)
        except MissingCredentials as exc:
            go("Failed", reason="MissingCredentials", message=str(exc))
            return
        run = await reconciler._backend_call("submit", reconciler.backend.submit(request), uid=request.uid)
        reconciler.submitting.setdefault(namespace, set()).add(request.run_name)
    go(
        "Running",
        reason="RunSubmitted",
        message=f"run {run.name} submitted to the {run.backend} backend",
        extra={
            "run": run.model_dump(mode="json", by_alias=True, exclude_none=True),
            "runAttempt": request.attempt,
            "progress": {"stage": "submitted"},
        },
        backend_ok=True,
    )


async def _honour_ttl(
    reconciler: Reconciler, resource: Resource, status: dict[str, Any], logger: logging.Logger
) -> None:
    ttl = resource.spec.ttl_seconds_after_finished
    completed = status.get("completionTime")
    if ttl is None or not completed:
        return
    import datetime

    finished = datetime.datetime.strptime(completed, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc
    )
    if (datetime.datetime.now(datetime.timezone.utc) - finished).total_seconds() < ttl:
        return
    logger.info(f"ttlSecondsAfterFinished ({ttl}) passed: deleting {resource.kind_name} {resource.name}")
    await reconciler.kube.delete(
        f"/apis/{GROUP}/{VERSION}/namespaces/{resource.namespace}/{resource.plural}/{resource.name}"
    )


def index_finetunejobs(*, namespace: str, name: str, status: kopf.Status, **_: Any) -> dict:
    status = dict(status or {})
    return {
        (namespace, name): {
            "phase": status.get("phase"),
            "message": status.get("message"),
            "output": (status.get("artifacts") or {}).get("output"),
        }
    }


def index_active_jobs(*, namespace: str, status: kopf.Status, **_: Any) -> dict:
    status = dict(status or {})
    run = (status.get("run") or {}).get("name")
    return {namespace: run} if run and status.get("phase") in ACTIVE else {}


def index_phases(*, status: kopf.Status, param: str, **_: Any) -> dict:
    return {param: (dict(status or {}).get("phase") or "Pending")}


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Register every job handler on ``registry``."""
    poll = reconciler.settings.poll_seconds
    for kind, cls in KINDS.items():
        plural = cls.plural

        @kopf.on.create(GROUP, VERSION, plural, registry=registry, id=f"accept-{plural}", param=kind)
        async def accept(body: kopf.Body, param: str, **_: Any) -> None:
            """Runs once per object: a record that the operator took the job."""
            kopf.event(body, type="Normal", reason="Accepted", message=f"{param} accepted")

        @kopf.timer(
            GROUP,
            VERSION,
            plural,
            registry=registry,
            id=f"reconcile-{plural}",
            param=kind,
            interval=poll,
            sharp=False,
        )
        async def tick(param: str, namespace: str, **kwargs: Any) -> None:
            wanted = {k: kwargs.get(k) for k in ("body", "meta", "status", "patch", "logger")}
            active = {
                run
                for index in ("active_jobs_finetunejobs", "active_jobs_optimizejobs")
                for run in (kwargs.get(index) or {}).get(namespace, [])
            }
            await reconcile(
                reconciler,
                param,
                finetunejobs_index=kwargs.get("finetunejobs_index"),
                active=active,
                **wanted,
            )
            phases = kwargs.get(f"phases_{KINDS[param].plural}") or {}
            reconciler.metrics.set_phase_counts(param, Counter(phases.get(param, [])))

        @kopf.on.delete(GROUP, VERSION, plural, registry=registry, id=f"finalize-{plural}", param=kind)
        async def finalize(
            body: kopf.Body, status: kopf.Status, logger: logging.Logger, runtime, retry: int, **_: Any
        ) -> None:
            await finalizer.on_delete(
                reconciler, body=body, status=status, logger=logger, runtime=runtime, retry=retry
            )

        kopf.index(GROUP, VERSION, plural, registry=registry, id=f"active_jobs_{plural}")(index_active_jobs)
        kopf.index(GROUP, VERSION, plural, registry=registry, id=f"phases_{plural}", param=kind)(index_phases)

    kopf.index(GROUP, VERSION, "finetunejobs", registry=registry, id="finetunejobs_index")(index_finetunejobs)
