"""What the server says before its model is loaded, and the CPU count its threads come from."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import urllib.request
from pathlib import Path

import pytest

from slmops_pipelines.serve import Server, load_served
from slmops_pipelines.serve.app import serve
from tests.serve.conftest import free_port


def fetch(url: str) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_requests_wait_for_the_model_with_503_and_retry_after(genai_target: Path):
    from slmops_pipelines import jobs

    loaded = threading.Event()

    def load():
        loaded.wait(60)  # the model is still loading until the test says so
        return load_served(jobs.chat_target(str(genai_target)), base_id="tiny", threads=1)

    server, port = Server(load), free_port()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    running = serve(server, "127.0.0.1", port, stop=stop)
    thread = threading.Thread(target=loop.run_until_complete, args=(running,))
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                status, _, body = fetch(url + "/health")
                break
            except OSError:
                threading.Event().wait(0.1)
        assert status == 200  # live while it loads
        status, _, body = fetch(url + "/ready")
        assert status == 503 and body["status"] == "loading"
        status, headers, body = fetch(url + "/v1/models")
        assert status == 503 and headers.get("Retry-After") and body["error"]["code"] == "model_loading"
        loaded.set()
        for _ in range(300):
            if fetch(url + "/ready")[0] == 200:
                break
            threading.Event().wait(0.1)
        assert [m["id"] for m in fetch(url + "/v1/models")[2]["data"]] == ["tiny", "alpha", "beta"]
    finally:
        loaded.set()
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
    assert not thread.is_alive()


@pytest.mark.parametrize("bad", ["runs/nothing-here"])
def test_a_target_that_is_not_there_is_one_line_before_listening(bad, tmp_path):
    from click.testing import CliRunner

    from slmops_operator.cli.main import cli

    result = CliRunner().invoke(cli, ["serve", str(tmp_path / bad), "--port", str(free_port())])
    assert result.exit_code == 2 and "not found" in result.output and "Traceback" not in result.output


def test_the_server_prefers_a_target_whose_adapters_are_separate():
    from slmops_pipelines.chat.targets import default_target
    from slmops_pipelines.specs import OptimizeJobSpec
    from slmops_pipelines.specs.serve import ServeSpec

    spec = OptimizeJobSpec.model_validate(
        {
            "source": {
                "model": {"uri": "/models/base"},
                "adapter": {"name": "tone", "uri": "/adapters/tone"},
            },
            "targets": [
                {"name": "merged", "provider": "CPUExecutionProvider", "precision": "int4"},
                {
                    "name": "separate",
                    "provider": "CPUExecutionProvider",
                    "precision": "int4",
                    "mergeAdapter": False,
                },
            ],
        }
    )
    assert default_target(spec, ["merged", "separate"])[0] == "merged"  # generate and chat: the first
    named, note = default_target(spec, ["merged", "separate"], prefer=["separate"])
    assert named == "separate" and "merged" in note
    # spec.serve without a target: the operator's InferenceService serves what slmops serve would
    served = spec.model_copy(update={"serve": ServeSpec()})
    assert served.served_target().name == "separate"  # type: ignore[union-attr]
    merged_only = served.model_copy(update={"targets": spec.targets[:1]})
    assert merged_only.served_target().name == "merged"  # type: ignore[union-attr]


def test_a_target_served_alone_renders_as_its_job_did(genai_target: Path, tmp_path: Path):
    """KServe downloads targets/NAME alone: the folder's slmops-prompts.json says how the job rendered."""
    import shutil

    from slmops_pipelines import jobs
    from slmops_pipelines.steps.optimize.serving import write_prompts

    folder = tmp_path / "cpu-int4-adapter"
    shutil.copytree(genai_target, folder)
    job_data = {"uri": "/data/tone", "promptTemplate": "Tone of: {phrase}", "completionTemplate": " {tone}"}
    sql_data = {"uri": "/data/sql", "promptTemplate": "SQL for: {q}", "completionTemplate": " {sql}"}
    write_prompts(folder, job_data, {"beta": sql_data})
    model = load_served(jobs.chat_target(str(folder)), base_id="tiny", threads=1)
    text = model.tokenizer.decode
    asked = [{"role": "user", "content": "see you soon"}]
    assert text(model.chat_prompt(None, asked), skip_special_tokens=True).endswith("Tone of: see you soon")
    assert text(model.chat_prompt("alpha", asked), skip_special_tokens=True).endswith("Tone of: see you soon")
    assert text(model.chat_prompt("beta", asked), skip_special_tokens=True).endswith("SQL for: see you soon")


async def test_a_fault_of_the_server_is_an_openai_error_not_a_traceback(genai_target: Path, caplog):
    """An exception the handlers do not expect still answers 500 with OpenAI's error body."""
    from aiohttp.test_utils import TestClient, TestServer

    from slmops_pipelines import jobs

    server = Server(lambda: load_served(jobs.chat_target(str(genai_target)), base_id="tiny", threads=1))
    await server.load()

    def broken(*args, **kwargs):
        raise RuntimeError("the renderer broke")

    server.model.chat_prompt = broken  # type: ignore[union-attr, method-assign]
    client = TestClient(TestServer(server.application()))
    await client.start_server()
    try:
        response = await client.post(
            "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
        )
        body = await response.json()
        metrics = await (await client.get("/metrics")).text()
    finally:
        await client.close()
        server.batcher.stop()  # type: ignore[union-attr]
        server.model = server.batcher = None  # onnxruntime-genai frees the model with its last reference
        gc.collect()
    assert response.status == 500 and body["error"]["type"] == "server_error"
    assert "the renderer broke" in body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in caplog.text
    assert 'slmops_serve_requests_total{model="tiny",status="500"} 1.0' in metrics
