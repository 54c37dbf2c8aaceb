"""Projections that read one input as one ``MatMulNBits``, split after: one kernel call, not two or three.

A token decoded by a small model is hundreds of short kernels whose cost per call (the thread
pool's dispatch, quantizing the activations to int8) rivals the bytes they read (the profile in
docs/benchmarks.md).  The model builder fuses the query, key and value projections of a merged
model, but not the MLP's gate and up projections, nor q/k/v where separate adapters keep them
apart.  Here each such group -- ``mlp/{gate,up}_proj``, ``attn/{q,k,v}_proj`` -- that reads one
input with one quantization is stacked along N: packed weights and scales row after row (each
row of a ``MatMulNBits`` weight is quantized on its own, so stacking changes no number), and a
``Split`` hands each consumer the output it read before, under the same name.  A separate
adapter's LoRA branches add to those outputs and are untouched.

Pure graph surgery on an ``onnx.ModelProto`` with its weights loaded; nothing is measured here.
"""

from __future__ import annotations

import re
from typing import Any

# (the folder of the group's nodes, its members in output order, the fused node's name)
GROUPS = (
    ("mlp", ("gate_proj", "up_proj"), "gate_up_proj"),
    ("attn", ("q_proj", "k_proj", "v_proj"), "qkv_proj"),
)
NODE = re.compile(r"^(?P<prefix>.*/)(?P<member>[a-z_]+)/MatMul(?P<suffix>_Q\d+)?$")


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _stackable(nodes: list[Any]) -> bool:
    """One input, constants only for weights and scales, no zero points, one quantization but N."""
    first = nodes[0]
    if any(len(node.input) > 3 and any(node.input[3:]) for node in nodes):
        return False  # zero points, g_idx, bias: not stacked here
    if any(node.input[0] != first.input[0] for node in nodes):
        return False
    same = [{k: v for k, v in _attributes(node).items() if k != "N"} for node in nodes]
    return all(attrs == same[0] for attrs in same)


def _groups(graph: Any) -> list[tuple[str, str, list[Any]]]:
    """(prefix, fused name, member nodes) for every group found, in graph order."""
    by_name = {node.name: node for node in graph.node if node.op_type == "MatMulNBits"}
    found = []
    for name in by_name:
        match = NODE.match(name)
        if not match:
            continue
        for folder, members, fused in GROUPS:
            if match["member"] != members[0] or not match["prefix"].endswith(f"/{folder}/"):
                continue
            suffix = match["suffix"] or ""
            nodes = [by_name.get(f"{match['prefix']}{member}/MatMul{suffix}") for member in members]
            if all(n is not None for n in nodes) and _stackable(nodes):
                found.append((match["prefix"], fused, nodes))
    return found


def fuse_projections(model: Any) -> int:
    """Fuse every group of ``model`` in place; return how many were fused."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    used_before = {i for node in graph.node for i in node.input}
    fused = 0
    for prefix, name, nodes in _groups(graph):
        if not all(i in initializers for node in nodes for i in node.input[1:3]):
            continue  # weights that are not constants: left alone
        stacked = []
        for index, kind in ((1, "weight"), (2, "scales")):
            arrays = [numpy_helper.to_array(initializers[node.input[index]]) for node in nodes]
            stacked.append(numpy_helper.from_array(np.concatenate(arrays, axis=0), f"{prefix}{name}.{kind}"))
        widths = [_attributes(node)["N"] for node in nodes]
        joined = f"{prefix}{name}/MatMul/output_0"
        matmul = onnx.helper.make_node(
            "MatMulNBits",
            [nodes[0].input[0], stacked[0].name, stacked[1].name],
            [joined],
            name=f"{prefix}{name}/MatMul",
            domain="com.microsoft",
            **{**_attributes(nodes[0]), "N": sum(widths)},
        )
        sizes = numpy_helper.from_array(np.array(widths, dtype=np.int64), f"{prefix}{name}.split")
        split = onnx.helper.make_node(
            "Split",
            [joined, sizes.name],
            [node.output[0] for node in nodes],
            name=f"{prefix}{name}/Split",
            axis=-1,
        )
        order = list(graph.node)
        position = min(order.index(node) for node in nodes)  # they read one input: the earliest place
        for node in nodes:
            graph.node.remove(node)
        graph.node.insert(position, split)
        graph.node.insert(position, matmul)
        graph.initializer.extend([*stacked, sizes])
        fused += 1
    still_used = {i for node in graph.node for i in node.input}
    for unused in used_before - still_used:  # the members' own weights and scales
        if unused in initializers:
            graph.initializer.remove(initializers[unused])
    return fused
