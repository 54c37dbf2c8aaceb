"""The finalizer: what deleting a job does, and the bound on how long it may take.

Deleting a FineTuneJob or OptimizeJob (``kubectl delete``, a TTL, Argo CD's prune) runs
:func:`on_delete` before the object goes:

1. its run is cancelled (a run that is already gone counts as cancelled), which also
   releases the run's Secret copies (:mod:`slmops_operator.credentials`);
2. with ``SLMOPS_DELETE_ARTIFACTS``, the output the job owns is deleted -- only when its
   claim names the job's uid, never another job's output or the operator's own roots.

A step that fails (KFP down, S3 refusing a delete) is retried with backoff; after
``SLMOPS_FINALIZER_TIMEOUT`` seconds the finalizer is released all the same, with a
Warning Event ``CleanupIncomplete`` naming what was left behind, so that no object is
stuck Terminating for ever.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import kopf

from slmops_operator import policy
from slmops_operator.api.resources import Resource, resource_of
from slmops_operator.api.status import RunRef
from slmops_operator.backends.base import status_run
from slmops_operator.credentials import MissingCredentials, output_access
from slmops_operator.handlers.conditions import FINISHED
from slmops_operator.handlers.reconciler import Reconciler, backoff
from slmops_operator.settings import OperatorSettings
from slmops_pipelines.jobs import S3Credentials


async def on_delete(
    reconciler: Reconciler,
    *,
    body: kopf.Body,
    status: kopf.Status,
    logger: kopf.Logger,
    runtime: datetime.timedelta | None = None,
    retry: int = 0,
) -> None:
    """Cancel the run and delete what the job owns; give up (loudly) after the timeout."""
    current: dict[str, Any] = dict(status or {})
    left: list[str] = []
    resource = _resource(body)  # None: an object of an older, looser release, or refused before it ran
    request = _request(reconciler, resource, body, current)
    if request is not None and current.get("phase") not in FINISHED:
        # The run the operator names for this job's attempt, never status.run as written.
        run = status_run(current, request.run_name) or RunRef(name=request.run_name)
        try:
            await reconciler.backend.cancel(run, request)
            logger.info(f"cancelled run {request.run_name}")
        except Exception as exc:  # KFP down, a 500: retried below
            left.append(f"run {request.run_name} not cancelled ({type(exc).__name__}: {exc})")
        reconciler.release_slot(_namespace(body), request.run_name)
    if reconciler.settings.delete_artifacts:
        left += await _delete_artifacts(reconciler, resource, body, logger)
    if not left:
        return
    waited = runtime.total_seconds() if runtime is not None else 0.0
    summary = "; ".join(left)[:900]
    if waited < reconciler.settings.finalizer_timeout:
        delay = backoff(retry, reconciler.settings.poll_seconds)
        raise kopf.TemporaryError(f"cleanup incomplete, retrying: {summary}", delay=delay)
    kopf.event(
        body,
        type="Warning",
        reason="CleanupIncomplete",
        message=f"released after {waited:.0f}s (SLMOPS_FINALIZER_TIMEOUT); left behind: {summary}",
    )
    logger.warning(f"finalizer released with cleanup incomplete: {summary}")


def _resource(body: kopf.Body) -> Resource | None:
    try:
        return resource_of(body.get("kind", "")).model_validate(dict(body))
    except Exception:  # an object of an older, looser release, or one refused before it ran
        return None


def _request(reconciler: Reconciler, resource: Resource | None, body: kopf.Body, status: dict[str, Any]):
    """The job's current attempt as a backend request; None for a job that never had a run."""
    if resource is None or not (status.get("run") or {}).get("name"):
        return None
    try:
        return reconciler.request(
            resource, body.get("metadata") or {}, attempt=int(status.get("runAttempt") or 1)
        )
    except Exception:  # no output location could be resolved: it never ran
        return None


def _namespace(body: kopf.Body) -> str:
    return (body.get("metadata") or {}).get("namespace") or "default"


async def _delete_artifacts(
    reconciler: Reconciler, resource: Resource | None, body: kopf.Body, logger: kopf.Logger
) -> list[str]:
    """Delete the output the job owns: the location its spec resolves to, never ``status.artifacts``
    (anyone who may patch ``*/status`` writes that), with the job's own keys (see output_access)."""
    if resource is None:  # an invalid object never ran: nothing to delete
        return []
    try:
        uri = reconciler.output_uri(resource)
    except Exception:  # no output location: nothing was written
        return []
    try:
        secrets = await reconciler.credentials.resolve(resource.namespace, resource.spec)
    except MissingCredentials as exc:
        kopf.event(body, type="Normal", reason="ArtifactsKept", message=f"{uri}: not deleted, {exc}"[:1024])
        return []
    access = output_access(uri, resource.namespace, secrets, reconciler.settings)
    if access.credentials is None:
        kopf.event(
            body,
            type="Normal",
            reason="ArtifactsKept",
            message=f"{uri}: not deleted, {access.why_not}"[:1024],
        )
        return []
    uid = (body.get("metadata") or {}).get("uid") or ""
    try:
        cleanup = await asyncio.to_thread(
            delete_owned_artifacts,
            uri,
            uid,
            reconciler.settings,
            namespace=resource.namespace,
            credentials=access.credentials,
        )
    except Exception as exc:  # S3 refusing the delete, unreachable: retried
        return [f"artifacts under {uri} not deleted ({type(exc).__name__}: {exc})"]
    logger.info(f"deleted {cleanup.deleted} artifact object(s) under {uri}")
    if cleanup.kept:
        kopf.event(body, type="Normal", reason="ArtifactsKept", message="; ".join(cleanup.kept)[:1024])
    return []


def delete_owned_artifacts(
    uri: str,
    uid: str,
    settings: OperatorSettings,
    *,
    namespace: str | None = None,
    credentials: S3Credentials | None = None,
):
    """Delete the output at ``uri`` if this job (``uid``) claimed it; never the operator's own roots,
    nor another namespace's slot of the default output root."""
    from slmops_pipelines.jobs import Cleanup, delete_owned_output

    refused = policy.output_problems(
        uri, settings.model_copy(update={"backend": "local"}), namespace=namespace
    )
    if refused:  # an output of an older release, or admitted without the webhook
        return Cleanup(kept=[f"{uri}: not deleted, {problem.split(': ', 1)[1]}" for problem in refused])
    return delete_owned_output(uri, uid=uid, credentials=credentials)
