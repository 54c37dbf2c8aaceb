"""Projections that read one input fused into one MatMulNBits: the same numbers, fewer kernels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from slmops_pipelines.steps.optimize.fuse import fuse_projections

K, N, BLOCK = 64, 48, 32


def _nbits(
    name: str, rng: np.random.Generator, *, n: int = N, zero_points: bool = False, folder: str = "mlp"
) -> tuple:
    blocks = K // BLOCK
    weight = numpy_helper.from_array(
        rng.integers(0, 256, (n, blocks, BLOCK // 2), dtype=np.uint8), f"{name}.w"
    )
    scales = numpy_helper.from_array(rng.random((n, blocks), dtype=np.float32) / 10, f"{name}.s")
    inputs = ["x", weight.name, scales.name]
    initializers = [weight, scales]
    if zero_points:
        zp = numpy_helper.from_array(
            rng.integers(0, 256, (n, (blocks + 1) // 2), dtype=np.uint8), f"{name}.z"
        )
        inputs.append(zp.name)
        initializers.append(zp)
    node = helper.make_node(
        "MatMulNBits",
        inputs,
        [f"/model/layers.0/{folder}/{name}/MatMul/output_0"],
        name=f"/model/layers.0/{folder}/{name}/MatMul_Q4",
        domain="com.microsoft",
        K=K,
        N=n,
        bits=4,
        block_size=BLOCK,
        accuracy_level=4,
    )
    return node, initializers


def mlp(*, up_n: int = N, zero_points: bool = False) -> onnx.ModelProto:
    """gate -> SiLU, times up: the builder's MLP up to the down projection."""
    rng = np.random.default_rng(0)
    gate, gate_init = _nbits("gate_proj", rng, zero_points=zero_points)
    up, up_init = _nbits("up_proj", rng, n=up_n, zero_points=zero_points)
    g, u = gate.output[0], up.output[0]
    nodes = [
        gate,
        up,
        helper.make_node("Sigmoid", [g], ["sig"]),
        helper.make_node("Mul", [g, "sig"], ["act"]),
        helper.make_node("Mul", ["act", u], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])],
        [*gate_init, *up_init],
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def test_one_kernel_gives_exactly_what_the_two_gave():
    x = np.random.default_rng(1).standard_normal((3, K), dtype=np.float32)
    model = mlp()
    before = run(model, x)
    assert fuse_projections(model) == 1
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulNBits") == 1 and "Split" in ops
    fused = next(node for node in model.graph.node if node.op_type == "MatMulNBits")
    assert {a.name: a.i for a in fused.attribute}["N"] == 2 * N
    # The two weights are gone: only the stacked one (and the split sizes) remain.
    assert sorted(i.name for i in model.graph.initializer) == [
        "/model/layers.0/mlp/gate_up_proj.scales",
        "/model/layers.0/mlp/gate_up_proj.split",
        "/model/layers.0/mlp/gate_up_proj.weight",
    ]
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(run(model, x), before)


def _other_accuracy_level() -> onnx.ModelProto:
    model = mlp()
    up = model.graph.node[1]
    next(a for a in up.attribute if a.name == "accuracy_level").i = 0
    return model


@pytest.mark.parametrize(
    "model", [mlp(zero_points=True), _other_accuracy_level()], ids=["zero-points", "other-accuracy-level"]
)
def test_pairs_it_cannot_stack_exactly_are_left_alone(model):
    nodes = len(model.graph.node)
    assert fuse_projections(model) == 0 and len(model.graph.node) == nodes


