"""The Helm chart: lint, render in every mode, validate the manifests, and keep RBAC honest."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slmops_operator.api.resources import GROUP, resources
from slmops_operator.handlers.kube import KubeApi
from slmops_operator.permissions import operator_rules, secret_copy_rules
from slmops_operator.runtime import build_operator
from slmops_operator.settings import OperatorSettings
from tests.conftest import REPO

CHART = REPO / "charts" / "slmops"
VARIANTS = {
    "default": [],
    "namespaced": ["--set", "watchNamespaces={team-a,team-b}"],
    "cert-manager": [
        "--set",
        "webhook.certManager.enabled=true",
        "--set",
        "metrics.serviceMonitor.enabled=true",
    ],
    "local-backend": ["--set", "backend=local", "--set", "kfp.auth=none", "--set", "webhook.enabled=false"],
    "pipeline-runner": ["--set", "pipelineRunner.rbac=true", "--set", "s3.credentialsSecret=s3"],
    "kserve": ["--set", "kserve.enabled=true"],
}


def helm() -> str:
    found = Path(sys.executable).parent / "helm"
    path = str(found) if found.exists() else shutil.which("helm")
    assert path, "helm is missing: scripts/setup.sh installs it (scripts/fetch_helm.sh)"
    return path


def render(*args: str) -> list[dict]:
    proc = subprocess.run(
        [helm(), "template", "slmops", str(CHART), "--namespace", "slmops-system", *args],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_lint_strict():
    proc = subprocess.run([helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# The oldest Kubernetes the chart claims (Chart.yaml kubeVersion, docs/install.md) and the newest
# whose schemas kubernetes-validate ships: a manifest valid on both is valid in between.
OLDEST, NEWEST = "1.28", "1.37"


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_manifests_pass_strict_validation(variant, version):
    import kubernetes_validate

    docs = render(*VARIANTS[variant], "--kube-version", f"{version}.0")
    for doc in docs:
        if doc["apiVersion"].startswith(("cert-manager.io/", "monitoring.coreos.com/", "serving.kserve.io/")):
            continue  # CRDs of other projects: no schema offline (KServe's: tests/deploy/test_kserve.py)
        kubernetes_validate.validate(doc, version, strict=True)


def test_values_schema_refuses_bad_values():
    proc = subprocess.run(
        [helm(), "template", "x", str(CHART), "--set", "image.tag=latest"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "image" in proc.stderr


def test_crds_are_the_generated_ones_and_come_first():
    for path in sorted((REPO / "crds").glob("*.yaml")):
        assert (CHART / "files" / "crds" / path.name).read_text() == path.read_text(), path.name
    crds = of_kind(render(), "CustomResourceDefinition")
    assert {c["metadata"]["name"] for c in crds} == {f"{cls.plural}.{GROUP}" for cls in resources().values()}
    for crd in crds:
        assert crd["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_the_deployment_is_one_hardened_replica():
    [deployment] = of_kind(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["image"] == "ghcr.io/slmops/slmops-operator:0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    settings = set(OperatorSettings.model_fields)
    for name in env:
        if name.startswith("SLMOPS_"):
            assert name.removeprefix("SLMOPS_").lower() in settings, name  # every variable is a setting


def test_the_tenancy_values_reach_the_operator(tmp_path):
    """A platform team's allow-list, written as Helm values, is what the operator's policy reads."""
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "tenancy": {
                    "allow": {
                        "team-a": {"serviceAccounts": ["trainer"], "claims": ["data"]},
                        "*": {"imagePullSecrets": ["registry"]},
                    },
                    "allowTrustRemoteCode": True,
                }
            }
        )
    )
    [deployment] = of_kind(render("-f", str(values)), "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = OperatorSettings.from_env(env)
    allowed = settings.allowance("team-a")
    assert (allowed.service_accounts, allowed.claims, allowed.image_pull_secrets) == (
        ["trainer"],
        ["data"],
        ["registry"],
    )
    assert settings.allowance("team-b").service_accounts == [] and settings.allow_trust_remote_code
    [default] = of_kind(render(), "Deployment")
    env = {
        e["name"]: e["value"]
        for e in default["spec"]["template"]["spec"]["containers"][0]["env"]
        if "value" in e
    }
    assert OperatorSettings.from_env(env).tenant_allow == {}  # nothing allowed unless listed


def normalized(rules: list[dict]) -> set[tuple]:
    return {
        (tuple(r["apiGroups"]), res, verb) for r in rules for res in r["resources"] for verb in r["verbs"]
    }


def test_rbac_is_exactly_what_the_operator_needs():
    [cluster_role] = of_kind(render(), "ClusterRole")
    assert normalized(cluster_role["rules"]) == normalized(operator_rules(clusterwide=True))
    roles = [
        r
        for r in of_kind(render(*VARIANTS["namespaced"]), "Role")
        if "run-secrets" not in r["metadata"]["name"]
    ]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert normalized(role["rules"]) == normalized(operator_rules(clusterwide=False))
    assert not of_kind(render(*VARIANTS["namespaced"]), "ClusterRole")


def test_the_rules_cover_every_handler_and_call(tmp_path):
    allowed = normalized(operator_rules(clusterwide=False))
    operator = build_operator(
        OperatorSettings(backend="local", local_state_dir=tmp_path, metrics_port=0, webhook_insecure=True),
        serve_metrics=False,
    )
    handlers = [
        *operator.registry._spawning.get_all_handlers(),
        *operator.registry._changing.get_all_handlers(),
    ]
    handlers += operator.registry._indexing.get_all_handlers()
    assert handlers
    for handler in handlers:
        plural = handler.selector.plural or handler.selector.any_name  # kopf keeps a positional name here
        for verb in ("get", "list", "watch", "patch"):
            assert (("slmops.io",), plural, verb) in allowed, (plural, verb)
        assert (("slmops.io",), f"{plural}/status", "patch") in allowed
    for group, resource, verb in KubeApi.calls():
        assert ((group,), resource, verb) in allowed
    assert (("",), "events", "create") in allowed  # kopf.event() for every transition
    copies = normalized(secret_copy_rules())
    for group, resource, verb in KubeApi.COPY_CALLS:
        assert ((group,), resource, verb) in copies


def test_secret_copies_are_allowed_only_in_the_kfp_namespace():
    """Standalone KFP: the run-owned copies; multi-user KFP and the local backend copy nothing."""
    [role] = [
        r
        for r in of_kind(render("--set", "kfp.namespace=pipelines"), "Role")
        if "run-secrets" in r["metadata"]["name"]
    ]
    assert role["metadata"]["namespace"] == "pipelines"
    assert normalized(role["rules"]) == normalized(secret_copy_rules())
    for variant in (["--set", "kfp.multiUser=true"], VARIANTS["local-backend"]):
        assert not [r for r in of_kind(render(*variant), "Role") if "run-secrets" in r["metadata"]["name"]]


def test_webhook_paths_are_the_operators_handler_ids():
    [config] = of_kind(render(), "ValidatingWebhookConfiguration")
    paths = {w["clientConfig"]["service"]["path"] for w in config["webhooks"]}
    assert paths == {f"/validate-{cls.plural}" for cls in resources().values()}
    [secret] = of_kind(render(), "Secret")
    assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"])


def test_pipeline_runner_may_run_multi_node_training():
    roles = [
        r
        for r in of_kind(render(*VARIANTS["pipeline-runner"]), "Role")
        if "distributed" in r["metadata"]["name"]
    ]
    [role] = roles
    assert normalized(role["rules"]) == {
        (("kubeflow.org",), "pytorchjobs", v) for v in ("get", "create", "delete")
    } | {(("trainer.kubeflow.org",), "trainjobs", v) for v in ("get", "create", "delete")}


# -- what people read: names, notes, the values table ----------------------------------------


def test_full_name_override_names_every_object():
    docs = render("--set", "fullnameOverride=ml-ops")
    names = {d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "ServiceAccount", "Service")}
    assert names and all(name.startswith("ml-ops") for name in names), names
    [deployment] = of_kind(docs, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "slmops"


def test_name_override_changes_the_name_label():
    [deployment] = of_kind(render("--set", "nameOverride=trainer-ops"), "Deployment")
    assert deployment["metadata"]["name"] == "slmops-trainer-ops"
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "trainer-ops"


def test_security_contexts_come_from_values():
    [deployment] = of_kind(render("--set", "podSecurityContext.runAsUser=20002"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 20002 and pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def render_notes(tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it (helm template leaves it out: render it through tpl)."""
    chart = tmp_path / "slmops"
    shutil.copytree(CHART, chart)
    (chart / "files" / "NOTES.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ tpl (.Files.Get "files/NOTES.txt") . | quote }}}\n'
    )
    proc = subprocess.run(
        [helm(), "template", "slmops", str(chart), "--namespace", "slmops-system", *args],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    [notes] = [d for d in yaml.safe_load_all(proc.stdout) if d and d["metadata"]["name"] == "notes"]
    return notes["data"]["notes"]


def test_the_notes_say_what_was_installed_and_how_to_run_a_job(tmp_path):
    notes = render_notes(tmp_path, "--set", "kfp.host=http://kfp.example:8888")
    assert "installed as slmops in slmops-system" in notes
    assert "backend kfp" in notes and "http://kfp.example:8888" in notes
    assert "kubectl -n slmops-system rollout status deployment/slmops" in notes
    assert "kubectl apply -f deploy/kind/finetune-smollm2.yaml" in notes  # the cluster's own example
    assert "examples/01-finetune-lora.yaml" not in notes  # laptop paths: not for a cluster
    local = render_notes(tmp_path / "local", "--set", "backend=local", "--set", "webhook.enabled=false")
    assert "KFP:" not in local and "webhook:   off" in local


def test_every_value_is_described_and_the_readme_table_is_fresh():
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())

    def leaves(node: dict, prefix: str = ""):
        for name, sub in (node.get("properties") or {}).items():
            key = f"{prefix}.{name}" if prefix else name
            if sub.get("type") == "object" and sub.get("properties"):
                yield from leaves(sub, key)
            else:
                yield key, sub

    undescribed = [key for key, node in leaves(schema) if not node.get("description")]
    assert undescribed == []
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chart_readme.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_the_operator_image_can_be_pinned_by_digest():
    digest = "sha256:" + "a" * 64
    [deployment] = of_kind(render("--set", f"image.digest={digest}"), "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/slmops/slmops-operator:0.1.0@{digest}"


def test_the_chart_claims_the_oldest_kubernetes_its_crds_run_on():
    """The CRDs' CEL rules name a fieldPath, which Kubernetes 1.28 added: the chart refuses older ones."""
    crds = "\n".join(p.read_text() for p in (REPO / "crds").glob("*.yaml"))
    assert "fieldPath:" in crds
    render("--kube-version", f"{OLDEST}.0")
    render("--kube-version", f"{NEWEST}.0")  # a recent release: the chart sets no ceiling
    proc = subprocess.run(
        [helm(), "template", "slmops", str(CHART), "--kube-version", "1.27.9"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "kubeVersion" in proc.stderr
    assert "Kubernetes 1.28+" in (REPO / "docs" / "install.md").read_text()
