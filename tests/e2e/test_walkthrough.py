"""The kind walkthrough of docs/install.md ("From zero on kind"), step by step, on a real cluster.

Runs with ``KUBECONFIG`` set (see conftest) and ``SLMOPS_E2E_WALKTHROUGH=1``: it applies the
storage and the namespace, runs the seeding command, applies the demo job and waits for it
to succeed, as the document does.  The operator must be installed as in step 2a (``skaffold
run -p dev``) or 2b (Kubeflow Pipelines); with 2b, ``status.run.url`` is checked too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    os.environ.get("SLMOPS_E2E_WALKTHROUGH") != "1", reason="the walkthrough: set SLMOPS_E2E_WALKTHROUGH=1"
)
KIND = REPO / "deploy" / "kind"
TIMEOUT_S = float(os.environ.get("SLMOPS_E2E_TIMEOUT", "1800"))


def kubectl(*args: str) -> str:
    binary = shutil.which("kubectl") or str(REPO / ".venv" / "bin" / "kubectl")
    proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_step_1_storage_namespace_and_seed():
    kubectl("apply", "-f", str(KIND / "storage.yaml"), "-f", str(KIND / "team-a.yaml"))
    kubectl("-n", "storage", "rollout", "status", "deployment/seaweedfs", "--timeout=300s")
    proc = subprocess.run(
        [str(REPO / "scripts" / "kind_seed.sh")], capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "s3://slmops/models/SmolLM2-135M-Instruct" in proc.stdout and "s3://slmops/data/tone" in proc.stdout
    )


def test_step_2_the_demo_job_succeeds_with_its_artifacts_in_the_cluster_s3(api):
    job = yaml.safe_load((KIND / "finetune-smollm2.yaml").read_text())
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    kubectl("apply", "-f", str(KIND / "finetune-smollm2.yaml"))
    deadline, status = time.monotonic() + TIMEOUT_S, {}
    while time.monotonic() < deadline:
        body = api.get_namespaced_custom_object("slmops.io", "v1alpha1", namespace, "finetunejobs", name)
        status = body.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed", "Cancelled"):
            break
        time.sleep(10)
    assert status.get("phase") == "Succeeded", status
    prefix = job["spec"]["output"]["uri"]
    assert status["artifacts"]["adapter"].startswith(prefix) and status["artifacts"]["manifest"].startswith(
        prefix
    )
    assert status["metrics"]["accuracy"] >= 0
    if (status.get("run") or {}).get("backend") == "kfp":
        assert "/#/runs/details/" in status["run"]["url"]
