"""The int4 output layer at a block size of its own, quantized anew from the source weights.

A target whose adapters stay separate takes a smaller int4 block (32 on the CPU, where a merged
target takes 64): the adapter sits on the base's rounding as it is.  But LoRA adapts no output
layer, and the output layer is a token's largest kernel (SmolLM2-135M: 49152 x 576, a third of
its weights, shared with the embedding table): at block 32 it alone cost 600 us of a 12 ms
token against block 64 (onnxruntime's profiler, bench/profile_decode.py).  So such a target
keeps the provider's merged block there: :func:`requantize_output_layer` quantizes the source
model's output weights with the model builder's own quantizer and settings (onnxruntime's
``MatMulNBitsQuantizer``, round to nearest, symmetric, int8 activations), exactly what a
merged target's output layer is, and points the output ``MatMulNBits`` and the embeddings'
``GatherBlockQuantized`` that share its weights at the new blocks.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from slmops_pipelines.specs.optimize import OptimizeTarget

OUTPUT = "/lm_head/MatMul"
SHARED_READERS = ("MatMulNBits", "GatherBlockQuantized")


def output_node(graph: Any) -> Any | None:
    """The output layer's int4 ``MatMulNBits`` (the builder names it ``/lm_head/MatMul_Q4``)."""
    for node in graph.node:
        if node.op_type == "MatMulNBits" and node.name.startswith(OUTPUT):
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            return node if bits == 4 else None
    return None


def source_output_weights(model_dir: Path) -> np.ndarray:
    """The output layer's weights ``[vocab, hidden]`` in fp32 (the embeddings where they are tied)."""
    import torch
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text())
    names = ["lm_head.weight"] + (["model.embed_tokens.weight"] if config.get("tie_word_embeddings") else [])
    index = model_dir / "model.safetensors.index.json"
    files = json.loads(index.read_text())["weight_map"] if index.exists() else {}
    for name in names:
        path = model_dir / files.get(name, "model.safetensors")
        if not path.exists():
            continue
        with safe_open(str(path), framework="pt") as tensors:
            if name in tensors.keys():  # safe_open has no __contains__
                return tensors.get_tensor(name).to(torch.float32).numpy()
    raise RuntimeError(f"{model_dir} has no output layer weights ({' or '.join(names)})")


def quantize_rtn(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` ``[N, K]`` as the builder's int4 RTN writes a MatMul's: packed blocks and scales."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        MatMulNBitsQuantizer,
        RTNWeightOnlyQuantConfig,
    )

    n, k = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name=OUTPUT)],
        "output_layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(np.ascontiguousarray(weight.T), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    quantizer = MatMulNBitsQuantizer(
        model,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,
        algo_config=RTNWeightOnlyQuantConfig(),
    )
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bar is print()ed
        quantizer.process()
    quantized: onnx.ModelProto = quantizer.model.model
    node = next(n for n in quantized.graph.node if n.op_type == "MatMulNBits")
    if len([i for i in node.input if i]) != 3:
        raise RuntimeError("the int4 quantizer wrote zero points where the builder writes none")
    arrays = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    return arrays[node.input[1]], arrays[node.input[2]]


def requantize_output_layer(model: Any, weight: np.ndarray, block_size: int) -> bool:
    """Give ``model``'s int4 output layer (and the embeddings reading its blocks) ``block_size``.

    False where there is nothing to do: no int4 output layer, already that block size, or
    source weights of another shape than the layer (a vocabulary the builder padded).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    node = output_node(graph)
    if node is None:
        return False
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attributes["block_size"] == block_size or weight.shape != (attributes["N"], attributes["K"]):
        return False
    packed, scales = quantize_rtn(weight, block_size)
    old_weight, old_scales = node.input[1], node.input[2]
    new_weight = f"lm_head.MatMul.weight_Q4G{block_size}"
    new_scales = f"lm_head.MatMul.weight_scale_G{block_size}"
    graph.initializer.extend(
        [numpy_helper.from_array(packed, new_weight), numpy_helper.from_array(scales, new_scales)]
    )
    renamed = {old_weight: new_weight, old_scales: new_scales}
    for reader in graph.node:
        if not renamed.keys() & set(reader.input):
            continue
        # the output layer, and the tied embeddings' GatherBlockQuantized (it reads the scales,
        # and the blocks through a Reshape to [vocab, bytes per row], the same bytes at 64)
        reader.input[:] = [renamed.get(i, i) for i in reader.input]
        for attribute in reader.attribute:
            if attribute.name == "block_size" and reader.op_type in SHARED_READERS:
                attribute.i = block_size
    read = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name in (old_weight, old_scales) and i.name not in read]:
        graph.initializer.remove(init)
    return True


def output_layer_block(target: OptimizeTarget) -> int | None:
    """The output layer's own block size, where it differs from the rest of an RTN int4 target's
    (a separate adapter's base); None where the builder's output layer stays (an int8 one too)."""
    q = target.quantization
    if target.precision != "int4" or q.int4_algorithm != "rtn" or q.lm_head_int8:
        return None
    block = target.int4_output_block_size
    return block if block != target.int4_block_size else None


def requantize_from_source(model: Any, model_dir: Path, block_size: int) -> bool:
    """:func:`requantize_output_layer` with the weights of the source model in ``model_dir``."""
    if output_node(model.graph) is None:
        return False
    return requantize_output_layer(model, source_output_weights(model_dir), block_size)
