"""The output layer for each row's last real token only: the logits onnxruntime-genai samples from, unchanged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from slmops_pipelines.specs import providers
from slmops_pipelines.specs.optimize import OptimizeTarget
from slmops_pipelines.steps.optimize.export import export_target
from slmops_pipelines.steps.optimize.logits import has_pruned_logits
from slmops_pipelines.steps.optimize.runtime import GenaiEngine

# Three prompts of different lengths: onnxruntime-genai pads the shorter ones on the right.
PROMPTS = [[1, 5, 9, 13, 17, 21, 25, 29], [1, 30, 31], [1, 6, 40, 41, 42, 43]]


def build(tiny_model: Path, out: Path, cache: Path, *, prune: bool, precision: str) -> Path:
    cpu = providers.PROVIDERS["CPUExecutionProvider"]
    target = OptimizeTarget(name=f"cpu-{precision}", provider="CPUExecutionProvider", precision=precision)
    patched = {
        **providers.PROVIDERS,
        "CPUExecutionProvider": dataclasses.replace(cpu, prune_prefill_logits=prune),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(providers, "PROVIDERS", patched)
        mp.setattr("slmops_pipelines.steps.optimize.export.PROVIDERS", patched)
        return export_target(target, tiny_model, out, cache_dir=cache).path


@pytest.fixture(scope="module", params=["fp32", "int4"])
def pair(request, tiny_model, tmp_path_factory, isolated_cache) -> tuple[GenaiEngine, GenaiEngine]:
    """The same target built twice: as shipped (pruned) and with every position's logits."""
    root = tmp_path_factory.mktemp(f"logits-{request.param}")
    pruned = build(tiny_model, root / "pruned", isolated_cache / "b1", prune=True, precision=request.param)
    full = build(tiny_model, root / "full", isolated_cache / "b2", prune=False, precision=request.param)
    return GenaiEngine(pruned, threads=1), GenaiEngine(full, threads=1)


def prefill(engine: GenaiEngine, pad: int) -> tuple[object, np.ndarray]:
    longest = max(map(len, PROMPTS))
    generator = engine.generator(longest + 6, search={"batch_size": len(PROMPTS)})
    rows = [p + [pad] * (longest - len(p)) for p in PROMPTS]
    generator.append_tokens(np.asarray(rows, dtype=np.int32))
    return generator, np.asarray(generator.get_output("logits"))


def test_cpu_targets_ship_pruned_logits_that_genai_recognizes(pair):
    pruned, full = pair
    assert pruned.pruned and not full.pruned
    assert has_pruned_logits(pruned.folder)


def test_each_row_gets_the_logits_of_its_last_real_token_in_a_right_padded_batch(pair):
    pruned, full = pair
    pad = json.loads((full.folder / "genai_config.json").read_text())["model"]["pad_token_id"]
    gen_pruned, short = prefill(pruned, pad)
    gen_full, every = prefill(full, pad)
    assert short.shape == (len(PROMPTS), 1, every.shape[-1])
    last = np.stack([every[row, len(prompt) - 1] for row, prompt in enumerate(PROMPTS)])
    np.testing.assert_allclose(short[:, 0], last, rtol=1e-4, atol=1e-4)
    assert not np.allclose(short[1, 0], every[1, -1], atol=1e-3)  # a pad's logits are not the row's
    for _ in range(5):  # and decoding goes on alike
        gen_pruned.generate_next_token()
        gen_full.generate_next_token()
        assert list(gen_pruned.get_next_tokens()) == list(gen_full.get_next_tokens())


def test_perplexity_reads_the_same_likelihoods_token_by_token(pair):
    pruned, full = pair
    for prompt in PROMPTS:
        answer = [7, 8, 2]
        assert pruned.answer_nll(prompt, answer) == pytest.approx(full.answer_nll(prompt, answer), rel=1e-3)


def test_a_gpu_target_keeps_every_position(tiny_model, tmp_path, isolated_cache):
    """graph capture sizes the attention mask to the whole context there: the rewrite would misread it."""
    target = OptimizeTarget(name="cuda-int4", provider="CUDAExecutionProvider", precision="int4")
    folder = export_target(target, tiny_model, tmp_path, cache_dir=isolated_cache / "b3").path
    assert not has_pruned_logits(folder)
