"""Tied int4 embeddings for block sizes that do not divide the hidden size.

Where a model ties its embeddings to its output layer, the model builder gathers each token's
embedding from the int4 output layer's blocks (``GatherBlockQuantized``) after a ``Reshape`` of
its weight to ``[vocab, hidden * bits / 8]`` bytes.  The quantizer pads each row to whole
blocks, so where the block size does not divide the hidden size (SmolLM2's 576 in blocks of
128 or 256) that ``Reshape`` fails on the first token.  :func:`unpad_shared_embeddings` gathers
the padded rows instead and slices the padding off: the same embeddings, nothing duplicated.
"""

from __future__ import annotations

from typing import Any

GATHER = "GatherBlockQuantized"


def unpad_shared_embeddings(model: Any) -> bool:
    """Make the tied embeddings' gather read padded rows; True where the graph changed."""
    import numpy as np
    import onnx

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    changed = False
    for gather in [n for n in graph.node if n.op_type == GATHER]:
        reshape = producers.get(gather.input[0])
        weight = initializers.get(reshape.input[0]) if reshape is not None else None
        if reshape is None or reshape.op_type != "Reshape" or weight is None or len(weight.dims) != 3:
            continue
        vocab, blocks, block_bytes = weight.dims
        padded = blocks * block_bytes
        bits = next(a.i for a in gather.attribute if a.name == "bits")
        hidden = _hidden(bits, producers, initializers, reshape)
        if hidden is None or hidden * bits // 8 == padded:
            continue
        shape_name = f"{reshape.name}/padded_shape"
        graph.initializer.append(
            onnx.numpy_helper.from_array(np.array([vocab, padded], np.int64), shape_name)
        )
        reshape.input[1] = shape_name
        _slice_after(graph, gather, hidden)
        changed = True
    return changed


def _hidden(bits: int, producers: dict[str, Any], initializers: dict[str, Any], reshape: Any) -> int | None:
    """The hidden size the builder reshaped to: the second value of the Reshape's shape."""
    from onnx import numpy_helper

    name = reshape.input[1]
    if name in initializers:
        values = numpy_helper.to_array(initializers[name])
    elif name in producers and producers[name].op_type == "Constant":
        values = numpy_helper.to_array(producers[name].attribute[0].t)
    else:
        return None
    return int(values[-1]) * 8 // bits


def _slice_after(graph: Any, gather: Any, hidden: int) -> None:
    """Rename the gather's output and slice its last axis back to ``hidden`` under the old name."""
    import numpy as np
    import onnx

    out = gather.output[0]
    gather.output[0] = f"{out}/padded"
    bounds = {"starts": [0], "ends": [hidden], "axes": [-1]}
    names = []
    for key, value in bounds.items():
        name = f"{gather.name}/slice_{key}"
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(value, np.int64), name))
        names.append(name)
    node = onnx.helper.make_node("Slice", [gather.output[0], *names], [out], name=f"{gather.name}/Unpad")
    position = list(graph.node).index(gather) + 1
    graph.node.insert(position, node)
