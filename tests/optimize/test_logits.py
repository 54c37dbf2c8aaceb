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


# int4 as shipped, whose rows are computed one by one: the same numbers.  int8 dynamic, whose
# output layer reads the norm through DynamicQuantizeLinear with one scale per call: a prompt's
# rows share it, the pruned graph's last row has its own (as a decoding step's has), so its
# numbers move within that scale's rounding.
RECIPES = {
    "int4": ({"precision": "int4"}, 1e-4),
    "int8-dynamic": ({"precision": "int8", "quantization": {"int8Mode": "dynamic"}}, 5e-2),
}


def build(tiny_model: Path, out: Path, cache: Path, *, prune: bool, recipe: str) -> Path:
    cpu = providers.PROVIDERS["CPUExecutionProvider"]
    target = OptimizeTarget.model_validate(
        {"name": f"cpu-{recipe}", "provider": "CPUExecutionProvider", **RECIPES[recipe][0]}
    )
    patched = {
        **providers.PROVIDERS,
        "CPUExecutionProvider": dataclasses.replace(cpu, prune_prefill_logits=prune),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(providers, "PROVIDERS", patched)
        mp.setattr("slmops_pipelines.steps.optimize.export.PROVIDERS", patched)
        return export_target(target, tiny_model, out, cache_dir=cache).path


@pytest.fixture(scope="module", params=list(RECIPES))
def pair(request, tiny_model, tmp_path_factory, isolated_cache) -> tuple[GenaiEngine, GenaiEngine, float]:
    """The same target built twice: as shipped (pruned) and with every position's logits."""
    root = tmp_path_factory.mktemp(f"logits-{request.param}")
    pruned = build(tiny_model, root / "pruned", isolated_cache / "b1", prune=True, recipe=request.param)
    full = build(tiny_model, root / "full", isolated_cache / "b2", prune=False, recipe=request.param)
    return GenaiEngine(pruned, threads=1), GenaiEngine(full, threads=1), RECIPES[request.param][1]


def prefill(engine: GenaiEngine, pad: int) -> tuple[object, np.ndarray]:
    longest = max(map(len, PROMPTS))
    generator = engine.generator(longest + 6, search={"batch_size": len(PROMPTS)})
    rows = [p + [pad] * (longest - len(p)) for p in PROMPTS]
    generator.append_tokens(np.asarray(rows, dtype=np.int32))
    return generator, np.asarray(generator.get_output("logits"))


def test_cpu_targets_ship_pruned_logits_that_genai_recognizes(pair):
    pruned, full, _ = pair
    assert pruned.pruned and not full.pruned
    assert has_pruned_logits(pruned.folder)


def test_each_row_gets_the_logits_of_its_last_real_token_in_a_right_padded_batch(pair):
    pruned, full, tolerance = pair
    pad = json.loads((full.folder / "genai_config.json").read_text())["model"]["pad_token_id"]
    gen_pruned, short = prefill(pruned, pad)
    gen_full, every = prefill(full, pad)
    assert short.shape == (len(PROMPTS), 1, every.shape[-1])
    last = np.stack([every[row, len(prompt) - 1] for row, prompt in enumerate(PROMPTS)])
    np.testing.assert_allclose(short[:, 0], last, rtol=tolerance, atol=tolerance)
    for row, prompt in enumerate(PROMPTS):  # a padded row's: its last token's, never a pad's
        if len(prompt) < every.shape[1]:
            assert np.abs(short[row, 0] - every[row, -1]).max() > 10 * np.abs(short[row, 0] - last[row]).max()
    if tolerance > 1e-4:
        return  # near-ties may go either way within the rounding
    for _ in range(5):  # and decoding goes on alike
        gen_pruned.generate_next_token()
        gen_full.generate_next_token()
        assert list(gen_pruned.get_next_tokens()) == list(gen_full.get_next_tokens())


def test_perplexity_reads_the_same_likelihoods_token_by_token(pair):
    pruned, full, tolerance = pair
    for prompt in PROMPTS:
        answer = [7, 8, 2]
        expected = full.answer_nll(prompt, answer)
        assert pruned.answer_nll(prompt, answer) == pytest.approx(expected, rel=max(1e-3, tolerance / 5))


def test_a_gpu_target_keeps_every_position(tiny_model, tmp_path, isolated_cache):
    """graph capture sizes the attention mask to the whole context there: the rewrite would misread it."""
    target = OptimizeTarget(name="cuda-int4", provider="CUDAExecutionProvider", precision="int4")
    folder = export_target(target, tiny_model, tmp_path, cache_dir=isolated_cache / "b3").path
    assert not has_pruned_logits(folder)
