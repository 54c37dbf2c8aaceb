"""The versions docs/install.md states are the ones the code pins and the tests use."""

from __future__ import annotations

import re

from slmops_pipelines.kubeflow.distributed.manifests import SUPPORTED_RELEASES
from tests.conftest import REPO

INSTALL = (REPO / "docs" / "install.md").read_text()
CONSTRAINTS = (REPO / "constraints.txt").read_text()


def pinned(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)$", CONSTRAINTS, re.M)
    assert match, package
    return match.group(1)


def test_the_kfp_backend_installed_is_the_sdks_release():
    [installed] = re.findall(r"export PIPELINE_VERSION=(\S+)", INSTALL)
    assert installed == pinned("kfp") == pinned("kfp-kubernetes")


def test_the_trainer_releases_the_docs_name_are_the_ones_the_launcher_says():
    assert "Kubeflow Trainer v2.1 and v2.2" in SUPPORTED_RELEASES["trainjob"]  # its refusal message
    assert "Kubeflow Trainer v2.1/v2.2 (TrainJob)" in INSTALL and "| v2.1 and v2.2 (" in INSTALL
    assert "runtimePatches" in INSTALL and "DistributedEngineVersion" in INSTALL
    assert "v2.0/2.1" not in INSTALL  # the older claim


def test_the_onnxruntime_versions_stated_are_the_pinned_ones():
    assert f"onnxruntime-gpu {pinned('onnxruntime-gpu')}" in INSTALL
    assert f"{pinned('onnxruntime')} (CPU images" in INSTALL
