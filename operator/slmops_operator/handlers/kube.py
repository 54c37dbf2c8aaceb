"""The few Kubernetes API calls the operator makes itself (kopf makes the rest), through kopf's own client.

The calls: deleting a finished job whose ``ttlSecondsAfterFinished`` passed, and reading,
copying and deleting a job's Secrets (see :mod:`slmops_operator.credentials`).

They go through kopf's API client (``kopf._cogs.clients.api``), not a session of our own:
the same credentials vault as kopf's watches, so whatever kopf logged in with works here
too -- a kubeconfig's inline client certificate (``client-certificate-data``, kind's
default), a token, an in-cluster service account -- and a 401 makes kopf log in again, so
a rotated projected token is picked up.  kopf's client is internal API: kopf is pinned
below 2 in pyproject.toml, and ``tests/operator`` runs these calls against an API server.
Each call is tried once (no kopf backoffs): the reconciler has its own backoff, and a 403
on a Secret must fail the job now, not after a minute of retries.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kopf._cogs.clients import api, errors

_logger = logging.getLogger("slmops.kube")


class KubeApi:
    @staticmethod
    def calls() -> frozenset[tuple[str, str, str]]:
        """(API group, resource, verb) of every call below: the RBAC rules must allow them."""
        from slmops_pipelines import jobs

        deletes = {(kind.group, kind.plural, "delete") for kind in jobs.KINDS.values()}  # TTLs
        return frozenset({*deletes, ("", "secrets", "get")})  # a job's Secrets, in its namespace

    # Standalone KFP only: the run-owned copies of a job's Secrets, in the KFP namespace.
    COPY_CALLS = frozenset({("", "secrets", "create"), ("", "secrets", "update"), ("", "secrets", "delete")})

    def __init__(self, settings: kopf.OperatorSettings | None = None) -> None:
        self.settings = settings or kopf.OperatorSettings()

    async def _call(self, method: str, path: str, payload: object | None = None) -> Any:
        try:
            response = await api.request(
                method, path, payload=payload, settings=self.settings, backoffs=[], logger=_logger
            )
        except LookupError as exc:  # no credentials vault: called outside the operator's tasks
            raise kopf.TemporaryError("not logged in to the Kubernetes API yet", delay=5) from exc
        async with response:
            return await response.json() if response.content_length != 0 else None

    async def get(self, path: str) -> dict | None:
        """GET ``path`` as JSON; None when it does not exist."""
        try:
            return await self._call("get", path)
        except errors.APINotFoundError:
            return None
        except errors.APIForbiddenError as exc:
            raise PermissionError(f"GET {path}: forbidden for the operator's service account") from exc
        except errors.APIError as exc:
            raise kopf.TemporaryError(f"GET {path}: {exc.status} {exc}", delay=10) from exc

    async def apply(self, collection: str, name: str, body: dict) -> None:
        """Create ``body`` in ``collection``, or replace the object of that name (a retried call)."""
        try:
            await self._call("post", collection, body)
            return
        except errors.APIConflictError:
            pass
        except errors.APIError as exc:
            raise kopf.TemporaryError(f"POST {collection}: {exc.status} {exc}", delay=10) from exc
        try:
            await self._call("put", f"{collection}/{name}", body)
        except errors.APIError as exc:
            raise kopf.TemporaryError(f"PUT {collection}/{name}: {exc.status} {exc}", delay=10) from exc

    async def delete(self, path: str) -> None:
        """DELETE ``path``; a 404 means it is gone already."""
        try:
            await self._call("delete", path)
        except errors.APINotFoundError:
            return
        except errors.APIError as exc:
            raise kopf.TemporaryError(f"DELETE {path}: {exc.status} {exc}", delay=10) from exc
