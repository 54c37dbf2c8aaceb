"""skaffold.yaml names what exists: the Dockerfiles, the chart, its values, the samples."""

from __future__ import annotations

import yaml

from tests.conftest import REPO

CONFIG = yaml.safe_load((REPO / "skaffold.yaml").read_text())
VALUES = yaml.safe_load((REPO / "charts" / "slmops" / "values.yaml").read_text())


def has_value(path: str) -> bool:
    node = VALUES
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_image_has_its_dockerfile():
    artifacts = CONFIG["build"]["artifacts"]
    assert {a["image"].rsplit("/", 1)[-1] for a in artifacts} == {
        "slmops-operator",
        "slmops-trainer",
        "slmops-optimizer",
        "slmops-optimizer-cuda",
        "slmops-server",
    }
    for artifact in artifacts:
        assert (REPO / artifact["docker"]["dockerfile"]).is_file()


def test_the_chart_and_the_values_it_sets_exist():
    [release] = CONFIG["manifests"]["helm"]["releases"]
    assert (REPO / release["chartPath"] / "Chart.yaml").is_file()
    keys = list(release["setValueTemplates"])
    profiles = {p["name"]: p for p in CONFIG["profiles"]}
    patches = {p["path"]: p for p in profiles["dev"]["patches"]}
    keys += list(patches["/manifests/helm/releases/0/setValues"]["value"])
    for key in keys:
        assert has_value(key), key


def test_the_dev_profile_builds_no_cuda_image():
    """A laptop's kind cluster has no GPU: the dev profile drops the CUDA optimizer image."""
    profiles = {p["name"]: p for p in CONFIG["profiles"]}
    removed = [p["path"] for p in profiles["dev"]["patches"] if p["op"] == "remove"]
    index = int(removed[0].rsplit("/", 1)[1])
    assert CONFIG["build"]["artifacts"][index]["image"].endswith("/slmops-optimizer-cuda")


def test_the_samples_profile_applies_the_examples():
    profiles = {p["name"]: p for p in CONFIG["profiles"]}
    for path in profiles["samples"]["manifests"]["rawYaml"]:
        assert (REPO / path).is_file(), path
    assert profiles["dev"]["activation"] == [{"kubeContext": "kind-slmops"}]
