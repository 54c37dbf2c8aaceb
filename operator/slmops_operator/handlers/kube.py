"""The few Kubernetes API calls the operator makes itself (kopf makes the rest), on kopf's public login.

The calls: deleting a finished job whose ``ttlSecondsAfterFinished`` passed, reading,
copying and deleting a job's Secrets (see :mod:`slmops_operator.credentials`), and making
the InferenceService a job's ``spec.serve`` asks for (see :mod:`.serving`).

They use the credentials the operator's login gives kopf (a :class:`kopf.ConnectionInfo`
from ``kopf.login_with_service_account`` or ``kopf.login_with_kubeconfig``: a kubeconfig's
inline client certificate, kind's default, a token, an in-cluster service account) and the
public methods of that class to build the session (``as_ssl_context``, ``as_http_headers``,
``as_aiohttp_basic_auth``): nothing of kopf's internal client.  A 401 logs in again once
(a rotated projected token is re-read) and retries the call.  Each call is otherwise tried
once: the reconciler has its own backoff, and a 403 on a Secret must fail the job now, not
after a minute of retries.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable
from typing import Any

import aiohttp
import kopf

_logger = logging.getLogger("slmops.kube")

Login = Callable[..., "kopf.ConnectionInfo | None"]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class KubeApi:
    @staticmethod
    def calls() -> frozenset[tuple[str, str, str]]:
        """(API group, resource, verb) of every call below: the RBAC rules must allow them."""
        from slmops_pipelines import jobs

        deletes = {(kind.group, kind.plural, "delete") for kind in jobs.KINDS.values()}  # TTLs
        return frozenset({*deletes, ("", "secrets", "get")})  # a job's Secrets, in its namespace

    # Only where the chart's kserve.enabled: the InferenceService of a job's spec.serve
    # (handlers/serving.py), in the job's namespace.
    SERVING_CALLS = frozenset(
        {
            ("serving.kserve.io", "inferenceservices", "get"),
            ("serving.kserve.io", "inferenceservices", "create"),
            ("serving.kserve.io", "inferenceservices", "patch"),
        }
    )

    # Standalone KFP only: the run-owned copies of a job's Secrets, in the KFP namespace.
    # Each write is checked first (get): the operator replaces or deletes only a copy it made.
    COPY_CALLS = frozenset(
        {
            ("", "secrets", "get"),
            ("", "secrets", "create"),
            ("", "secrets", "patch"),
            ("", "secrets", "delete"),
        }
    )

    def __init__(self, login: Login | None = None) -> None:
        self.login = login
        self.info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stale: list[aiohttp.ClientSession] = []  # sessions of older credentials, to close

    def connect(self, info: kopf.ConnectionInfo | None) -> None:
        """Use ``info`` from now on (the login handler hands over what it gives kopf)."""
        if info is not None and info is not self.info:
            if self._session is not None:
                self._stale.append(self._session)
            self.info, self._session = info, None

    async def _login(self) -> kopf.ConnectionInfo:
        if self.login is None:
            raise kopf.TemporaryError("not logged in to the Kubernetes API yet", delay=5)
        info = await asyncio.to_thread(self.login, logger=_logger)
        if info is None:
            raise kopf.TemporaryError(
                "no Kubernetes credentials found (service account, KUBECONFIG)", delay=10
            )
        self.connect(info)
        return info

    async def session(self) -> tuple[aiohttp.ClientSession, str]:
        info = self.info or await self._login()
        while self._stale:
            await self._stale.pop().close()
        if self._session is None or self._session.closed:
            with warnings.catch_warnings():  # aiohttp warns that BasicAuth is deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                auth = info.as_aiohttp_basic_auth()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
                headers=info.as_http_headers(),
                auth=auth,
            )
        return self._session, info.server.rstrip("/")

    async def _call(
        self, method: str, path: str, payload: object | None = None, *, content_type: str | None = None
    ) -> Any:
        headers = {"Content-Type": content_type} if content_type else None
        for attempt in (1, 2):
            session, server = await self.session()
            try:
                async with session.request(method, server + path, json=payload, headers=headers) as response:
                    body = await response.json(content_type=None) if response.content_length != 0 else None
            except aiohttp.ClientError as exc:
                raise ApiError(0, f"{type(exc).__name__}: {exc}") from exc
            if response.status == 401 and attempt == 1 and self.login is not None:
                await self._login()  # an expired token: log in again, once
                continue
            if response.status >= 400:
                message = (body or {}).get("message") if isinstance(body, dict) else None
                raise ApiError(response.status, message or response.reason or str(response.status))
            return body
        raise ApiError(401, "unauthorized after logging in again")

    async def close(self) -> None:
        for session in [*self._stale, *([self._session] if self._session else [])]:
            await session.close()
        self._stale, self._session = [], None

    async def get(self, path: str) -> dict | None:
        """GET ``path`` as JSON; None when it does not exist."""
        try:
            return await self._call("get", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise PermissionError(f"GET {path}: forbidden for the operator's service account") from exc
            raise kopf.TemporaryError(f"GET {path}: {exc.status} {exc}", delay=10) from exc

    async def create(self, collection: str, body: dict) -> bool:
        """POST ``body`` into ``collection``; False when an object of that name exists (409)."""
        try:
            await self._call("post", collection, body)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise kopf.TemporaryError(f"POST {collection}: {exc.status} {exc}", delay=10) from exc
        return True

    async def merge(self, path: str, patch: dict) -> None:
        """A JSON merge patch (with the ``resourceVersion`` it was checked at: a conflict is retried)."""
        try:
            await self._call("patch", path, patch, content_type="application/merge-patch+json")
        except ApiError as exc:
            raise kopf.TemporaryError(f"PATCH {path}: {exc.status} {exc}", delay=10) from exc

    async def delete(self, path: str, *, uid: str | None = None) -> None:
        """DELETE ``path``; a 404 means it is gone already.  ``uid``: only that object (a precondition)."""
        options = {"preconditions": {"uid": uid}} if uid else None
        try:
            await self._call("delete", path, options)
        except ApiError as exc:
            if exc.status == 404:
                return
            raise kopf.TemporaryError(f"DELETE {path}: {exc.status} {exc}", delay=10) from exc
