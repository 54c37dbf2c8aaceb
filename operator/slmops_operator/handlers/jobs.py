"""The reconciliation of FineTuneJob and OptimizeJob: from the resource to a run, and back to status.

One kopf **timer** per job (every ``SLMOPS_POLL_SECONDS``) reconciles it; kopf serializes
the calls for one object and applies the status patch after each.  A reconciliation reads
the resource and its status, asks the backend (never the other way round), and writes at
most one status patch and one Event per transition:

1. finished -> final: only ``ttlSecondsAfterFinished`` remains to honour;
2. ``spec.suspend`` -> cancel the run if there is one; Pending with ``Suspended=True``;
3. a job with an upstream (an OptimizeJob's ``fineTuneJobRef``; the job kind says) -> Pending
   until that job Succeeded (its output is the source), Failed when it Failed;
4. no run yet -> Queued while the namespace's running limit is reached, else submit: the
   backend finds the run by its deterministic name before starting one (after a grace for a
   creation that may still land), so a retried handler or a restarted operator never starts
   a second run;
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
from collections.abc import Callable
from typing import Any

import kopf

from slmops_operator.api.resources import GROUP, VERSION, Resource, resource_of, resources
from slmops_operator.api.status import RunRef
from slmops_operator.backends.base import JobRequest, RunState, status_run
from slmops_operator.credentials import MissingCredentials, output_access
from slmops_operator.handlers import finalizer, serving, validation
from slmops_operator.handlers.conditions import FINISHED, condition_status
from slmops_operator.handlers.reconciler import BackendUnavailable, Reconciler
from slmops_operator.handlers.status_writer import JobPass, backend_trouble, mirror

ACTIVE = ("Running",)


async def reconcile(
    reconciler: Reconciler,
    kind: str,
    *,
    body: kopf.Body,
    status: kopf.Status,
    patch: kopf.Patch,
    logger: logging.Logger,
    outputs: dict[str, Any] | None = None,
    active: Callable[[], set[str]] | None = None,
    **_: Any,
) -> None:
    """One pass over one job.  ``outputs``: kind -> the index of that kind's jobs (phase, output);
    ``active``: the runs active in the job's namespace, asked only when a limit needs them."""
    started = time.perf_counter()
    job = JobPass(kind, body, dict(status or {}), patch, logger, metrics=reconciler.metrics)
    if reconciler.backing_off(job.uid):
        return
    try:
        await _reconcile(reconciler, job, outputs=outputs or {}, active=active or set)
    except BackendUnavailable as exc:
        backend_trouble(reconciler, exc, job)
    finally:
        reconciler.metrics.reconcile_seconds.labels(kind=kind).observe(time.perf_counter() - started)


async def _reconcile(
    reconciler: Reconciler, job: JobPass, *, outputs: dict[str, Any], active: Callable[[], set[str]]
) -> None:
    if job.status.get("phase") in FINISHED:
        await _finished(reconciler, job)
        return
    # The webhook may be bypassed or not installed: the same checks, once more.
    resource, problems = validation.checked_resource(job.kind, dict(job.body), settings=reconciler.settings)
    if resource is None or problems:
        job.go("Failed", reason="InvalidSpec", message="; ".join(problems)[:1000])
        return
    if await _suspended(reconciler, resource, job):
        return
    source_uri = _upstream_output(resource, outputs, job)
    if source_uri is None:
        return
    try:
        request = reconciler.request(resource, job.meta, source_uri, attempt=run_attempt(job.status))
    except kopf.PermanentError as exc:
        job.go("Failed", reason="InvalidSpec", message=str(exc))
        return
    run = status_run(job.status, request.run_name)
    if run is None and request.run_name in reconciler.runs:  # submitted; its status not seen yet
        run = reconciler.runs[request.run_name]
        job.patch.status.update(_run_fields(run, request))
    if run is None:
        await _start(reconciler, request, job, active)
        return
    state = await reconciler.backend_call("state", reconciler.backend.state(run, request), uid=request.uid)
    if _counted_elsewhere(reconciler, request.run_name, state, active):
        reconciler.release_slot(resource.namespace, request.run_name)
    mirror(reconciler, request, run, state, job)


def _counted_elsewhere(
    reconciler: Reconciler, run_name: str, state: RunState, active: Callable[[], set[str]]
) -> bool:
    """Whether a submitted run may leave ``reconciler.submitting``: the namespace's index of
    active runs holds it, or it ended (no limit: nothing counts it).

    Not as soon as this pass sees ``status.run``: kopf hands a timer the fresh body before
    the index has taken it in, and in that moment a queued job of the namespace would see
    neither and take the slot.
    """
    return not reconciler.settings.max_running_per_namespace or state.finished or run_name in active()


async def _finished(reconciler: Reconciler, job: JobPass) -> None:
    """Final: only suspend and ttlSecondsAfterFinished may change, and neither reruns the job.

    What it asked to serve (``spec.serve``) is made and mirrored here (:mod:`.serving`).
    """
    if job.status.get("observedGeneration") != job.generation:
        job.patch.status["observedGeneration"] = job.generation
    try:
        resource = resource_of(job.kind).model_validate(dict(job.body))
    except Exception:  # a finished job of an older, looser release: keep its verdict
        return
    await serving.reconcile_serving(reconciler, resource, job)
    await _honour_ttl(reconciler, resource, job.status, job.logger)


