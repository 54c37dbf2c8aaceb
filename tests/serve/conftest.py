"""A real ``slmops serve`` on the suite's tiny model: one ONNX target with two separate adapters."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.optimize.test_adapters import make_adapter


@pytest.fixture(scope="session")
def genai_target(tmp_path_factory) -> Path:
    """A tiny model exported once for onnxruntime-genai, adapters ``alpha`` and ``beta`` kept separate.

    Its context is long (4096) so that an answer can last seconds: long enough to drop a
    stream or stop the server while it is decoded.
    """
    from slmops_pipelines.specs.optimize import OptimizeTarget
    from slmops_pipelines.steps.optimize.export import export_target
    from tests.conftest import tone_texts
    from tests.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("serve")
    tiny_model = build_tiny_llama(root / "base", tone_texts(), context=4096)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A ``slmops serve`` process: its URL, its log, and how to stop it."""

    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"slmops serve exited {self.process.returncode}: {self.log.read_text()}")
            try:
                if self.get("/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready in {timeout} s: {self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=60)


def start_server(target: Path, tmp_path: Path, *options: str) -> Served:
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "slmops_operator.cli.main",
        "serve",
        str(target),
        "--port",
        str(port),
        *options,
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return Served(process, port, log)


@pytest.fixture(scope="module")
def server(genai_target: Path, tmp_path_factory) -> Iterator[Served]:
    served = start_server(genai_target, tmp_path_factory.mktemp("serve-log"), "--threads", "1")
    served.wait_ready()
    yield served
    served.stop()
