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
    }
    for artifact in artifacts:
        assert (REPO / artifact["docker"]["dockerfile"]).is_file()


def test_the_chart_and_the_values_it_sets_exist():
    [release] = CONFIG["manifests"]["helm"]["releases"]
    assert (REPO / release["chartPath"] / "Chart.yaml").is_file()
    keys = list(release["setValueTemplates"])
    profiles = {p["name"]: p for p in CONFIG["profiles"]}
    keys += list(profiles["dev"]["patches"][0]["value"])
    for key in keys:
        assert has_value(key), key


def test_the_samples_profile_applies_the_examples():
    profiles = {p["name"]: p for p in CONFIG["profiles"]}
    for path in profiles["samples"]["manifests"]["rawYaml"]:
        assert (REPO / path).is_file(), path
    assert profiles["dev"]["activation"] == [{"kubeContext": "kind-slmops"}]
