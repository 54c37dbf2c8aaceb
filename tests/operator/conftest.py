"""The real operator (kopf) against the strict Kubernetes API emulator, over HTTP.

``kube`` serves the API; ``operator_factory`` builds an operator with the given settings
(and backend) and runs it as a task on the test's loop until the test ends -- or until the
test stops it, to start another one (a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import kmock
import kopf
import pytest
import pytest_asyncio

from slmops_operator.runtime import Operator, build_operator
from slmops_operator.settings import OperatorSettings
from tests.fixtures.fake_kfp import FakeKfp
from tests.fixtures.kube_emulator import StrictKubernetesEmulator, Webhook, declare_kserve, declare_slmops
from tests.fixtures.seaweedfs import free_ports
from tests.fixtures.webhook_tls import make_webhook_certs

API = "/apis/slmops.io/v1alpha1/namespaces"


def _no_keepalive(url):
    # kopf waits (5 s) on exit for every task started on its loop, the emulator's keep-alive
    # handlers for the test's own client included: closing connections ends them at once.
    return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(force_close=True))


@pytest_asyncio.fixture
async def kube() -> AsyncIterator[StrictKubernetesEmulator]:
    async with StrictKubernetesEmulator() as emulator, kmock.Server(emulator, client_fct=_no_keepalive):
        declare_slmops(emulator)
        declare_kserve(emulator)
        yield emulator


def webhook_settings(tmp_path: Path) -> dict:
    """The webhook on a free port, over HTTPS with its own CA (the emulated API server verifies it)."""
    return {
        "webhook_addr": "127.0.0.1",
        "webhook_port": free_ports(1)[0],
        "webhook_cert_dir": make_webhook_certs(tmp_path / "webhook-certs"),
        "webhook_insecure": False,
    }


def local_settings(tmp_path: Path, **overrides) -> OperatorSettings:
    return OperatorSettings(
        **{
            "backend": "local",
            "local_state_dir": tmp_path / "operator-state",
            "default_output": str(tmp_path / "outputs"),
            "poll_seconds": 0.3,
            "metrics_port": 0,
            **webhook_settings(tmp_path),
            **overrides,
        }
    )


@contextlib.asynccontextmanager
async def running_operator(
    kube, settings: OperatorSettings, *, liveness_endpoint: str | None = None, **kwargs
) -> AsyncIterator[Operator]:
    """The operator, running on the test's loop until the block ends.

    Use it in the test's body, not in a fixture: on exit kopf cancels every task started
    after it, and a fixture's finalizer is one.  Stopping goes through the stop flag: a
    cancelled ``kopf.operator`` would arm a SIGKILL of the whole process.
    """
    server = str(kube.url).rstrip("/")
    operator = build_operator(
        settings,
        login=lambda **_: kopf.ConnectionInfo(server=server, insecure=True, default_namespace="default"),
        serve_metrics=False,
        **kwargs,
    )
    if settings.webhook_port and not settings.webhook_insecure and kube.webhook is None:
        # The API server now sends every create and update of our resources to the webhook.
        kube.webhook = Webhook(
            url=f"https://127.0.0.1:{settings.webhook_port}", cafile=str(settings.webhook_cert_dir / "ca.crt")
        )
    ks = operator.kopf_settings
    ks.networking.request_timeout = 10
    ks.networking.error_backoffs = [0.1, 0.2, 0.5]
    ks.watching.connect_timeout = 2
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        operator.run(stop_flag=stop, ready_flag=ready, liveness_endpoint=liveness_endpoint)
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield operator
    finally:
        kube.webhook = None  # no operator, no webhook: as if its configuration were removed
        stop.set()
        await asyncio.wait_for(task, 60)
        # kopf installed SIGINT/SIGTERM handlers on the test's loop; give them back.
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(sig)


async def create(kube, namespace: str, plural: str, body: dict) -> dict:
    response = await kube.post(f"{API}/{namespace}/{plural}", json=body)
    assert response.status in (200, 201), await response.text()
    return await response.json()


async def create_secret(kube, namespace: str, name: str, data: dict[str, str]) -> None:
    """A Secret in ``namespace``, as ``kubectl create secret generic`` makes it."""
    import base64

    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    response = await kube.post(f"/api/v1/namespaces/{namespace}/secrets", json=body)
    assert response.status in (200, 201), await response.text()


def s3_secret_data(server) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_ENDPOINT_URL": server.endpoint_url,
        "AWS_REGION": server.region,
    }


async def patch(kube, namespace: str, plural: str, name: str, body: dict) -> dict:
    response = await kube.patch(
        f"{API}/{namespace}/{plural}/{name}",
        json=body,
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status == 200, await response.text()
    return await response.json()


async def delete(kube, namespace: str, plural: str, name: str) -> None:
    response = await kube.delete(f"{API}/{namespace}/{plural}/{name}")
    assert response.status in (200, 202), await response.text()


def current(kube, namespace: str, plural: str, name: str) -> dict | None:
    """The object as the API server holds it now (None once deleted)."""
    try:
        obj = kube.objects[f"slmops.io/v1alpha1/{plural}", namespace, name]
    except KeyError:
        return None
    return None if obj.deleted else obj.raw


def events(kube, namespace: str, name: str) -> list[dict]:
    found = []
    for (resource, ns, _n), obj in list(kube.objects.items()):
        if resource.plural == "events" and ns == namespace and not obj.deleted:
            if obj.raw.get("involvedObject", {}).get("name") == name:
                found.append(obj.raw)
    return found


async def wait_until(predicate, *, timeout: float = 120, interval: float = 0.2, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def serving(fake: FakeKfp) -> AsyncIterator[FakeKfp]:
    async with kmock.RawHandler() as handler, kmock.Server(handler, client_fct=_no_keepalive):
        fake.attach(handler)
        fake.url = str(handler.url).rstrip("/")
        yield fake


@pytest_asyncio.fixture
async def fake_kfp() -> AsyncIterator[FakeKfp]:
    async with serving(FakeKfp()) as fake:
        yield fake


@pytest_asyncio.fixture
async def multi_user_kfp() -> AsyncIterator[FakeKfp]:
    """KFP with Kubeflow profiles: every call must name a namespace, as the real API server wants."""
    async with serving(FakeKfp(multi_user=True)) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _kill_leftover_workers(tmp_path):
    """A failed test must not leave local-backend workers training in the background."""
    yield
    import json
    import os

    for state in (tmp_path / "operator-state").glob("*.state.json"):
        with contextlib.suppress(Exception):
            os.killpg(json.loads(state.read_text())["pid"], signal.SIGKILL)