async def _suspended(reconciler: Reconciler, resource: Resource, job: JobPass) -> bool:
    """Stop what runs while suspended (True: nothing more to do this pass).

    The intent is written first (Suspended=True, in this pass's patch) and the run cancelled
    in the next pass: killed in between, the operator still knows the run was its to cancel,
    and a resumed job starts its next run instead of taking the cancelled one as a verdict.
    Once resumed, the job's next run resumes from its checkpoint.
    """
    previous = job.status.get("run") or {}
    was_suspended = bool(previous.get("name")) and condition_status(job.status, "Suspended") == "True"
    if resource.spec.suspend:
        if was_suspended:
            await _cancel_once(reconciler, resource, job)
        job.go("Pending", reason="Suspended", message="spec.suspend is true", suspended=True)
        return True
    if was_suspended:  # resumed: the suspended run is cancelled (if that pass never came) before the next
        await _cancel_once(reconciler, resource, job)
    return False


def _upstream_output(resource: Resource, outputs: dict[str, Any], job: JobPass) -> str | None:
    """The output of the job this one reads from ("" without one); None while it waits or when it failed."""
    upstream = resource.job_kind.upstream(resource.spec)
    if upstream is None:
        return ""
    name, what = upstream.name, f"{upstream.kind} {upstream.name}"
    found = list((outputs.get(upstream.kind) or {}).get((resource.namespace, name), []))
    if not found:
        job.go("Pending", reason=f"WaitingFor{upstream.kind}", message=f"waiting for {what} to be created")
        return None
    dependency = found[0]
    if dependency["phase"] in ("Failed", "Cancelled"):
        message = f"{what} {dependency['phase'].lower()}: {dependency.get('message') or ''}".strip()
        job.go("Failed", reason=f"{upstream.kind}Failed", message=message)
        return None
    if dependency["phase"] != "Succeeded" or not dependency.get("output"):
        job.go("Pending", reason=f"WaitingFor{upstream.kind}", message=f"waiting for {what} to succeed")
        return None
    return dependency["output"]


async def _cancel_once(reconciler: Reconciler, resource: Resource, job: JobPass) -> None:
    """Cancel the run of the job's current attempt (suspend); once per run and operator process.

    The run is the one the operator names from the job's uid and attempt, never ``status.run``
    as written (anyone who may patch ``*/status`` could point it at another team's run).
    """
    request = reconciler.request(resource, job.meta, attempt=int(job.status.get("runAttempt") or 1))
    if request.run_name in reconciler.cancelled:
        return
    run = status_run(job.status, request.run_name) or RunRef(name=request.run_name)
    await reconciler.backend_call("cancel", reconciler.backend.cancel(run, request), uid=job.uid)
    reconciler.cancelled.add(request.run_name)
    reconciler.release_slot(resource.namespace, request.run_name)


def run_attempt(status: dict[str, Any]) -> int:
    """The job's current run number; one more when a suspended job whose run was cancelled resumes."""
    attempt = int(status.get("runAttempt") or 1)
    resumed = condition_status(status, "Suspended") == "True" and (status.get("run") or {}).get("name")
    return attempt + 1 if resumed else attempt


async def _start(
    reconciler: Reconciler, request: JobRequest, job: JobPass, active: Callable[[], set[str]]
) -> None:
    """Submit, unless the namespace's running limit is reached (then Queued)."""
    limit = reconciler.settings.max_running_per_namespace
    namespace = request.namespace
    lock = reconciler.locks.setdefault(namespace, asyncio.Lock())
    async with lock:  # two queued jobs of one namespace must not both take the last slot
        running: set[str] = set()  # counted only under a limit: a set as large as the namespace
        if limit:
            running = (active() | reconciler.submitting.get(namespace, set())) - {request.run_name}
        said = "submitted to"
        if limit and len(running) >= limit:
            # An earlier operator process killed mid-submit may have started the run all the
            # same: then the job runs (status says so), whatever the limit.
            run = await reconciler.backend_call("find", reconciler.backend.find(request), uid=request.uid)
            if run is None:
                job.go(
                    "Queued",
                    reason="NamespaceLimit",
                    message=f"{len(running)} of {limit} jobs running in {namespace}; waiting for a slot",
                    extra={"runAttempt": request.attempt},
                )
                return
            said = "found (started before an operator restart) on"
        else:
            run = await _submit(reconciler, request, job)
            if run is None:
                return
        reconciler.submitting.setdefault(namespace, set()).add(request.run_name)
        reconciler.remember_run(request.run_name, run)
    job.go(
        "Running",
        reason="RunSubmitted",
        message=f"run {run.name} {said} the {run.backend} backend",
        extra={**_run_fields(run, request), "progress": {"stage": "submitted"}},
        backend_ok=True,
    )


