"""The kind walkthrough's files (docs/install.md, "From zero on kind") fit together.

The e2e suite runs the walkthrough on a real cluster (``tests/e2e/test_walkthrough.py``);
here, without one: every object passes the Kubernetes schema strictly, the job is valid,
and the storage, the credentials, the seeding script and the job name the same bucket,
keys and paths.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from slmops_operator.api.manifests import load_resources
from tests.conftest import REPO
from tests.deploy.test_chart import NEWEST, OLDEST

KIND = REPO / "deploy" / "kind"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KIND / name).read_text()) if d]


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_the_cluster_objects_pass_strict_validation(version):
    import kubernetes_validate

    for name in ("storage.yaml", "team-a.yaml"):
        for doc in docs(name):
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_job_is_valid_and_reads_what_the_seed_writes():
    [job] = load_resources([KIND / "finetune-smollm2.yaml"])
    seed = (REPO / "scripts" / "kind_seed.sh").read_text()
    seeded = set(re.findall(r'"(s3://slmops/[^"]+)"', seed))
    assert {job.spec.model.uri, job.spec.dataset.uri} == seeded
    assert job.spec.output.uri.startswith("s3://slmops/outputs/team-a/")
    assert job.namespace == "team-a" and job.spec.output.credentials_secret == "s3-creds"


def test_the_credentials_are_the_storages_identity():
    config = next(d for d in docs("storage.yaml") if d["kind"] == "Secret")
    [identity] = json.loads(config["stringData"]["s3.json"])["identities"]
    [keys] = identity["credentials"]
    service = next(d for d in docs("storage.yaml") if d["kind"] == "Service")
    endpoint = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}:8333"
    secrets = [d for d in docs("team-a.yaml") if d["kind"] == "Secret"]
    assert {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in secrets} == {
        ("team-a", "s3-creds"),
        ("slmops-system", "slmops-s3"),
    }
    for secret in secrets:
        data = secret["stringData"]
        assert (data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"]) == (
            keys["accessKey"],
            keys["secretKey"],
        )
        assert data["AWS_ENDPOINT_URL"] == endpoint


def test_the_seed_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "kind_seed.sh")]).returncode == 0


def test_the_dev_profile_runs_the_operator_in_an_image_that_can_train():
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    [dev] = [p for p in config["profiles"] if p["name"] == "dev"]
    patches = {p["path"]: p for p in dev["patches"]}
    templates = patches["/manifests/helm/releases/0/setValueTemplates"]["value"]
    assert "slmops_trainer" in templates["image.repository"]
    values = patches["/manifests/helm/releases/0/setValues"]["value"]
    assert values["backend"] == "local" and values["s3.credentialsSecret"] == "slmops-s3"
    assert values["defaultOutput"].startswith("s3://slmops/")
