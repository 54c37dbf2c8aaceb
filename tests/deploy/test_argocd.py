"""Argo CD: the Application (its renders are all the same), and the health checks run with
Lua 5.1 semantics against every phase."""

from __future__ import annotations

import copy
import subprocess

import pytest
import yaml

from tests.conftest import REPO
from tests.deploy.test_chart import CHART, helm, of_kind

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


def application() -> dict:
    return yaml.safe_load((ARGOCD / "application.yaml").read_text())


def argocd_render(values: dict, tmp_path, name: str = "values.yaml") -> str:
    """`helm template` as Argo CD runs it: the Application's release name, namespace and values
    (no cluster, so `lookup` finds nothing)."""
    app = application()
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    proc = subprocess.run(
        [
            helm(),
            "template",
            app["spec"]["source"]["helm"]["releaseName"],
            str(CHART),
            "--namespace",
            app["spec"]["destination"]["namespace"],
            "--values",
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_two_renders_of_the_application_are_byte_identical(tmp_path):
    values = application()["spec"]["source"]["helm"]["valuesObject"]
    assert values["webhook"]["certManager"]["enabled"] is True
    first, second = argocd_render(values, tmp_path, "a.yaml"), argocd_render(values, tmp_path, "b.yaml")
    assert first == second


def test_the_application_renders_a_cert_manager_certificate(tmp_path):
    app = application()
    namespace = app["spec"]["destination"]["namespace"]
    docs = [
        d
        for d in yaml.safe_load_all(argocd_render(app["spec"]["source"]["helm"]["valuesObject"], tmp_path))
        if d
    ]
    [certificate] = of_kind(docs, "Certificate")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    [config] = of_kind(docs, "ValidatingWebhookConfiguration")
    annotations = config["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == f"{namespace}/{certificate['metadata']['name']}"
    assert all("caBundle" not in w["clientConfig"] for w in config["webhooks"])  # the injector's field
    [deployment] = of_kind(docs, "Deployment")
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "webhook-tls"]
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert not of_kind(docs, "Secret")  # cert-manager writes it, not the chart


def test_the_application_ignores_the_injected_ca_bundle():
    spec = application()["spec"]
    [ignored] = [
        d
        for d in spec["ignoreDifferences"]
        if d["group"] == "admissionregistration.k8s.io" and d["kind"] == "ValidatingWebhookConfiguration"
    ]
    assert ignored["jqPathExpressions"] == [".webhooks[]?.clientConfig.caBundle"]
    assert "RespectIgnoreDifferences=true" in spec["syncPolicy"]["syncOptions"]


def test_the_self_signed_mode_is_not_for_argocd(tmp_path):
    """Without `lookup` the self-signed mode makes a new CA on every render (docs/install.md
    warns of it): a new Secret, caBundle and checksum, so an operator restart per sync."""
    values = copy.deepcopy(application()["spec"]["source"]["helm"]["valuesObject"])
    values["webhook"]["certManager"]["enabled"] = False
    first, second = (
        [d for d in yaml.safe_load_all(argocd_render(values, tmp_path, f"{n}.yaml")) if d] for n in "ab"
    )
    assert first != second
    [secret_a], [secret_b] = of_kind(first, "Secret"), of_kind(second, "Secret")
    assert secret_a["data"]["ca.crt"] != secret_b["data"]["ca.crt"]
    checksums = [
        of_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]["checksum/webhook"]
        for docs in (first, second)
    ]
    assert checksums[0] != checksums[1]