async def _submit(reconciler: Reconciler, request: JobRequest, job: JobPass) -> RunRef | None:
    """Resolve the job's Secrets, claim its output, start its run (None: the job failed)."""
    try:  # only what the job's own namespace holds, checked before anything starts
        request.secrets = await reconciler.credentials.resolve(request.namespace, request.spec)
    except MissingCredentials as exc:
        job.go("Failed", reason="MissingCredentials", message=str(exc))
        return None
    if not await _claim_output(reconciler, request, job):
        return None
    return await reconciler.backend_call("submit", reconciler.backend.submit(request), uid=request.uid)


def _run_fields(run: RunRef, request: JobRequest) -> dict[str, Any]:
    """What status says of the job's run: the run, and which of the job's runs it is."""
    return {
        "run": run.model_dump(mode="json", by_alias=True, exclude_none=True),
        "runAttempt": request.attempt,
    }


async def _claim_output(reconciler: Reconciler, request: JobRequest, job: JobPass) -> bool:
    """Claim the job's output before its run starts (False: another job holds it, the job failed).

    The job's first step claims it too, but inside the job's own pod, which a custom
    ``spec.image`` controls: the operator's claim is the one a tenant cannot skip.  It is made
    with the job's own output Secret, or the operator's keys inside the job's slot of its
    root; anywhere else the operator does not write, and the pod's claim is all there is.
    """
    from slmops_pipelines import jobs

    access = output_access(request.output_uri, request.namespace, request.secrets, reconciler.settings)
    if access.credentials is None:
        return True
    try:
        await asyncio.to_thread(jobs.claim_output, request.job_run(), credentials=access.credentials)
    except jobs.InputError as refused:  # another job's output
        where = f"spec.{refused.field}: " if refused.field else ""
        job.go("Failed", reason=refused.reason, message=f"{where}{refused.message}")
        return False
    except Exception as exc:  # the store unreachable: retried with backoff, then said in status
        raise reconciler.failed("claim", exc, uid=request.uid) from exc
    return True


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


def index_outputs(*, namespace: str | None, name: str, status: kopf.Status, **_: Any) -> dict:
    """(namespace, name) -> phase, message and output: what a job waiting for this one reads."""
    seen = dict(status or {})
    return {
        (namespace, name): {
            "phase": seen.get("phase"),
            "message": seen.get("message"),
            "output": (seen.get("artifacts") or {}).get("output"),
        }
    }


def index_active_jobs(*, namespace: str | None, status: kopf.Status, **_: Any) -> dict:
    seen = dict(status or {})
    run = (seen.get("run") or {}).get("name")
    return {namespace: run} if run and seen.get("phase") in ACTIVE else {}


def index_phases(*, status: kopf.Status, param: Any = None, **_: Any) -> dict:
    return {param: (dict(status or {}).get("phase") or "Pending")}


# kopf passes each index to the handlers as a keyword named by its id: one index per kind.
INDEXES = ("active_jobs", "phases", "outputs")


def index_id(index: str, plural: str) -> str:
    """The id (and handler keyword) of ``index`` for the kind of ``plural``."""
    return f"{index}_{plural}"


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Register every job handler on ``registry``."""
    poll = reconciler.settings.poll_seconds
    for kind, cls in resources().items():
        plural = cls.plural

        @kopf.on.create(GROUP, VERSION, plural, registry=registry, id=f"accept-{plural}", param=kind)
        async def accept(body: kopf.Body, param: Any = None, **_: Any) -> None:
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
        async def tick(param: Any = None, namespace: str | None = None, **kwargs: Any) -> None:
            def active() -> set[str]:  # the namespace's active runs: a set as large as the namespace
                return {
                    run
                    for cls in resources().values()
                    for run in (kwargs.get(index_id("active_jobs", cls.plural)) or {}).get(namespace, [])
                }

            outputs = {name: kwargs.get(index_id("outputs", cls.plural)) for name, cls in resources().items()}
            await reconcile(
                reconciler,
                param,
                body=kwargs["body"],
                status=kwargs["status"],
                patch=kwargs["patch"],
                logger=kwargs["logger"],
                outputs=outputs,
                active=active,
            )
            if reconciler.phase_counts_due(param):  # a count over every job: not on every job's tick
                phases = kwargs.get(index_id("phases", resource_of(param).plural)) or {}
                reconciler.metrics.set_phase_counts(param, Counter(phases.get(param, [])))

        @kopf.on.delete(GROUP, VERSION, plural, registry=registry, id=f"finalize-{plural}", param=kind)
        async def finalize(
            body: kopf.Body, status: kopf.Status, logger: kopf.Logger, runtime: Any, retry: int, **_: Any
        ) -> None:
            await finalizer.on_delete(
                reconciler, body=body, status=status, logger=logger, runtime=runtime, retry=retry
            )

        on_index: dict[str, Callable[..., dict]] = {
            "active_jobs": index_active_jobs,
            "phases": index_phases,
            "outputs": index_outputs,
        }
        for index in INDEXES:
            kopf.index(GROUP, VERSION, plural, registry=registry, id=index_id(index, plural), param=kind)(
                on_index[index]
            )
