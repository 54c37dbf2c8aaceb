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
