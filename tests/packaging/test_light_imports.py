"""The operator side must not need torch: heavy libraries are imported lazily."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

HEAVY = [
    "torch",
    "transformers",
    "peft",
    "datasets",
    "accelerate",
    "trl",
    "bitsandbytes",
    "onnxruntime_genai",
]


def test_operator_and_specs_import_without_heavy_libraries():
    code = (
        "import sys\n"
        "import slmops_operator.api, slmops_operator.api.crd, slmops_operator.api.manifests\n"
        "import slmops_operator.cli.main, slmops_operator.cli.runner, slmops_operator.cli.generate\n"
        "import slmops_pipelines.specs, slmops_pipelines.storage, slmops_pipelines.local\n"
        "import slmops_pipelines.kubeflow.pipelines, slmops_pipelines.kubeflow.kfp_local, slmops_pipelines.jobs\n"
        "import slmops_operator.runtime, slmops_operator.backends.local, slmops_operator.handlers.jobs\n"
        "import slmops_pipelines.chat.targets, slmops_pipelines.chat.engines, slmops_pipelines.chat.session\n"
        "import slmops_pipelines.serve, slmops_pipelines.serve.app, slmops_operator.cli.serve\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {"PYTHONPATH": f"{REPO / 'pipelines'}:{REPO / 'operator'}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_crds_and_validate_work_without_torch_installed(tmp_path):
    """Block the heavy imports outright: the CLI's light commands still work."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        f"for name in {HEAVY!r}:\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}:{REPO / 'pipelines'}:{REPO / 'operator'}", "PATH": "/usr/bin:/bin"}
    for args in (
        ["crds", "--check", "-o", str(REPO / "crds")],
        ["validate", str(REPO / "examples" / "01-finetune-lora.yaml")],
        ["compile", "--check", "-o", str(REPO / "pipelines" / "compiled")],
        ["chat", "--help"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "slmops_operator.cli.main", *args], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
