"""Gate and up projections as one ``MatMulNBits``, split after: one kernel call instead of two.

A token decoded by a small model is hundreds of short kernels whose cost per call (the thread
pool's dispatch, quantizing the activations to int8) rivals the bytes they read (the profile in
docs/benchmarks.md).  The model builder already fuses the query, key and value projections; this
does the same for the MLP's gate and up projections, which read the same input: their packed
weights, scales and zero points are stacked along N (each row of a ``MatMulNBits`` weight is
quantized on its own, so stacking rows changes no number), and a ``Split`` hands each consumer
the outputs it read before, under the same names.  Separate adapters are untouched: their LoRA
branches add to those outputs.

Pure graph surgery on an ``onnx.ModelProto`` with its weights loaded; nothing is measured here.
"""

from __future__ import annotations

import re
from typing import Any

GATE = re.compile(r"^(?P<prefix>.*/mlp/)gate_proj/MatMul(?P<suffix>_Q\d+)?$")


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pairs(graph: Any) -> list[tuple[Any, Any]]:
    """(gate, up) ``MatMulNBits`` nodes of one layer that read one input with one quantization."""
    by_name = {node.name: node for node in graph.node if node.op_type == "MatMulNBits"}
    pairs = []
    for name, gate in by_name.items():
        match = GATE.match(name)
        if not match:
            continue
        up = by_name.get(f"{match['prefix']}up_proj/MatMul{match['suffix'] or ''}")
        if up is None or up.input[0] != gate.input[0] or len(up.input) != len(gate.input):
            continue
        a, b = _attributes(gate), _attributes(up)
        if {k: v for k, v in a.items() if k != "N"} != {k: v for k, v in b.items() if k != "N"}:
            continue
        if len(gate.input) > 3 and any(gate.input[3:]):  # zero points, g_idx, bias: not stacked here
            continue
        pairs.append((gate, up))
    return pairs


def fuse_gate_up(model: Any) -> int:
    """Fuse every (gate, up) pair of ``model`` in place; return how many were fused."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    used_elsewhere = {name for node in graph.node for name in node.input}
    fused = 0
    for gate, up in _pairs(graph):
        if not all(name in initializers for name in (*gate.input[1:3], *up.input[1:3])):
            continue  # weights that are not constants (an adapter's inputs): left alone
        prefix = gate.name.rsplit("gate_proj/", 1)[0]
        stacked = []
        for index, kind in ((1, "weight"), (2, "scales")):
            arrays = [numpy_helper.to_array(initializers[node.input[index]]) for node in (gate, up)]
            stacked.append(
                numpy_helper.from_array(np.concatenate(arrays, axis=0), f"{prefix}gate_up_proj.{kind}")
            )
        attrs = _attributes(gate)
        n_gate, n_up = attrs["N"], _attributes(up)["N"]
        joined = f"{prefix}gate_up_proj/MatMul/output_0"
        matmul = onnx.helper.make_node(
            "MatMulNBits",
            [gate.input[0], stacked[0].name, stacked[1].name],
            [joined],
            name=f"{prefix}gate_up_proj/MatMul",
            domain="com.microsoft",
            **{**attrs, "N": n_gate + n_up},
        )
        sizes = numpy_helper.from_array(
            np.array([n_gate, n_up], dtype=np.int64), f"{prefix}gate_up_proj.split"
        )
        split = onnx.helper.make_node(
            "Split",
            [joined, sizes.name],
            [gate.output[0], up.output[0]],
            name=f"{prefix}gate_up_proj/Split",
            axis=-1,
        )
        nodes = list(graph.node)
        position = min(nodes.index(gate), nodes.index(up))  # both read one input: the earlier place
        for node in (gate, up):
            graph.node.remove(node)
        graph.node.insert(position, split)
        graph.node.insert(position, matmul)
        graph.initializer.extend([*stacked, sizes])
        fused += 1
    still_used = {name for node in graph.node for name in node.input}
    for name in list(initializers):
        if name in used_elsewhere and name not in still_used:
            graph.initializer.remove(initializers[name])
    return fused
