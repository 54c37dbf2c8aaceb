"""What another int4 kernel would give batched decoding: a prototype, never shipped (issue 25).

    .venv/bin/slmops run examples/01-finetune-lora.yaml examples/08-optimize-cpu.yaml   # once
    .venv/bin/python bench/batch_kernels.py --json bench/results/batch_kernels.json

``slmops serve`` decodes concurrent requests as one batch, so its 8-client tokens/s is bounded
by how much cheaper a batch of 8 is than 8 batches of 1.  This measures, at one thread per
CPU, alternating rounds:

* **decode**: onnxruntime-genai decoding batches of ``--batches`` sequences (a 20-token
  prompt, 64 new tokens, the median of ``--rounds``) of an int4 target as built (every
  projection a ``MatMulNBits``: int4 blocks, int8 activations), against the same folder with
  each of those nodes replaced by ``DynamicQuantizeMatMul`` over the same weights
  re-quantized to int8 per output column (onnxruntime's packed int8 GEMM: twice the bytes,
  but one pass over the weights per batch);
* **one node**: a single ``MatMulNBits`` (K 576, N 3072: SmolLM2's gate and up projections)
  against ``DynamicQuantizeMatMul`` of that shape and a plain fp32 ``MatMul`` (the weights
  dequantized: what a dequantize-then-GEMM path costs), for 1 to 8 rows (decoding batches)
  and for ``--prompt-rows`` (a prompt's tokens in one call: the prefill path): what a row
  costs each.

The int8 copy is a prototype for the figure only: its answers differ slightly from the int4
target's, and slmops ships nothing made by it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _measure import provenance  # noqa: E402

TARGET = REPO / "runs" / "smollm2-tone-cpu" / "targets" / "cpu-int4"
PROMPT = [1, *range(100, 119)]


def as_int8_gemm(src: Path, dst: Path) -> int:
    """Copy the folder with every plain int4 ``MatMulNBits`` (no zero points) made
    ``DynamicQuantizeMatMul`` over int8 per-column weights; returns how many were replaced."""
    import shutil

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    shutil.copytree(src, dst)
    model = onnx.load(str(src / "model.onnx"))
    weights = {init.name: init for init in model.graph.initializer}
    nodes, added, replaced = [], [], 0
    for node in model.graph.node:
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type != "MatMulNBits" or attrs.get("bits") != 4 or len(node.input) > 3:
            nodes.append(node)
            continue
        k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
        packed = numpy_helper.to_array(weights[node.input[1]])  # [N, blocks, block/2]
        scales = numpy_helper.to_array(weights[node.input[2]]).reshape(n, -1)
        values = np.stack([packed & 0x0F, packed >> 4], axis=-1).astype(np.int8).reshape(n, -1, block) - 8
        w = (values * scales[:, :, None]).reshape(n, -1)[:, :k]
        column = np.abs(w).max(axis=1) / 127.0
        column[column == 0] = 1.0
        w8 = np.clip(np.round(w / column[:, None]), -127, 127).astype(np.int8).T.copy()
        base = node.name.replace("/", "_")
        added += [
            numpy_helper.from_array(w8, f"{base}_w8"),
            numpy_helper.from_array(column.astype(np.float32), f"{base}_s8"),
            numpy_helper.from_array(np.zeros(n, np.int8), f"{base}_z8"),
        ]
        inputs = [node.input[0], f"{base}_w8", f"{base}_s8", f"{base}_z8"]
        nodes.append(
            helper.make_node(
                "DynamicQuantizeMatMul",
                inputs,
                list(node.output),
                name=f"{node.name}/int8",
                domain="com.microsoft",
            )
        )
        replaced += 1
    used = {name for node in nodes for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(kept + added)
    (dst / "model.onnx.data").unlink()
    onnx.save_model(model, str(dst / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    return replaced


def step_seconds(engine, batch: int, steps: int) -> float:
    """Seconds per decoding step of ``batch`` sequences, after their prompt."""
    import numpy as np

    length = len(PROMPT) + steps
    generator = engine.generator(length, min_length=length, search={"batch_size": batch})
    generator.append_tokens(np.asarray([PROMPT] * batch, dtype=np.int32))
    started, done = time.perf_counter(), 0
    while not generator.is_done():
        generator.generate_next_token()
        done += 1
    return (time.perf_counter() - started) / max(done, 1)


def decode_rows(folders: dict[str, Path], batches: list[int], rounds: int, steps: int) -> list[dict]:
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

    engines = {name: GenaiEngine(folder) for name, folder in folders.items()}
    seconds: dict[tuple[str, int], list[float]] = {(n, b): [] for n in engines for b in batches}
    for engine in engines.values():
        step_seconds(engine, batches[0], 4)  # warm-up
    for _ in range(rounds):
        for (name, batch), found in seconds.items():
            found.append(step_seconds(engines[name], batch, steps))
    rows = []
    for name, engine in engines.items():
        single = batches[0] / statistics.median(seconds[(name, batches[0])])
        for batch in batches:
            tokens_per_s = batch / statistics.median(seconds[(name, batch)])
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "ms_per_step": round(1000 * statistics.median(seconds[(name, batch)]), 2),
                    "tokens_per_s": round(tokens_per_s, 1),
                    "x1": round(tokens_per_s / single, 2),
                    "threads": engine.threads,
                }
            )
    return rows


def node_rows(
    rows_per_call: list[int], threads: int, k: int = 576, n: int = 3072, calls: int = 300
) -> list[dict]:
    """One node of each kind, microseconds per call for each number of rows."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    block = 64
    kinds = {
        "MatMulNBits int4": (
            helper.make_node(
                "MatMulNBits",
                ["x", "w", "s"],
                ["y"],
                domain="com.microsoft",
                K=k,
                N=n,
                bits=4,
                block_size=block,
                accuracy_level=4,
            ),
            [
                numpy_helper.from_array(
                    rng.integers(0, 255, (n, k // block, block // 2), dtype=np.uint8), "w"
                ),
                numpy_helper.from_array((rng.random(n * k // block) * 0.01).astype(np.float32), "s"),
            ],
        ),
        "MatMul fp32 (dequantized)": (
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            [numpy_helper.from_array((rng.random((k, n), dtype=np.float32) - 0.5) * 0.1, "w")],
        ),
        "DynamicQuantizeMatMul int8": (
            helper.make_node("DynamicQuantizeMatMul", ["x", "w", "s", "z"], ["y"], domain="com.microsoft"),
            [
                numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "w"),
                numpy_helper.from_array(np.full(n, 0.01, np.float32), "s"),
                numpy_helper.from_array(np.zeros(n, np.int8), "z"),
            ],
        ),
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    found = []
    for name, (node, initializers) in kinds.items():
        graph = helper.make_graph(
            [node],
            "one",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
            initializers,
        )
        opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
        session = ort.InferenceSession(
            helper.make_model(graph, opset_imports=opsets).SerializeToString(),
            options,
            providers=["CPUExecutionProvider"],
        )
        for m in rows_per_call:
            x = rng.random((m, k), dtype=np.float32)
            repeats = calls if m <= 8 else max(calls // 5, 1)  # a prompt's call takes a millisecond
            for _ in range(20):
                session.run(None, {"x": x})
            started = time.perf_counter()
            for _ in range(repeats):
                session.run(None, {"x": x})
            found.append(
                {
                    "node": name,
                    "rows": m,
                    "us_per_call": round(1e6 * (time.perf_counter() - started) / repeats, 1),
                }
            )
    return found


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target", type=Path, default=TARGET, help="an int4 onnxruntime-genai folder (example 08's cpu-int4)"
    )
    parser.add_argument("--batches", default="1,4,8", help="sequences per batch")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is kept")
    parser.add_argument("--steps", type=int, default=64, help="new tokens per round")
    parser.add_argument(
        "--prompt-rows", default="32,64", help="rows of the one-node calls that stand for a prompt's prefill"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.prompt_rows = [int(m) for m in args.prompt_rows.split(",") if m]
    return args


def main(argv: list[str] | None = None) -> int:
    from slmops_pipelines.steps.cpus import usable_cpus

    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="slmops-bench-kernels-") as tmp:
        prototype = Path(tmp) / "int8-gemm"
        replaced = as_int8_gemm(args.target, prototype)
        folders = {
            "int4 MatMulNBits (as built)": args.target,
            "int8 DynamicQuantizeMatMul (prototype)": prototype,
        }
        decode = decode_rows(folders, args.batches, args.rounds, args.steps)
    nodes = node_rows(sorted({1, 2, 4, 8, *args.batches, *args.prompt_rows}), usable_cpus())
    figures = provenance(argv, "onnxruntime", "onnxruntime-genai")
    print(f"machine: {figures['machine']}")
    print(f"command: {figures['command']}")
    print(f"{replaced} MatMulNBits nodes replaced in the prototype")
    print(f"{'model':40} {'batch':>5} {'ms/step':>8} {'tok/s':>7} {'x1':>5}")
    for row in decode:
        print(
            f"{row['model']:40} {row['batch']:>5} {row['ms_per_step']:>8} {row['tokens_per_s']:>7} {row['x1']:>5}"
        )
    print(f"{'one node, K 576 N 3072':40} {'rows':>5} {'us/call':>8}")
    for row in nodes:
        print(f"{row['node']:40} {row['rows']:>5} {row['us_per_call']:>8}")
    if args.json:
        args.json.write_text(
            json.dumps({**figures, "replaced": replaced, "decode": decode, "nodes": nodes}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
