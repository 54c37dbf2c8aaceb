"""The operator's own API calls: on kopf's public login, kind's inline client certificate works, a 401 logs in again."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import aiohttp.web
import kopf
import pytest

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
    kube = KubeApi(login=lambda **_: kubeconfig_login(api_server))
    await kube.delete(PATH)
    await kube.close()
    assert api_server.calls == [("DELETE", PATH, "kubernetes-admin")]


async def test_a_401_logs_in_again_and_retries_the_call(api_server):
    """An expired token: the call logs in again (a rotated token is re-read) and succeeds."""
    logins = []

    def login(**_):
        logins.append(1)
        return kubeconfig_login(api_server)

    kube = KubeApi(login=login)
    api_server.unauthorized = 1
    await kube.delete(PATH)
    await kube.close()
    assert len(logins) == 2 and api_server.calls == [("DELETE", PATH, "kubernetes-admin")]


async def test_what_the_login_handler_got_is_used_and_errors_say_the_status(api_server):
    kube = KubeApi()
    with pytest.raises(kopf.TemporaryError, match="not logged in"):
        await kube.get("/api/v1/namespaces/team-a/secrets/x")
    kube.connect(kubeconfig_login(api_server))  # what build_operator's login handler does
    assert await kube.get("/api/v1/namespaces/team-a/secrets/x") == {"kind": "Status", "status": "Success"}
    api_server.unauthorized = 2
    with pytest.raises(kopf.TemporaryError, match="401"):
        await kube.get("/api/v1/namespaces/team-a/secrets/x")
    await kube.close()
