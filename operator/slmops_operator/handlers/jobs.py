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

Deleting a resource cancels its run (the finalizer's ``on.delete``) and, with
``SLMOPS_DELETE_ARTIFACTS``, deletes its output.  The spec is immutable once created (the
webhook refuses changes but ``suspend`` and ``ttlSecondsAfterFinished``), so a generation
change only ever suspends or resumes a job; a resumed job gets a new run, which resumes
from the last checkpoint of the same output.
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
from slmops_operator.handlers import validation
from slmops_operator.handlers.conditions import FINISHED, changed, phase_patch
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
        self.submitting: dict[str, set[str]] = {}  # namespace -> runs submitted, not yet seen Running
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

    def request(self, resource: Resource, meta: kopf.Meta, source_uri: str = "") -> JobRequest:
        return JobRequest(
            kind=resource.kind_name,
            namespace=resource.namespace,
            name=resource.name,
            uid=meta.get("uid") or "",
            generation=int(meta.get("generation") or 1),
            spec=resource.spec,
            output_uri=self.output_uri(resource),
            labels=dict(meta.get("labels") or {}),
            source_uri=source_uri,
        )

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
) -> None:
    """Write the phase (and ``extra``) into the patch; post an Event when the phase changes."""
    update = phase_patch(
        status, phase, reason=reason, message=message, generation=generation, suspended=suspended
    )
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
    from slmops_operator.handlers.conditions import set_condition

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

    def go(phase: str, *, reason: str, message: str = "", suspended: bool = False, extra=None) -> None:
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

    # Suspended: stop what runs; a resumed job gets a new run (new generation) that resumes.
    if resource.spec.suspend:
        previous = status.get("run") or {}
        if previous.get("name") and phase == "Running":
            await reconciler._backend_call(
                "cancel", reconciler.backend.cancel(RunRef.model_validate(previous)), uid=request_uid(meta)
            )
        go("Pending", reason="Suspended", message="spec.suspend is true", suspended=True)
        return

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
        request = reconciler.request(resource, meta, source_uri)
    except kopf.PermanentError as exc:
        go("Failed", reason="InvalidSpec", message=str(exc))
        return
    run = _run_ref(status, request.run_name)

    if run is None:
        await _start(reconciler, request, go, active)
        return

    state = await reconciler._backend_call("state", reconciler.backend.state(run, request), uid=request.uid)
    extra: dict[str, Any] = {}
    progress = _progress(state)
    if progress:
        extra["progress"] = progress
    if state.phase == "Succeeded":
        extra.update(artifacts=state.artifacts, metrics=state.metrics)
        go("Succeeded", reason="RunSucceeded", message=state.message or "done", extra=extra)
    elif state.phase == "Failed":
        where = f"spec.{state.spec_field}: " if state.spec_field else ""
        go("Failed", reason=state.reason or "RunFailed", message=f"{where}{state.message}", extra=extra)
    elif state.phase == "Cancelled":
        go("Cancelled", reason="RunCancelled", message=state.message or "cancelled", extra=extra)
    else:
        reconciler.submitting.get(resource.namespace, set()).discard(request.run_name)  # the index has it now
        go(
            "Running",
            reason="RunRunning",
            message=state.message or f"{state.phase.lower()} on {run.backend}",
            extra=extra,
        )


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
            "progress": {"stage": "submitted"},
        },
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


async def on_delete(
    reconciler: Reconciler, *, body: kopf.Body, status: kopf.Status, logger: logging.Logger
) -> None:
    """The finalizer: cancel the run; delete the artifacts the job owns when the operator is told to."""
    status = dict(status or {})
    run = status.get("run") or {}
    if run.get("name") and status.get("phase") not in FINISHED:
        await reconciler.backend.cancel(RunRef.model_validate(run))
        logger.info(f"cancelled run {run['name']}")
    if reconciler.settings.delete_artifacts:
        uri = (status.get("artifacts") or {}).get("output")
        if not uri:  # not finished: whatever it wrote so far
            try:
                kind = body.get("kind", "")
                uri = reconciler.output_uri(KINDS[kind].model_validate(dict(body)))
            except Exception:  # an invalid object never ran: nothing to delete
                uri = None
        if uri:
            uid = (body.get("metadata") or {}).get("uid") or ""
            cleanup = await asyncio.to_thread(delete_owned_artifacts, uri, uid, reconciler.settings)
            logger.info(f"deleted {cleanup.deleted} artifact object(s) under {uri}")
            if cleanup.kept:
                kopf.event(
                    body, type="Normal", reason="ArtifactsKept", message="; ".join(cleanup.kept)[:1024]
                )


def delete_owned_artifacts(uri: str, uid: str, settings: OperatorSettings):
    """Delete the output at ``uri`` if this job (``uid``) claimed it; never the operator's own roots."""
    from slmops_pipelines.steps.publish import Cleanup, delete_owned_output
    from slmops_pipelines.storage import open_store

    refused = validation.output_problems(uri, settings.model_copy(update={"backend": "local"}))
    if refused:  # an output of an older release, or admitted without the webhook
        return Cleanup(kept=[f"{uri}: not deleted, {problem.split(': ', 1)[1]}" for problem in refused])
    return delete_owned_output(open_store(uri), uid=uid)


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
        async def finalize(body: kopf.Body, status: kopf.Status, logger: logging.Logger, **_: Any) -> None:
            await on_delete(reconciler, body=body, status=status, logger=logger)

        kopf.index(GROUP, VERSION, plural, registry=registry, id=f"active_jobs_{plural}")(index_active_jobs)
        kopf.index(GROUP, VERSION, plural, registry=registry, id=f"phases_{plural}", param=kind)(index_phases)

    kopf.index(GROUP, VERSION, "finetunejobs", registry=registry, id="finetunejobs_index")(index_finetunejobs)
