"""What the Deployment's probes and Prometheus read."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from slmops_operator.settings import OperatorSettings
from tests.fixtures.seaweedfs import free_ports
from tests.operator.conftest import local_settings, running_operator


async def test_liveness_endpoint_answers(kube, tmp_path):
    port = free_ports(1)[0]
    async with running_operator(
        kube, local_settings(tmp_path), liveness_endpoint=f"http://127.0.0.1:{port}/healthz"
    ):
        for _ in range(100):
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{port}/healthz") as r,
                ):
                    assert r.status == 200
                    json.loads(await r.text())
                    return
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.1)
    pytest.fail("the liveness endpoint never answered")


def test_settings_come_from_the_environment_and_flags_win():
    env = {
        "SLMOPS_BACKEND": "local",
        "SLMOPS_NAMESPACES": "team-a, team-b",
        "SLMOPS_MAX_RUNNING_PER_NAMESPACE": "3",
        "SLMOPS_DELETE_ARTIFACTS": "true",
        "SLMOPS_POLL_SECONDS": "2.5",
    }
    settings = OperatorSettings.from_env(env, max_running_per_namespace=5)
    assert settings.backend == "local" and settings.namespaces == ["team-a", "team-b"]
    assert settings.max_running_per_namespace == 5 and settings.delete_artifacts is True
    assert settings.poll_seconds == 2.5
    with pytest.raises(ValueError, match="backend"):
        OperatorSettings.from_env({"SLMOPS_BACKEND": "spark"})
