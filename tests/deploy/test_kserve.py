"""What slmops gives KServe: the chart's ClusterServingRuntime and example 13's InferenceService.

Both are admitted as KServe's API server would admit them (the fields we set, with KServe's
schema: tests/fixtures/kserve), and the runtime runs what the server image holds.
"""

from __future__ import annotations

import copy

import yaml

from tests.conftest import REPO
from tests.deploy.test_chart import of_kind, render
from tests.fixtures.crd_validation import CrdAdmission

FIXTURES = REPO / "tests" / "fixtures" / "kserve"


def admission(name: str) -> CrdAdmission:
    return CrdAdmission(yaml.safe_load((FIXTURES / f"{name}.yaml").read_text()))


def admitted_unchanged(crd: CrdAdmission, obj: dict) -> None:
    """No error, and nothing pruned: every field we set is one KServe declares."""
    assert crd.errors(obj) == []
    assert crd.prune(copy.deepcopy(obj)) == obj


def test_the_chart_ships_the_runtime_only_when_asked():
    assert not of_kind(render(), "ClusterServingRuntime")
    [runtime] = of_kind(render("--set", "kserve.enabled=true"), "ClusterServingRuntime")
    admitted_unchanged(admission("clusterservingruntimes"), runtime)
    spec = runtime["spec"]
    assert runtime["metadata"]["name"] == "slmops-onnxruntime-genai"
    assert spec["supportedModelFormats"][0]["name"] == "onnxruntime-genai"
    [container] = spec["containers"]
    assert container["args"][:2] == [
        "serve",
        "/mnt/models",
    ]  # KServe's storage initializer puts the target there
    assert "--name={{.Name}}" in container["args"]  # the InferenceService's name is the base model's id
    assert container["image"].startswith("ghcr.io/slmops/slmops-server:")
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_the_runtime_image_can_be_pinned():
    digest = "sha256:" + "a" * 64
    [runtime] = of_kind(
        render("--set", "kserve.enabled=true", "--set", f"kserve.image.digest={digest}"),
        "ClusterServingRuntime",
    )
    assert runtime["spec"]["containers"][0]["image"].endswith(f"@{digest}")


def test_example_13_is_an_inference_service_kserve_admits_for_the_runtime():
    docs = [d for d in yaml.safe_load_all((REPO / "examples" / "13-serve-kserve.yaml").read_text()) if d]
    [isvc] = [d for d in docs if d["kind"] == "InferenceService"]
    admitted_unchanged(admission("inferenceservices"), isvc)
    model = isvc["spec"]["predictor"]["model"]
    assert (
        model["modelFormat"]["name"] == "onnxruntime-genai" and model["runtime"] == "slmops-onnxruntime-genai"
    )
    assert model["storageUri"].endswith("/targets/cpu-int4-adapter")
    [account] = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert isvc["spec"]["predictor"]["serviceAccountName"] == account["metadata"]["name"]


def test_the_server_image_serves_without_torch():
    text = (REPO / "images" / "server" / "Dockerfile").read_text()
    assert '"/src[serve]"' in text and "! pip show torch" in text
    assert 'ENTRYPOINT ["slmops"]' in text


def test_with_kserve_the_operator_may_make_inference_services_and_only_then():
    from slmops_operator.handlers.kube import KubeApi
    from slmops_operator.permissions import operator_rules, serving_rules
    from tests.deploy.test_chart import normalized

    [cluster_role] = of_kind(render("--set", "kserve.enabled=true"), "ClusterRole")
    expected = operator_rules(clusterwide=True) + serving_rules()
    assert normalized(cluster_role["rules"]) == normalized(expected)
    for group, resource, verb in KubeApi.SERVING_CALLS:
        assert ((group,), resource, verb) in normalized(serving_rules())
    assert "delete" not in {verb for _, _, verb in normalized(serving_rules())}  # the job owns it: GC deletes
    [without] = of_kind(render(), "ClusterRole")
    assert not [r for r in without["rules"] if "serving.kserve.io" in r["apiGroups"]]
