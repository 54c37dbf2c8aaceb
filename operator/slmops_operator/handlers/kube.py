"""The few Kubernetes API calls the operator makes itself (kopf makes the rest).

kopf logs in once (see :mod:`slmops_operator.runtime`); the login handler hands the
connection here too, so both talk to the same API server with the same credentials.
The calls: deleting a finished job whose ``ttlSecondsAfterFinished`` passed, and reading,
copying and deleting a job's Secrets (see :mod:`slmops_operator.credentials`).
"""

from __future__ import annotations

import base64
import ssl
from typing import Any

import aiohttp
import kopf


def _ca_text(data: str | bytes) -> str:
    """kopf's ConnectionInfo.ca_data as the text ``ssl`` takes: bytes are PEM; text is PEM or base64.

    A kubeconfig's ``certificate-authority-data`` arrives as base64 text (kopf decodes it the
    same way when it connects).
    """
    if isinstance(data, bytes):
        return data.decode()
    return data if data.startswith("-----BEGIN ") else base64.b64decode(data).decode("ascii")


class KubeApi:
    # (API group, resource, verb) of every call below: the RBAC rules must allow them.
    CALLS = frozenset(
        {
            ("slmops.io", "finetunejobs", "delete"),
            ("slmops.io", "optimizejobs", "delete"),
            ("", "secrets", "get"),  # a job's Secrets, in its namespace
        }
    )
    # Standalone KFP only: the run-owned copies of a job's Secrets, in the KFP namespace.
    COPY_CALLS = frozenset({("", "secrets", "create"), ("", "secrets", "update"), ("", "secrets", "delete")})

    def __init__(self) -> None:
        self.info: kopf.ConnectionInfo | None = None

    def remember(self, info: kopf.ConnectionInfo | None) -> kopf.ConnectionInfo | None:
        self.info = info
        return info

    def _ssl(self) -> ssl.SSLContext | bool:
        info = self.info
        if info is None or info.insecure:
            return False
        context = ssl.create_default_context(
            cafile=info.ca_path, cadata=_ca_text(info.ca_data) if info.ca_data else None
        )
        if info.certificate_path and info.private_key_path:
            context.load_cert_chain(info.certificate_path, info.private_key_path)
        return context

    def _headers(self) -> dict[str, str]:
        info = self.info
        if info is not None and info.scheme and info.token:
            return {"Authorization": f"{info.scheme} {info.token}"}
        return {}

    def _url(self, path: str) -> str:
        if self.info is None:
            raise kopf.TemporaryError("not logged in to the Kubernetes API yet", delay=5)
        return self.info.server.rstrip("/") + path

    async def get(self, path: str) -> dict | None:
        """GET ``path`` as JSON; None when it does not exist."""
        url = self._url(path)
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=self._headers(), ssl=self._ssl()) as response:
                if response.status == 404:
                    return None
                if response.status == 403:
                    raise PermissionError(f"GET {path}: forbidden for the operator's service account")
                if response.status != 200:
                    raise kopf.TemporaryError(
                        f"GET {path}: {response.status} {await response.text()}", delay=10
                    )
                return await response.json()

    async def apply(self, collection: str, name: str, body: dict) -> None:
        """Create ``body`` in ``collection``, or replace the object of that name (a retried call)."""
        async with aiohttp.ClientSession() as session:
            kwargs: dict[str, Any] = {"headers": self._headers(), "ssl": self._ssl(), "json": body}
            async with session.post(self._url(collection), **kwargs) as response:
                if response.status in (200, 201):
                    return
                if response.status != 409:
                    raise kopf.TemporaryError(
                        f"POST {collection}: {response.status} {await response.text()}", delay=10
                    )
            async with session.put(self._url(f"{collection}/{name}"), **kwargs) as response:
                if response.status not in (200, 201):
                    raise kopf.TemporaryError(
                        f"PUT {collection}/{name}: {response.status} {await response.text()}", delay=10
                    )

    async def delete(self, path: str) -> None:
        """DELETE ``path``; a 404 means it is gone already."""
        url = self._url(path)
        async with aiohttp.ClientSession() as session:
            async with session.delete(url, headers=self._headers(), ssl=self._ssl()) as response:
                if response.status not in (200, 202, 404):
                    raise kopf.TemporaryError(
                        f"DELETE {path}: {response.status} {await response.text()}", delay=10
                    )
