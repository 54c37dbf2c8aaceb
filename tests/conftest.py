"""Suite-wide fixtures: a tiny model built in-process, the demo data, an isolated cache.

Nothing here downloads anything: models are tiny random Llamas (see tests/tiny.py); the S3
server is a real SeaweedFS started by tests/fixtures/seaweedfs.py.  Tests marked ``slow``
use the real SmolLM2 demo model and run only with ``--slow``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.seaweedfs"]

REPO = Path(__file__).resolve().parents[1]
TONE_DATA = REPO / "examples" / "data" / "tone"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run the slow tests that use SmolLM2")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep caches out of the user's home; never reach a model hub."""
    cache = tmp_path_factory.mktemp("slmops-cache")
    os.environ["SLMOPS_CACHE_DIR"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["HF_HOME"] = str(cache / "hf")
    return cache


def tone_texts() -> list[str]:
    rows = [json.loads(line) for line in (TONE_DATA / "train.jsonl").read_text().splitlines()]
    return [f"{r['phrase']} {r['tone']}" for r in rows] + ["What is the tone of this phrase? Tone:"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tone_texts())


@pytest.fixture
def tone_data() -> Path:
    return TONE_DATA


def job_run(resource, output_uri: str = "", **keywords):
    """The JobRun of a resource, as the CLI makes it (output: the spec's, else ``output_uri``)."""
    return resource.job_kind.new_run(
        resource.name,
        resource.spec,
        default_output=output_uri or f"runs/{resource.name}",
        namespace=resource.namespace,
        **keywords,
    )


def finetune_manifest(name: str, model: Path, **spec_overrides) -> dict:
    """A FineTuneJob manifest for the tiny model on the tone data; overrides merge per section."""
    spec = {
        "model": {"uri": str(model)},
        "dataset": {
            "uri": str(TONE_DATA),
            "trainSplit": "train[:64]",
            "evalSplit": "eval[:16]",
            "chatTemplate": True,
            "promptTemplate": "Tone of: {phrase}",
            "completionTemplate": "{tone}",
            "maxSeqLength": 64,
        },
        "training": {"maxSteps": 4, "batchSize": 4, "saveSteps": 2, "loggingSteps": 1, "learningRate": 1e-3},
        "evaluation": {"maxNewTokens": 4, "maxSamples": 8},
    }
    for section, value in spec_overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(section), dict):
            spec[section] = {**spec[section], **value}
        else:
            spec[section] = value
    return {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture(scope="session")
def genai_target(tmp_path_factory) -> Path:
    """A tiny model exported once for onnxruntime-genai, adapters ``alpha`` and ``beta`` kept separate.

    Its context is long (16384) so that an answer can last many seconds: a server writes a
    stream nobody reads into the socket's buffers (megabytes) without waiting, so only an answer
    longer than the test's next steps keeps its slot taken while the test looks.
    """
    from slmops_pipelines.specs.optimize import OptimizeTarget
    from slmops_pipelines.steps.optimize.export import export_target
    from tests.optimize.test_adapters import make_adapter
    from tests.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("serve")
    tiny_model = build_tiny_llama(root / "base", tone_texts(), context=16384)
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    adapters = {
        "alpha": make_adapter(tiny_model, root / "alpha", 1, every),
        "beta": make_adapter(tiny_model, root / "beta", 2, ["q_proj", "v_proj"]),
    }
    target = OptimizeTarget(
        name="tiny", provider="CPUExecutionProvider", precision="fp32", merge_adapter=False
    )
    export_target(target, tiny_model, root / "targets", cache_dir=root / "builder", adapters=adapters)
    return root / "targets" / "tiny"


# -- a real MLflow tracking server (mlflow server, SQLite, local artifact root) ----------------
# MLflow's server lives in a venv of its own (.venv/mlflow-server, made by scripts/setup.sh): its pins
# (pyarrow) differ from ours, while the jobs use mlflow-skinny, its client.

MLFLOW_SERVER = Path(sys.prefix) / "mlflow-server" / "bin" / "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """The URL of a running ``mlflow server``; stopped at the end of the session."""
    assert MLFLOW_SERVER.exists(), (
        f"{MLFLOW_SERVER} is missing: run scripts/setup.sh (the dev extras make it)"
    )
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(MLFLOW_SERVER),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(
                    f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
