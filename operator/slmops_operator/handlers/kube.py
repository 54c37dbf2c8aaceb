"""The few Kubernetes API calls the operator makes itself (kopf makes the rest).

kopf logs in once (see :mod:`slmops_operator.runtime`); the login handler hands the
connection here too, so both talk to the same API server with the same credentials.
Today that is one call: deleting a finished job whose ``ttlSecondsAfterFinished`` passed.
"""

from __future__ import annotations

import ssl

import aiohttp
import kopf


class KubeApi:
    # (API group, resource, verb) of every call below: the RBAC rules must allow them.
    CALLS = frozenset({("slmops.io", "finetunejobs", "delete"), ("slmops.io", "optimizejobs", "delete")})

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
            cafile=info.ca_path, cadata=info.ca_data and info.ca_data.decode()
        )
        if info.certificate_path and info.private_key_path:
            context.load_cert_chain(info.certificate_path, info.private_key_path)
        return context

    def _headers(self) -> dict[str, str]:
        info = self.info
        if info is not None and info.scheme and info.token:
            return {"Authorization": f"{info.scheme} {info.token}"}
        return {}

    async def delete(self, path: str) -> None:
        """DELETE ``path``; a 404 means it is gone already."""
        if self.info is None:
            raise kopf.TemporaryError("not logged in to the Kubernetes API yet", delay=5)
        url = self.info.server.rstrip("/") + path
        async with aiohttp.ClientSession() as session:
            async with session.delete(url, headers=self._headers(), ssl=self._ssl()) as response:
                if response.status not in (200, 202, 404):
                    raise kopf.TemporaryError(
                        f"DELETE {path}: {response.status} {await response.text()}", delay=10
                    )
