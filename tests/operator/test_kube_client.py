"""The operator's own API calls use kopf's client: kind's inline client certificate works, a 401 logs in again."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import aiohttp.web
import kopf
import pytest
from kopf._cogs.clients import auth
from kopf._cogs.structs import credentials

from slmops_operator.handlers.kube import KubeApi
from tests.fixtures.webhook_tls import make_webhook_certs

PATH = "/apis/slmops.io/v1alpha1/namespaces/team-a/finetunejobs/expired"


class ApiServer:
    """An HTTPS API server that requires a client certificate (as kind's does) and records who called."""

    def __init__(self, certs: Path) -> None:
        self.certs, self.calls, self.unauthorized = certs, [], 0

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        if self.unauthorized:  # an expired token: 401 until the client logs in again
            self.unauthorized -= 1
            return aiohttp.web.json_response({"kind": "Status", "code": 401}, status=401)
        peer = request.transport.get_extra_info("peercert") or {}
        subject = dict(item for rdn in peer.get("subject", ()) for item in rdn)
        self.calls.append((request.method, request.path, subject.get("commonName")))
        return aiohttp.web.json_response({"kind": "Status", "status": "Success"})

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.certs / "ca.crt"))
        context.load_cert_chain(self.certs / "tls.crt", self.certs / "tls.key")
        context.verify_mode = ssl.CERT_REQUIRED
        return context


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture
async def api_server(tmp_path):
    server = ApiServer(make_webhook_certs(tmp_path / "certs"))
    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server.ssl_context())
    await site.start()
    server.url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    yield server
    await runner.cleanup()


def kubeconfig_login(server: ApiServer) -> kopf.ConnectionInfo:
    """What kopf reads from kind's kubeconfig: inline CA, client certificate and key, all base64."""
    return kopf.ConnectionInfo(
        server=server.url,
        ca_data=b64(server.certs / "ca.crt"),
        certificate_data=b64(server.certs / "client.crt"),
        private_key_data=b64(server.certs / "client.key"),
    )


async def test_a_ttl_deletion_authenticates_with_an_inline_client_certificate(api_server):
    vault = credentials.Vault()
    await vault.populate({"kubeconfig": kubeconfig_login(api_server)})
    auth.vault_var.set(vault)
    await KubeApi().delete(PATH)
    assert api_server.calls == [("DELETE", PATH, "kubernetes-admin")]


async def test_a_401_invalidates_the_credentials_and_the_call_waits_for_new_ones(api_server):
    """kopf's vault: the credentials that got a 401 are dropped; the call resumes with fresh ones."""
    import asyncio

    vault = credentials.Vault()
    await vault.populate({"stale": kubeconfig_login(api_server)})
    auth.vault_var.set(vault)
    api_server.unauthorized = 1
    call = asyncio.create_task(KubeApi().delete(PATH))
    await asyncio.sleep(0.5)
    assert not call.done()  # waiting for a login, as kopf's own watches would
    await vault.populate({"fresh": kubeconfig_login(api_server)})  # what kopf's re-login does
    await asyncio.wait_for(call, timeout=10)
    assert api_server.calls == [("DELETE", PATH, "kubernetes-admin")]
