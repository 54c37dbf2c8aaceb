"""Projections that read one input as one ``MatMulNBits``, split after: one kernel call, not two or three.

A token decoded by a small model is hundreds of short kernels whose cost per call (the thread
pool's dispatch, quantizing the activations to int8) rivals the bytes they read (the profile in
docs/benchmarks.md).  The model builder fuses the query, key and value projections of a merged
model, but not the MLP's gate and up projections, nor q/k/v where separate adapters keep them
apart.  Here each such group -- ``mlp/{gate,up}_proj``, ``attn/{q,k,v}_proj`` -- that reads one
input with one quantization is stacked along N: packed weights and scales row after row (each
row of a ``MatMulNBits`` weight is quantized on its own, so stacking changes no number), and a
``Split`` hands each consumer the output it read before, under the same name.

A separate adapter's LoRA branches (``MatMul(MatMul(x, A), B)`` added to each projection,
A and B graph inputs that each adapter file sets) are grouped the same way
(:func:`fuse_lora`), so that a group costs two small MatMuls and one Add, added to the fused
projection before its Split, instead of two MatMuls and an Add per member.  Both MatMuls are
batched, one product per member or block: the members' A are stacked, ``[members, in, r]``,
and ``x`` (unsqueezed to ``[..., 1, 1, in]``) times them gives each member's rank-r slice,
``[..., members, 1, r]``; their B are cut into column blocks of one width (the widths'
greatest common divisor: q's 576 columns are three blocks of k's and v's 192) and stacked,
``[blocks, r, width]``, each block multiplied by its member's slice (a ``Gather`` repeats the
slice of a member with several blocks), and a ``Reshape`` joins the blocks.  A block
diagonal B would give the same products, but its zero blocks are bytes read on every token:
a third of the LoRA weights of SmolLM2's q/k/v and gate/up groups; and batched products are
what onnxruntime's thread pool splits between threads, where one ``[in, members * r]``
product is too small to split.  Adapter files are written in this layout
(steps/optimize/adapters.py).

Last, attention that reads the fused query, key and value through a ``Split`` reads them packed
instead (:func:`pack_attention`): ``GroupQueryAttention`` takes one ``[.., q + k + v]`` input,
as the builder's merged graphs feed it, and the ``Split`` (a kernel call per layer and token)
goes.

Pure graph surgery on an ``onnx.ModelProto`` with its weights loaded; nothing is measured here.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
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
    _drop_unread(graph, used_before)  # the members' own weights and scales
    return fused


def _drop_unread(graph: Any, names: set[str]) -> None:
    """Remove the initializers among ``names`` that no node reads any more."""
    read = {i for node in graph.node for i in node.input}
    for init in [i for i in graph.initializer if i.name in names and i.name not in read]:
        graph.initializer.remove(init)


@dataclass(frozen=True)
class LoraGroup:
    """One fused LoRA branch: the graph inputs that stand for its members' A and B inputs.

    ``a`` is ``[members, in, r]``: each member's A, ``r`` the largest rank an adapter gives the
    group's members (a smaller rank is padded with zero columns, a member the adapter leaves
    alone is all zeros).  ``b`` is ``[len(picks), r, block]``: the members' B cut
    into column blocks of ``block`` and stacked, in output order; ``picks[j]`` is the member
    whose rows block ``j`` holds.
    """

    a: str
    b: str
    members: tuple[tuple[str, str], ...]  # each member's (A input, B input), in output order
    widths: tuple[int, ...]  # each member's N

    @property
    def block(self) -> int:
        return math.gcd(*self.widths)

    @property
    def picks(self) -> tuple[int, ...]:
        return tuple(i for i, width in enumerate(self.widths) for _ in range(width // self.block))


def _value_info(graph: Any, name: str) -> Any:
    return next(i for i in graph.input if i.name == name)


def _dims(info: Any) -> list[Any]:
    return [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]


def _lora_branches(graph: Any, prefix: str, members: tuple[str, ...]) -> list[tuple[Any, Any, Any]] | None:
    """(A MatMul, B MatMul, Add) of each member, when every member has a branch on one input."""
    by_name = {node.name: node for node in graph.node}
    inputs = {i.name for i in graph.input}
    branches = []
    for member in members:
        a = by_name.get(f"{prefix}{member}/lora_A/MatMul")
        b = by_name.get(f"{prefix}{member}/lora_B/MatMul")
        add = by_name.get(f"{prefix}{member}/lora/Add")
        if a is None or b is None or add is None or b.input[0] != a.output[0]:
            return None
        if a.input[1] not in inputs or b.input[1] not in inputs or b.output[0] not in add.input:
            return None
        branches.append((a, b, add))
    return branches if len({a.input[0] for a, _, _ in branches}) == 1 else None


def fuse_lora(model: Any) -> list[LoraGroup]:
    """Fuse every group's LoRA branches in place (see the module's docstring); return the groups."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    layers = sorted({m["prefix"] for node in graph.node if (m := NODE.match(node.name))})
    groups: list[LoraGroup] = []
    for prefix in layers:
        for folder, members, fused in GROUPS:
            if not prefix.endswith(f"/{folder}/"):
                continue
            branches = _lora_branches(graph, prefix, members)
            if branches is None:
                continue
            group = _fused_inputs(graph, branches, members[0], fused)
            new, removed = _fused_nodes(graph, prefix, fused, group, branches, producers)
            for node in removed:
                graph.node.remove(node)
            graph.node.extend(new)
            for name in (n for pair in group.members for n in pair):
                graph.input.remove(_value_info(graph, name))
                if name in initializers:
                    graph.initializer.remove(initializers[name])
            groups.append(group)
    if groups:
        _sort_topologically(graph)
    return groups


