"""Several LoRA adapters on one exported base model, chosen per request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slmops_pipelines.errors import InputError
from slmops_pipelines.specs.optimize import OptimizeTarget
from slmops_pipelines.steps.optimize.export import export_target

PROMPT = [1, 5, 9, 12, 30, 40, 77, 3, 18, 250]


def make_adapter(base: Path, out: Path, seed: int, modules: list[str], **config) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=8, lora_alpha=16, target_modules=modules, **config),
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero: make the adapters actually do something
            torch.nn.init.normal_(param, std=0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    all_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return {
        "alpha": make_adapter(tiny_model, root / "alpha", 1, all_modules),
        "beta": make_adapter(
            tiny_model, root / "beta", 2, ["q_proj", "v_proj"]
        ),  # a subset: the template covers both
    }


@pytest.fixture(scope="module")
def exported(tiny_model, adapters, tmp_path_factory, isolated_cache) -> Path:
    target = OptimizeTarget(
        name="multi", provider="CPUExecutionProvider", precision="fp32", merge_adapter=False
    )
    out = tmp_path_factory.mktemp("multi")
    return export_target(target, tiny_model, out, cache_dir=isolated_cache / "b", adapters=adapters).path


def genai_logits(folder: Path, adapter: str | None) -> np.ndarray:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    loaded = og.Adapters(model)
    for name in ("alpha", "beta"):
        loaded.load(str(folder / f"{name}.onnx_adapter"), name)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(PROMPT) + 1)
    generator = og.Generator(model, params)
    if adapter:
        generator.set_active_adapter(loaded, adapter)  # before the prompt: the KV cache must see it
    generator.append_tokens(np.asarray(PROMPT, dtype=np.int32))
    # the last token's: all that a CPU graph gives (steps/optimize/logits.py)
    return np.asarray(generator.get_output("logits"))[0, -1]


def torch_logits(base: Path, adapter: Path | None) -> np.ndarray:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model(torch.tensor([PROMPT])).logits[0, -1].numpy()


def test_adapter_files_sit_next_to_one_base_model(exported):
    assert (exported / "alpha.onnx_adapter").exists() and (exported / "beta.onnx_adapter").exists()
    assert len(list(exported.glob("*.onnx"))) == 1
    assert not (exported.parent / "work").exists()


def test_switching_adapters_switches_outputs_and_matches_pytorch(exported, adapters, tiny_model):
    none, alpha, beta = (genai_logits(exported, name) for name in (None, "alpha", "beta"))
    assert np.abs(alpha - beta).max() > 0.1 and np.abs(alpha - none).max() > 0.1
    np.testing.assert_allclose(none, torch_logits(tiny_model, None), atol=1e-4)
    np.testing.assert_allclose(alpha, torch_logits(tiny_model, adapters["alpha"]), atol=1e-4)
    np.testing.assert_allclose(beta, torch_logits(tiny_model, adapters["beta"]), atol=1e-4)


@pytest.fixture(scope="module")
def exported_int4(tiny_model, adapters, tmp_path_factory, isolated_cache) -> Path:
    target = OptimizeTarget(
        name="multi4", provider="CPUExecutionProvider", precision="int4", merge_adapter=False
    )
    out = tmp_path_factory.mktemp("multi4")
    return export_target(target, tiny_model, out, cache_dir=isolated_cache / "b", adapters=adapters).path


def int4_blocks(folder: Path) -> dict[str, int]:
    """Each int4 node's block size, by node name."""
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return {
        node.name: next(a.i for a in node.attribute if a.name == "block_size")
        for node in graph.node
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized")
    }


def test_int4_base_keeps_adapters_float(exported_int4):
    import onnx

    graph = onnx.load(str(exported_int4 / "model.onnx"), load_external_data=False).graph
    assert any(n.op_type == "MatMulNBits" for n in graph.node)
    # 2 layers x (q/k/v fused, o, gate/up fused, down): each a graph input an adapter file sets
    assert sum("lora_A" in i.name for i in graph.input) == 2 * 4
    alpha = genai_logits(exported_int4, "alpha")
    assert np.abs(alpha - genai_logits(exported_int4, "beta")).max() > 0.1


def test_the_output_layer_of_a_separate_adapters_base_is_a_merged_targets(
    exported_int4, tiny_model, tmp_path, isolated_cache
):
    """LoRA adapts no output layer: it (and the embeddings tied to it) keeps the merged block
    size, 64 on the CPU, quantized exactly as a merged target's, where the layers take 32."""
    import onnx
    from onnx import numpy_helper

    blocks = int4_blocks(exported_int4)
    head = "/lm_head/MatMul_Q4"
    assert blocks.pop(head) == 64 and blocks.pop("/model/embed_tokens/GatherBlockQuantized") == 64
    assert blocks and set(blocks.values()) == {32}
    merged = OptimizeTarget(name="merged4", provider="CPUExecutionProvider", precision="int4")
    merged_folder = export_target(merged, tiny_model, tmp_path, cache_dir=isolated_cache / "b").path
    assert int4_blocks(merged_folder)[head] == 64

    def head_arrays(folder: Path) -> list[np.ndarray]:
        model = onnx.load(str(folder / "model.onnx"))
        node = next(n for n in model.graph.node if n.name == head)
        arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return [arrays[name] for name in node.input[1:3]]

    for ours, theirs in zip(head_arrays(exported_int4), head_arrays(merged_folder), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    # the embeddings read the new blocks (a block size that does not match fails at load)
    base = genai_logits(exported_int4, None)
    assert np.corrcoef(base, torch_logits(tiny_model, None))[0, 1] > 0.95


def test_dora_adapters_cannot_be_kept_separate(tiny_model, tmp_path, isolated_cache):
    dora = make_adapter(tiny_model, tmp_path / "dora", 3, ["q_proj"], use_dora=True)
    target = OptimizeTarget(
        name="dora", provider="CPUExecutionProvider", precision="fp32", merge_adapter=False
    )
    with pytest.raises(InputError) as info:
        export_target(
            target, tiny_model, tmp_path / "out", cache_dir=isolated_cache / "b", adapters={"d": dora}
        )
    assert "not plain LoRA" in info.value.message and "mergeAdapter: true" in info.value.message