def attention_inputs(leading: tuple = (None,)) -> onnx.ModelProto:
    """q, k and v read one input (a separate adapter's graph keeps them apart); their sum out.

    ``leading``: the axes before the features (the builder's graphs: batch and sequence)."""
    rng = np.random.default_rng(2)
    made = [
        _nbits(name, rng, n=n, folder="attn") for name, n in (("q_proj", 64), ("k_proj", 32), ("v_proj", 32))
    ]
    q, k, v = (node.output[0] for node, _ in made)
    nodes = [node for node, _ in made] + [
        helper.make_node("Slice", [q, "zero", "half", "last"], ["q_half"]),
        helper.make_node("Add", ["q_half", k], ["qk"]),
        helper.make_node("Add", ["qk", v], ["y"]),
    ]
    consts = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([32], dtype=np.int64), "half"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last"),
    ]
    graph = helper.make_graph(
        nodes,
        "attn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*leading, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*leading, 32])],
        [init for _, inits in made for init in inits] + consts,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_query_key_and_value_kept_apart_become_one_kernel():
    x = np.random.default_rng(3).standard_normal((2, K), dtype=np.float32)
    model = attention_inputs()
    before = run(model, x)
    assert fuse_projections(model) == 1
    fused = [node for node in model.graph.node if node.op_type == "MatMulNBits"]
    assert [node.name for node in fused] == ["/model/layers.0/attn/qkv_proj/MatMul"]
    assert {a.name: a.i for a in fused[0].attribute}["N"] == 128
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(run(model, x), before)


ATTENTION = (("q_proj", 64), ("k_proj", 32), ("v_proj", 32))
RANK = 4


def attention_with_lora() -> onnx.ModelProto:
    """q, k, v with a separate adapter's LoRA branches (A and B graph inputs, rank 0 by default)."""
    model = attention_inputs(leading=(None, None))
    graph = model.graph
    for node in list(graph.node):
        if node.op_type != "MatMulNBits":
            continue
        member = node.name.split("/")[-2]
        base, n = node.output[0], dict(ATTENTION)[member]
        stem, prefix = f"model.layers.0.attn.{member}", f"/model/layers.0/attn/{member}"
        a, b = f"{stem}.lora_A.MatMul.weight", f"{stem}.lora_B.MatMul.weight"
        graph.input.extend(
            [
                helper.make_tensor_value_info(a, TensorProto.FLOAT, [K, "lora_r"]),
                helper.make_tensor_value_info(b, TensorProto.FLOAT, ["lora_r", n]),
            ]
        )
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.zeros((K, 0), np.float32), a),
                numpy_helper.from_array(np.zeros((0, n), np.float32), b),
            ]
        )
        low, delta, summed = f"{prefix}/lora_A/out", f"{prefix}/lora_B/out", f"{prefix}/lora/Add/output_0"
        for consumer in graph.node:  # what read the projection now reads it with the adapter's delta
            consumer.input[:] = [summed if i == base else i for i in consumer.input]
        graph.node.extend(
            [
                helper.make_node("MatMul", ["x", a], [low], name=f"{prefix}/lora_A/MatMul"),
                helper.make_node("MatMul", [low, b], [delta], name=f"{prefix}/lora_B/MatMul"),
                helper.make_node("Add", [base, delta], [summed], name=f"{prefix}/lora/Add"),
            ]
        )
    from slmops_pipelines.steps.optimize.fuse import _sort_topologically

    _sort_topologically(graph)
    return model


def run_with(model: onnx.ModelProto, x: np.ndarray, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x, **feeds})[0]


