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


def attention_inputs() -> onnx.ModelProto:
    """q, k and v read one input (a separate adapter's graph keeps them apart); their sum out."""
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
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])],
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
