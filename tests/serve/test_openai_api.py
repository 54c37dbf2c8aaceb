"""``slmops serve`` through the official ``openai`` client: answers, streams, adapters, errors, drops.

Answers are checked against onnxruntime-genai's own greedy decoding of the same prompt
(rendered with the same chat template), not against the server's other answers.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.serve.conftest import Served, start_server

TOKENS = 12
MESSAGES = [{"role": "user", "content": "Make this formal: see you soon"}]


@pytest.fixture(scope="module")
def client(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def expected(genai_target: Path):
    """What each model id answers to MESSAGES, by onnxruntime-genai's greedy decoding in this process."""
    from slmops_pipelines.chat.prompts import PromptRenderer
    from slmops_pipelines.models.load import load_tokenizer
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

    tokenizer = load_tokenizer(genai_target)
    ids = PromptRenderer(tokenizer).token_ids(PromptRenderer(tokenizer).render_messages(MESSAGES))
    adapters = {name: genai_target / f"{name}.onnx_adapter" for name in ("alpha", "beta")}
    engine = GenaiEngine(genai_target, adapters=adapters, threads=1)
    answers = {}
    for model_id, adapter in (("tiny", None), ("alpha", "alpha"), ("beta", "beta")):
        engine.use_adapter(adapter)
        tokens = engine.greedy(ids, TOKENS)
        answers[model_id] = tokenizer.decode(
            [t for t in tokens if t != tokenizer.eos_token_id], skip_special_tokens=True
        )
    return answers


def ask(client: openai.OpenAI, model: str, **kw) -> str:
    reply = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=TOKENS, temperature=0, **kw
    )
    return reply.choices[0].message.content or ""


def test_the_models_are_the_base_and_every_adapter(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny", "alpha", "beta"]
    kserve_style = openai.OpenAI(base_url=server.url + "/openai/v1", api_key="unused", max_retries=0)
    assert [m.id for m in kserve_style.models.list().data] == ["tiny", "alpha", "beta"]


def test_each_model_id_answers_as_onnxruntime_genai_does_alone(client, expected):
    answers = {model: ask(client, model) for model in ("tiny", "alpha", "beta")}
    assert answers == expected
    assert answers["alpha"] != answers["beta"]  # the adapter switched per request, one base loaded


def test_a_stream_says_what_the_plain_answer_says_and_counts_its_tokens(client, expected):
    stream = client.chat.completions.create(
        model="alpha",
        messages=MESSAGES,
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected["alpha"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens <= TOKENS and usage.prompt_tokens > 0


def test_usage_and_completions_send_the_text_as_is(client):
    reply = client.completions.create(model="beta", prompt="Make this formal", max_tokens=5, temperature=0)
    assert reply.object == "text_completion" and reply.usage.completion_tokens <= 5
    raw_tokens = reply.usage.prompt_tokens
    chat = client.chat.completions.create(
        model="beta", messages=[{"role": "user", "content": "Make this formal"}], max_tokens=1
    )
    assert chat.usage.prompt_tokens > raw_tokens  # the chat template wraps the text; completions do not


def test_stop_cuts_the_answer_before_the_stop_text_streaming_or_not(client, expected):
    text = expected["alpha"]
    assert len(text) >= 4, text
    stop = text[2:4]
    cut = text[: text.index(stop)]
    assert ask(client, "alpha", stop=[stop]) == cut
    stream = client.chat.completions.create(
        model="alpha", messages=MESSAGES, max_tokens=TOKENS, temperature=0, stop=stop, stream=True
    )
    chunks = [c for c in stream if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_concurrent_requests_for_different_adapters_answer_as_each_alone(client, expected, server):
    models = ["alpha", "beta", "tiny", "alpha", "beta", "tiny", "alpha", "beta"]
    with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
        answers = list(pool.map(lambda m: ask(client, m), models))
    assert answers == [expected[m] for m in models]
    assert "slmops_serve_batch_size_count" in server.get("/metrics")[1]


def test_bad_requests_get_openais_errors_naming_the_parameter(client, server):
    with pytest.raises(openai.NotFoundError) as unknown:
        ask(client, "gamma")
    assert unknown.value.code == "model_not_found" and "alpha" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as negative:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=-3)
    assert negative.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="tiny", messages=[])
    assert empty.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "word " * 20000}], max_tokens=4
        )
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="tiny", prompt="word " * 20000, max_tokens=4)
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "prompt"
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as malformed:
        urllib.request.urlopen(request, timeout=10)
    assert malformed.value.code == 400
    assert json.loads(malformed.value.read())["error"]["type"] == "invalid_request_error"
    metrics = server.get("/metrics")[1]
    assert re.search(r'slmops_serve_requests_total\{model="gamma",status="404"\} 1', metrics)


def test_a_dropped_stream_frees_its_slot_at_once(genai_target, tmp_path):
    served = start_server(genai_target, tmp_path, "--threads", "1", "--max-batch", "1", "--max-queue", "0")
    try:
        served.wait_ready()
        body = json.dumps(
            {
                "model": "tiny",
                "messages": MESSAGES,
                "max_tokens": 16000,  # many seconds: it outlasts the test's next steps on a slow machine
                "min_tokens": 16000,
                "stream": True,
                "temperature": 0,
            }
        ).encode()
        request = urllib.request.Request(
            served.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        response = urllib.request.urlopen(request, timeout=10)
        assert response.readline().startswith(b"data: ")  # the stream started: the one slot is taken
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError) as full:
            ask(client, "tiny")
        assert full.value.response.headers.get("retry-after")
        response.close()  # the client goes away mid-stream
        deadline = time.monotonic() + 10
        while "slmops_serve_running_sequences 0.0" not in served.get("/metrics")[1]:
            assert time.monotonic() < deadline, served.log.read_text()
            time.sleep(0.1)
        assert ask(client, "tiny")  # the slot is free again
        assert "(cancelled)" in served.log.read_text()
    finally:
        served.stop()


def test_sigterm_lets_the_requests_in_flight_finish(genai_target, tmp_path):
    served = start_server(genai_target, tmp_path, "--threads", "1")
    served.wait_ready()
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4000, "min_tokens": 4000, "stream": True}
    request = urllib.request.Request(
        served.url + "/v1/chat/completions",
        data=json.dumps({**body, "temperature": 0}).encode(),
        headers={"Content-Type": "application/json"},
    )
    response = urllib.request.urlopen(request, timeout=60)
    assert response.readline().startswith(b"data: ")  # in flight
    served.process.send_signal(signal.SIGTERM)
    events = [line for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"  # the answer finished after the signal
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] == "length"
    assert served.process.wait(timeout=60) == 0
    assert "200 tiny" in served.log.read_text() and "stopped" in served.log.read_text()