def _fused_inputs(graph: Any, branches: list[tuple[Any, Any, Any]], first: str, fused: str) -> LoraGroup:
    """The group's two graph inputs (rank 0 by default: no adapter, exactly the base model)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    infos = [(_value_info(graph, a.input[1]), _value_info(graph, b.input[1])) for a, b, _ in branches]
    features = _dims(infos[0][0])[0]
    widths = tuple(int(_dims(b_info)[1]) for _, b_info in infos)
    elem_type = infos[0][0].type.tensor_type.elem_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    stem = infos[0][0].name.split(f".{first}.lora_A.")[0]  # model.layers.N.attn
    a_name, b_name = f"{stem}.{fused}.lora_A.MatMul.weight", f"{stem}.{fused}.lora_B.MatMul.weight"
    members = tuple((a.input[1], b.input[1]) for a, b, _ in branches)
    group = LoraGroup(a_name, b_name, members, widths)
    rank = f"lora_r_{fused}"
    graph.input.extend(
        [
            onnx.helper.make_tensor_value_info(a_name, elem_type, [len(members), features, rank]),
            onnx.helper.make_tensor_value_info(b_name, elem_type, [len(group.picks), rank, group.block]),
        ]
    )
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros((len(members), features, 0), dtype), a_name),
            numpy_helper.from_array(np.zeros((len(group.picks), 0, group.block), dtype), b_name),
        ]
    )
    return group


def _fused_nodes(
    graph: Any,
    prefix: str,
    fused: str,
    group: LoraGroup,
    branches: list[tuple[Any, Any, Any]],
    producers: dict[str, Any],
) -> tuple[list[Any], list[Any]]:
    """The group's new nodes, and the members' nodes they replace."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    x = branches[0][0].input[0]
    new, delta = _batched_branch(graph, f"{prefix}{fused}", x, group)
    bases = [next(i for i in add.input if i != b.output[0]) for _, b, add in branches]
    split = producers.get(bases[0])
    if split is not None and split.op_type == "Split" and list(split.output) == bases:
        # The projections are one fused kernel: add the group's delta before its Split, which
        # then hands out what the members' Adds did.
        summed = f"{prefix}{fused}/lora/Add/output_0"
        new.append(
            onnx.helper.make_node("Add", [split.input[0], delta], [summed], name=f"{prefix}{fused}/lora/Add")
        )
        split.input[0] = summed
        del split.output[:]
        split.output.extend(add.output[0] for _, _, add in branches)
        return new, [node for branch in branches for node in branch]
    # Separate projections: split the delta back into the members' Adds.
    sizes = numpy_helper.from_array(np.array(group.widths, dtype=np.int64), f"{prefix}{fused}.lora.split")
    graph.initializer.append(sizes)
    outputs = [b.output[0] for _, b, _ in branches]
    new.append(
        onnx.helper.make_node(
            "Split", [delta, sizes.name], outputs, name=f"{prefix}{fused}/lora/Split", axis=-1
        )
    )
    return new, [node for a, b, _ in branches for node in (a, b)]


