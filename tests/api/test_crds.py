"""The CRDs: generated from the models, committed, structural."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slmops_operator.api.crd import all_crds, render_yaml

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
GENERATED = all_crds()


@pytest.mark.parametrize("filename", sorted(GENERATED))
def test_committed_crds_match_the_models(filename):
    committed = CRD_DIR / filename
    assert committed.exists(), f"{committed} is missing: run `slmops crds`"
    assert committed.read_text() == render_yaml(GENERATED[filename]), (
        f"{committed} is stale: run `slmops crds`"
    )


def test_no_extra_files_in_crd_dir():
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == sorted(GENERATED)


def walk(node, path="$"):
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "title", "discriminator"}


@pytest.mark.parametrize("filename", sorted(GENERATED))
def test_schema_is_structural(filename):
    version = GENERATED[filename]["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        if path == "$.metadata":
            continue
        assert "type" in node, f"{path} has no type"
        assert not FORBIDDEN & node.keys(), f"{path} uses {FORBIDDEN & node.keys()}"
        assert node.get("additionalProperties") is not False, f"{path}: additionalProperties false"
        if node["type"] == "object" and path not in ("$",):
            assert "properties" in node or "additionalProperties" in node, f"{path} is an untyped object"
        if path.count(".") >= 2 and path.startswith("$.spec") and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description"
        assert "x-kubernetes-preserve-unknown-fields" not in node, path


def test_schema_carries_enums_defaults_bounds_and_required():
    crd = GENERATED["slmops.io_finetunejobs.yaml"]
    version = crd["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["model", "dataset"]
    assert spec["properties"]["method"]["enum"] == ["lora", "qlora", "dora", "full"]
    assert spec["properties"]["method"]["default"] == "lora"
    max_steps = spec["properties"]["training"]["properties"]["maxSteps"]
    assert max_steps["minimum"] == 1 and max_steps["nullable"] is True
    fraction = spec["properties"]["dataset"]["properties"]["evalFraction"]
    assert fraction["minimum"] == 0 and fraction["exclusiveMinimum"] is True
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Progress"] == ".status.progress.percent"
    assert columns["Age"] == ".metadata.creationTimestamp"
    assert "ftj" in crd["spec"]["names"]["shortNames"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["conditions"]["items"]["required"] == ["type", "status"]
    assert status["metrics"]["additionalProperties"] == {"type": "number"}


def test_rendered_yaml_parses_back():
    for text in map(render_yaml, GENERATED.values()):
        assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"
