"""What a separate adapter's LoRA branch costs per kernel choice: prototypes, never shipped (issue 26).

    .venv/bin/python bench/lora_kernels.py --json bench/results/lora_kernels.json

A target with its adapter kept separate computes ``y + (x @ A) @ B`` beside each int4
projection, with ``A`` and ``B`` bound per request as graph inputs (onnxruntime-genai's
adapters).  This times that branch, one thread per CPU, for SmolLM2's fused groups (rank 16:
q/k/v, gate/up, o, down) as slmops writes them (fp32 ``MatMul``) against two ways to read
fewer bytes:

* ``DynamicQuantizeMatMul`` over int8 weights per column;
* ``MatMulNBits`` over 8-bit blocks of 32 (the int4 base's kernel, 8 bits).

Each is run over ``--copies`` distinct sets of weights in turn, so that they stream from
memory as a model's 30 layers do, not from cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _measure import provenance  # noqa: E402

# (group, K, fused rank, N): SmolLM2-135M's LoRA groups at rank 16 in slmops' fused layout
GROUPS = [("q/k/v", 576, 48, 960), ("gate/up", 576, 32, 3072), ("o", 576, 16, 576), ("down", 1536, 16, 576)]
KERNELS = ("fp32 MatMul", "int8 DynamicQuantizeMatMul", "8-bit MatMulNBits")


def branch(kernel: str, k: int, rank: int, n: int, block: int = 32):
    """The branch's graph and its inputs (name, ONNX type, shape), the adapter's weights among them."""
    from onnx import TensorProto, helper

    f, i8, u8 = TensorProto.FLOAT, TensorProto.INT8, TensorProto.UINT8
    x, y = ("x", f, [1, 1, k]), ("y", f, [1, 1, n])
    if kernel == "fp32 MatMul":
        nodes = [helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("MatMul", ["h", "B"], ["d"])]
        inputs = [x, ("A", f, [k, rank]), ("B", f, [rank, n]), y]
    elif kernel == "int8 DynamicQuantizeMatMul":
        nodes = [
            helper.make_node("DynamicQuantizeMatMul", ["x", "A", "as", "az"], ["h"], domain="com.microsoft"),
            helper.make_node("DynamicQuantizeMatMul", ["h", "B", "bs", "bz"], ["d"], domain="com.microsoft"),
        ]
        inputs = [x, ("A", i8, [k, rank]), ("as", f, [rank]), ("az", i8, [rank])]
        inputs += [("B", i8, [rank, n]), ("bs", f, [n]), ("bz", i8, [n]), y]
    else:

        def nbits(a: str, s: str, out: str, kk: int, nn: int):
            return helper.make_node(
                "MatMulNBits",
                [a, s[0], s[1]],
                [out],
                domain="com.microsoft",
                K=kk,
                N=nn,
                bits=8,
                block_size=block,
            )

        ka, kb = -(-k // block), -(-rank // block)
        nodes = [nbits("x", ("A", "as"), "h", k, rank), nbits("h", ("B", "bs"), "d", rank, n)]
        inputs = [x, ("A", u8, [rank, ka, block]), ("as", f, [rank * ka])]
        inputs += [("B", u8, [n, kb, block]), ("bs", f, [n * kb]), y]
    nodes.append(helper.make_node("Add", ["y", "d"], ["out"]))
    graph = helper.make_graph(
        nodes,
        "lora",
        [helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in inputs],
        [helper.make_tensor_value_info("out", f, [1, 1, n])],
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets), inputs


def microseconds(kernel: str, k: int, rank: int, n: int, copies: int, repeats: int, threads: int) -> float:
    """Per branch call, each call bound to the next of ``copies`` sets of weights."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto

    model, inputs = branch(kernel, k, rank, n)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    bindings = []
    for _ in range(copies):
        io = session.io_binding()
        for name, kind, shape in inputs:
            if kind == TensorProto.FLOAT:
                value = rng.random(shape, dtype=np.float32) * 0.01
            elif kind == TensorProto.INT8:
                value = (
                    np.zeros(shape, np.int8)
                    if name.endswith("z")
                    else rng.integers(-127, 127, shape, dtype=np.int8)
                )
            else:
                value = rng.integers(0, 255, shape, dtype=np.uint8)
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
        io.bind_output("out")
        bindings.append(io)
    for io in bindings:  # warm-up
        session.run_with_iobinding(io)
    started = time.perf_counter()
    for _ in range(repeats):
        for io in bindings:
            session.run_with_iobinding(io)
    return 1e6 * (time.perf_counter() - started) / (repeats * copies)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--copies", type=int, default=120, help="distinct weight sets per kernel (30 layers x 4 groups)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="passes over the copies")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from slmops_pipelines.steps.cpus import usable_cpus

    args = parse(argv)
    threads = usable_cpus()
    rows = []
    for group, k, rank, n in GROUPS:
        for kernel in KERNELS:
            us = microseconds(kernel, k, rank, n, args.copies, args.repeats, threads)
            rows.append(
                {"group": group, "k": k, "rank": rank, "n": n, "kernel": kernel, "us_per_call": round(us, 1)}
            )
    figures = provenance(argv, "onnxruntime")
    print(f"machine: {figures['machine']}")
    print(f"command: {figures['command']}")
    print(f"{'group':8} {'kernel':28} {'us/call':>8}")
    for row in rows:
        print(f"{row['group']:8} {row['kernel']:28} {row['us_per_call']:>8}")
    if args.json:
        args.json.write_text(json.dumps({**figures, "threads": threads, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
