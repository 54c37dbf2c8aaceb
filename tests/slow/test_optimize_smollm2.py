"""The optimize demo, for real: SmolLM2 fine-tuned, then int4/int8 ONNX with gates (opt-in: ``--slow``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.slow.helpers import run_examples

TONE = "What is the tone of this phrase? Answer with one word: happy, sad, angry, fearful or calm.\n\n{}"


@pytest.mark.slow
def test_fine_tune_then_optimize_passes_the_gates(tmp_path):
    run_examples(
        "examples/01-finetune-lora.yaml", "examples/08-optimize-cpu.yaml", runs_dir=tmp_path, timeout=3600
    )
    doc = json.loads((tmp_path / "smollm2-tone-cpu" / "metrics.json").read_text())
    reference = doc["reference"]["finetuned_pytorch"]["accuracy"]
    for name in ("cpu-int4", "cpu-int4-adapter", "cpu-int8"):
        assert doc["targets"][name]["metrics"]["accuracy"] >= reference - 0.02, name
    assert (tmp_path / "smollm2-tone-cpu" / "manifest.json").exists()
    answers_the_base_and_the_tone_adapter(tmp_path / "smollm2-tone-cpu", tmp_path)


def answers_the_base_and_the_tone_adapter(output: Path, tmp_path: Path) -> None:
    """Issue 25's check: ``slmops serve`` on the job's output (no --target) answers OpenAI's
    client for the base and the tone adapter, streaming as not."""
    import openai

    from tests.serve.conftest import start_server

    served = start_server(output, tmp_path)
    try:
        served.wait_ready(300)
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["smollm2-tone-cpu", "smollm2-tone"]
        messages = [{"role": "user", "content": TONE.format("I won the lottery today!")}]
        answers = {}
        for model in ("smollm2-tone-cpu", "smollm2-tone"):
            plain = client.chat.completions.create(
                model=model, messages=messages, max_tokens=8, temperature=0
            )
            stream = client.chat.completions.create(
                model=model, messages=messages, max_tokens=8, temperature=0, stream=True
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            answers[model] = plain.choices[0].message.content
            assert streamed == answers[model], model
        assert answers["smollm2-tone"] == "happy"
        assert answers["smollm2-tone-cpu"] != "happy"  # the base answers in sentences
    finally:
        assert served.stop() == 0