def _batched_branch(graph: Any, stem: str, x: str, group: LoraGroup) -> tuple[list[Any], str]:
    """The nodes of each member's ``x @ A`` times each block of ``b``, and the name of the
    ``[.., N]`` delta.

    Activations are ``[batch, sequence, features]`` in the builder's decoder graphs: the last
    Reshape keeps those two axes (a 0 copies the input's) and joins the blocks.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    members, blocks = len(group.members), len(group.picks)
    constants = {
        f"{stem}.lora.axes": [-3, -2],  # [..., in] -> [..., 1, 1, in]: a row per member's product
        f"{stem}.lora.join_shape": [0, 0, sum(group.widths)],
    }
    rows = f"{stem}/lora_A/Unsqueeze/output_0"
    split = f"{stem}/lora_A/MatMul/output_0"  # [..., members, 1, r]
    nodes = [
        onnx.helper.make_node("Unsqueeze", [x, f"{stem}.lora.axes"], [rows], name=f"{stem}/lora_A/Unsqueeze"),
        onnx.helper.make_node("MatMul", [rows, group.a], [split], name=f"{stem}/lora_A/MatMul"),
    ]
    if blocks > members:  # a member with several blocks: its slice, once per block
        constants[f"{stem}.lora.picks"] = list(group.picks)
        picked = f"{stem}/lora_A/Gather/output_0"
        nodes.append(
            onnx.helper.make_node(
                "Gather", [split, f"{stem}.lora.picks"], [picked], name=f"{stem}/lora_A/Gather", axis=2
            )
        )
        split = picked
    products, delta = f"{stem}/lora_B/MatMul/output_0", f"{stem}/lora_B/Reshape/output_0"
    nodes += [
        onnx.helper.make_node("MatMul", [split, group.b], [products], name=f"{stem}/lora_B/MatMul"),
        onnx.helper.make_node(
            "Reshape", [products, f"{stem}.lora.join_shape"], [delta], name=f"{stem}/lora_B/Reshape"
        ),
    ]
    graph.initializer.extend(
        numpy_helper.from_array(np.array(values, np.int64), name) for name, values in constants.items()
    )
    return nodes, delta


def pack_attention(model: Any) -> int:
    """Feed each ``GroupQueryAttention`` whose query, key and value are one ``Split``'s three
    outputs (read by nothing else) the Split's input, packed; return how many were packed."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    readers = Counter(name for node in graph.node for name in node.input)
    outputs = {o.name for o in graph.output}
    sizes: set[str] = set()
    packed = 0
    for node in [n for n in graph.node if n.op_type == "GroupQueryAttention"]:
        split = producers.get(node.input[0]) if len(node.input) >= 3 else None
        if split is None or split.op_type != "Split" or list(split.output) != list(node.input[:3]):
            continue
        if _attributes(split).get("axis") not in (-1, 2) or any(
            readers[o] != 1 or o in outputs for o in split.output
        ):
            continue
        node.input[0], node.input[1], node.input[2] = split.input[0], "", ""
        graph.node.remove(split)
        sizes.update(split.input[1:])
        packed += 1
    _drop_unread(graph, sizes)  # the Splits' sizes
    return packed


def _sort_topologically(graph: Any) -> None:
    """Order the nodes so that each comes after what it reads (the graph's order where it may)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        still = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                still.append(node)
        if len(still) == len(pending):
            raise RuntimeError(f"the graph has a cycle or a missing input at {still[0].name}")
        pending = still
    del graph.node[:]
    graph.node.extend(ordered)