@pytest.mark.parametrize("fuse_base", [True, False], ids=["fused-projections", "separate-projections"])
def test_lora_branches_of_a_group_become_two_matmuls_with_the_same_numbers(fuse_base):
    from slmops_pipelines.steps.optimize.adapters import _fuse_group
    from slmops_pipelines.steps.optimize.fuse import fuse_lora

    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, K), dtype=np.float32)  # [batch, sequence, features]
    model = attention_with_lora()
    # An adapter that adapts q at rank 4 and v at rank 2, not k (its rows of the fused B are zeros).
    feeds = {}
    for member, n in ATTENTION:
        rank = {"q_proj": RANK, "v_proj": RANK // 2}.get(member)
        if rank:
            feeds[f"model.layers.0.attn.{member}.lora_A.MatMul.weight"] = rng.standard_normal(
                (K, rank), np.float32
            )
            feeds[f"model.layers.0.attn.{member}.lora_B.MatMul.weight"] = rng.standard_normal(
                (rank, n), np.float32
            )
    before, base_only = run_with(model, x, feeds), run_with(model, x, {})
    assert np.abs(before - base_only).max() > 0.1  # the adapter does something
    if fuse_base:
        assert fuse_projections(model) == 1
    [group] = fuse_lora(model)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMul") == 2 and ops.count("Add") == (3 if fuse_base else 5)
    onnx.checker.check_model(model)
    graph_inputs = {name: ([K, RANK], 1) for pair in group.members for name in pair}
    fused_feeds = dict(feeds)
    _fuse_group(fused_feeds, group, graph_inputs)
    # q's 64 columns are two blocks of k's and v's 32: four blocks of rank 4, no zero blocks between members
    assert fused_feeds[group.a].shape == (3, K, RANK) and fused_feeds[group.b].shape == (4, RANK, 32)
    np.testing.assert_allclose(run_with(model, x, fused_feeds), before, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        run_with(model, x, {}), base_only, rtol=1e-6, atol=1e-6
    )  # no adapter: the base


def attention_layer() -> onnx.ModelProto:
    """q, k and v projections read by GroupQueryAttention (2 query heads, 1 key/value head of 32),
    with a key/value cache of 3 positions, as a separate adapter's graph feeds it."""
    rng = np.random.default_rng(5)
    made = [_nbits(name, rng, n=n, folder="attn") for name, n in ATTENTION]
    gqa = helper.make_node(
        "GroupQueryAttention",
        [*(node.output[0] for node, _ in made), "past_key", "past_value", "seqlens_k", "total"],
        ["y", "present_key", "present_value"],
        name="/model/layers.0/attn/GroupQueryAttention",
        domain="com.microsoft",
        num_heads=2,
        kv_num_heads=1,
    )
    cache = [1, 1, "past", 32]
    graph = helper.make_graph(
        [node for node, _ in made] + [gqa],
        "attn",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", K]),
            helper.make_tensor_value_info("past_key", TensorProto.FLOAT, cache),
            helper.make_tensor_value_info("past_value", TensorProto.FLOAT, cache),
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
            helper.make_tensor_value_info("total", TensorProto.INT32, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq", 64]),
            helper.make_tensor_value_info("present_key", TensorProto.FLOAT, [1, 1, "total", 32]),
            helper.make_tensor_value_info("present_value", TensorProto.FLOAT, [1, 1, "total", 32]),
        ],
        [init for _, inits in made for init in inits],
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_attention_reads_the_fused_query_key_and_value_packed_without_a_split():
    from slmops_pipelines.steps.optimize.fuse import pack_attention

    rng = np.random.default_rng(6)
    feeds = {
        "x": rng.standard_normal((1, 1, K), dtype=np.float32),  # one new token after 3 cached
        "past_key": rng.standard_normal((1, 1, 3, 32), dtype=np.float32),
        "past_value": rng.standard_normal((1, 1, 3, 32), dtype=np.float32),
        "seqlens_k": np.array([3], dtype=np.int32),
        "total": np.array(4, dtype=np.int32),
    }

    def outputs(model: onnx.ModelProto) -> list[np.ndarray]:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, feeds)

    model = attention_layer()
    assert pack_attention(model) == 0  # three projections: nothing packed to read
    before = outputs(model)
    assert fuse_projections(model) == 1 and pack_attention(model) == 1
    ops = [node.op_type for node in model.graph.node]
    assert ops == ["MatMulNBits", "GroupQueryAttention"]
    assert list(model.graph.node[1].input[:3]) == ["/model/layers.0/attn/qkv_proj/MatMul/output_0", "", ""]
    assert not [i for i in model.graph.initializer if i.name.endswith(".split")]
    onnx.checker.check_model(model)
    for got, want in zip(outputs(model), before, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
