"""Argo CD: the Application, and the health checks run with Lua 5.1 semantics against every phase."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO

ARGOCD = REPO / "deploy" / "argocd"
SCRIPT = (ARGOCD / "health" / "job.lua").read_text()


def health(obj: dict) -> dict:
    from lupa import lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return {"status": result["status"], "message": result["message"]}


def job(
    phase: str | None = None, *, suspend: bool = False, generation: int = 1, observed: int = 1, **status
) -> dict:
    obj = {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "j", "generation": generation},
    }
    obj["spec"] = {"suspend": suspend}
    if phase:
        obj["status"] = {"phase": phase, "observedGeneration": observed, **status}
    return obj


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (job(), "Progressing"),
        (job("Pending"), "Progressing"),
        (job("Queued", message="1 of 1 jobs running"), "Progressing"),
        (job("Running", progress={"percent": 40}), "Progressing"),
        (job("Succeeded", message="done"), "Healthy"),
        (job("Failed", message="spec.dataset.uri: file not found"), "Degraded"),
        (job("Cancelled"), "Degraded"),
        (job("Running", suspend=True), "Suspended"),
        (job("Succeeded", generation=2, observed=1), "Progressing"),
    ],
)
def test_health_of_every_phase(obj, expected):
    assert health(obj)["status"] == expected


def test_messages_say_why():
    assert (
        health(job("Failed", message="spec.dataset.uri: file not found"))["message"]
        == "spec.dataset.uri: file not found"
    )
    assert (
        health(job("Running", progress={"percent": 40}, message="running on kfp"))["message"]
        == "Running (40%): running on kfp"
    )


def test_argocd_cm_embeds_the_same_script_for_both_kinds():
    data = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())["data"]
    for kind in ("FineTuneJob", "OptimizeJob"):
        assert data[f"resource.customizations.health.slmops.io_{kind}"] == SCRIPT


def test_the_application_installs_the_chart():
    app = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    assert app["kind"] == "Application" and app["spec"]["source"]["path"] == "charts/slmops"
    assert (REPO / app["spec"]["source"]["path"] / "Chart.yaml").exists()
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
