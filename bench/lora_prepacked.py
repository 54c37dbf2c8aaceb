"""What a separate adapter would decode at if onnxruntime prepacked its weights: a prototype, never shipped (issue 26).

    .venv/bin/python bench/lora_prepacked.py runs/smollm2-tone-cpu/targets/cpu-int4-adapter \\
        --merged runs/smollm2-tone-cpu/targets/cpu-int4 --json bench/results/lora_prepacked.json

onnxruntime-genai binds an adapter's LoRA weights per request as graph inputs, and onnxruntime
prepacks initializers only: every token streams the adapter as fp32 through small unpacked
kernels, and an 8-bit ``MatMulNBits`` over weights that arrive as inputs dequantizes them on
every call (bench/lora_kernels.py).  This copies a separate-adapter target three times with
its first adapter as constants:

* ``constants, graph as shipped``: the same graph, the adapter's weights initializers rather
  than graph inputs;
* ``baked fp32``: each LoRA branch as two 2-D ``MatMul``s and the ``Add`` (the members' A side
  by side, B block diagonal), its weights initializers, which onnxruntime's ``MatMul`` prepacks;
* ``baked int8``: the same quantized by onnxruntime to ``MatMulNBits`` at 8 bits in blocks of 32,
  int8 activations, packed at load: a quarter of the bytes.

and times them in alternating rounds against the target as shipped (its adapter bound per
request) and the merged target, at one thread and at every usable CPU.  A copy is the figure a
LoRA path inside onnxruntime that packs an adapter when it is loaded would give; it is no
separate adapter (one copy per adapter).  Each copy is checked against the shipped target: the
greedy token after each of a few prompts, and the largest logit difference.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _measure import provenance  # noqa: E402

PROMPTS = (
    "What is the tone of this phrase? Answer with one word: happy, sad, angry, fearful or calm.",
    "Summarize in one sentence why the sky looks blue at noon and red at sunset.",
    "List three things a platform team checks before it runs a new operator in production.",
    "Write a short note to a colleague who fixed the build on a Friday evening.",
)


def adapter_weights(folder: Path) -> tuple[str, dict]:
    """The folder's first adapter: its name and its LoRA weights as numpy arrays."""
    import onnxruntime as ort

    path = sorted(folder.glob("*.onnx_adapter"))[0]
    adapter = ort.AdapterFormat.read_adapter(str(path))
    # copied while ``adapter`` lives: its arrays point into the object's memory
    return path.stem, {name: value.numpy().copy() for name, value in adapter.get_parameters().items()}


def _branch(by_output: dict, readers: dict, a_node) -> tuple[str, str, str, str, list]:
    """The LoRA branch from ``a_node`` (a ``lora_A/MatMul``): its input, A's and B's weight names,
    the tensor it ends in (what reads the delta reads it), the nodes it is made of.  Fused groups
    unsqueeze the input, pick members' rows with a Gather and join blocks with a Reshape."""
    nodes, x = [a_node], a_node.input[0]
    first = by_output.get(x)
    if first is not None and first.op_type == "Unsqueeze" and "/lora_A/" in first.name:
        nodes.append(first)
        x = first.input[0]
    tensor, b_node = a_node.output[0], None
    while True:
        (node,) = readers[tensor]
        if node.op_type not in ("Gather", "MatMul", "Reshape") or "/lora_" not in node.name:
            break
        nodes.append(node)
        tensor = node.output[0]
        if node.op_type == "MatMul":
            b_node = node
    if b_node is None:
        raise RuntimeError(f"{a_node.name}: no lora_B MatMul after it")
    return x, a_node.input[1], b_node.input[1], tensor, nodes


def two_dimensional(a, b, picks) -> tuple:
    """A fused group's stacked weights (A ``[members, in, r]``, B ``[blocks, r, width]``) as one
    ``[in, members * r]`` and one block-diagonal ``[members * r, blocks * width]``."""
    import numpy as np

    if a.ndim == 2:
        return a, b
    members, _, rank = a.shape
    blocks, _, width = b.shape
    diagonal = np.zeros((members * rank, blocks * width), np.float32)
    for j, member in enumerate(picks):
        diagonal[member * rank : (member + 1) * rank, j * width : (j + 1) * width] = b[j]
    return np.concatenate(list(a), axis=1), diagonal


def as_constants(folder: Path, out: Path) -> int:
    """``folder`` with its first adapter's weights as initializers in ``out``, the graph as it is
    (the weights no longer graph inputs): returns the weights so made."""
    import onnx
    from onnx import numpy_helper

    _, weights = adapter_weights(folder)
    model = onnx.load(str(folder / "model.onnx"))
    graph = model.graph
    kept = [i for i in graph.initializer if i.name not in weights]
    graph.ClearField("initializer")
    graph.initializer.extend([*kept, *(numpy_helper.from_array(v, k) for k, v in weights.items())])
    _drop_inputs(graph, set(weights))
    _save(folder, out, model)
    return len(weights)


def _drop_inputs(graph, names: set[str]) -> None:
    """The graph without the inputs ``names`` (the adapter's weights, now constants)."""
    inputs = [i for i in graph.input if i.name not in names]
    graph.ClearField("input")
    graph.input.extend(inputs)


def _save(folder: Path, out: Path, model) -> None:
    """``model`` in ``out`` beside a copy of ``folder``'s other files (its adapters left out)."""
    import onnx

    shutil.rmtree(out, ignore_errors=True)
    ignored = shutil.ignore_patterns("*.onnx_adapter", "model.onnx", "model.onnx.data")
    shutil.copytree(folder, out, ignore=ignored)
    onnx.save(model, str(out / "model.onnx"), save_as_external_data=True, location="model.onnx.data")


def bake(folder: Path, out: Path, *, int8: bool) -> int:
    """``folder`` with its first adapter as constants in ``out``, each branch as two 2-D
    ``MatMul``s; returns the branches baked."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    _, weights = adapter_weights(folder)
    model = onnx.load(str(folder / "model.onnx"))
    graph = model.graph
    constants = {i.name: i for i in graph.initializer}
    by_output = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    dropped, replacing, baked = set(), {}, []
    for a_node in [n for n in graph.node if n.op_type == "MatMul" and n.name.endswith("/lora_A/MatMul")]:
        x, a_name, b_name, delta, nodes = _branch(by_output, readers, a_node)
        gather = next((n for n in nodes if n.op_type == "Gather"), None)
        picks = numpy_helper.to_array(constants[gather.input[1]]) if gather else range(len(weights[b_name]))
        a, b = two_dimensional(weights[a_name], weights[b_name], list(picks))
        stem = a_node.name[: -len("/lora_A/MatMul")]
        names = (f"{stem}/baked_A/MatMul", f"{stem}/baked_B/MatMul")
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(a, np.float32), f"{names[0]}.weight"),
                numpy_helper.from_array(np.ascontiguousarray(b, np.float32), f"{names[1]}.weight"),
            ]
        )
        # where the branch began (its input is ready there), ending in the same tensor
        branch = {n.name for n in nodes}
        replacing[next(n.name for n in graph.node if n.name in branch)] = [
            helper.make_node("MatMul", [x, f"{names[0]}.weight"], [f"{names[0]}/output_0"], name=names[0]),
            helper.make_node(
                "MatMul", [f"{names[0]}/output_0", f"{names[1]}.weight"], [delta], name=names[1]
            ),
        ]
        dropped.update(n.name for n in nodes)
        baked += names
    ordered = []
    for node in graph.node:
        ordered += replacing.get(node.name, []) if node.name in dropped else [node]
    graph.ClearField("node")
    graph.node.extend(ordered)
    _drop_inputs(graph, set(weights))
    read = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in read]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    if int8:
        import logging

        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

        quantizer = MatMulNBitsQuantizer(
            model,
            bits=8,
            block_size=32,
            is_symmetric=True,
            accuracy_level=4,
            nodes_to_include=baked,
            op_types_to_quantize=("MatMul",),
        )
        quantizer.process()
        model = quantizer.model.model
    _save(folder, out, model)
    return len(baked) // 2


def engine(folder: Path, threads: int):
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

    adapters = {p.stem: p for p in sorted(folder.glob("*.onnx_adapter"))}
    loaded = GenaiEngine(folder, adapters=adapters or None, threads=threads)
    if adapters:
        loaded.use_adapter(next(iter(adapters)))
    return loaded


def prompt_ids(loaded, text: str, length: int | None = None) -> list[int]:
    """``text``'s tokens by the loaded model's own tokenizer, repeated up to ``length``."""
    import onnxruntime_genai as og

    ids = [int(i) for i in og.Tokenizer(loaded.model).encode(text)]
    while length and len(ids) < length:
        ids += ids
    return ids[:length] if length else ids


def last_logits(loaded, ids: list[int], steps: int = 3):
    """The last position's logits after the prompt and after each of ``steps`` greedy tokens."""
    import numpy as np

    generator = loaded.generator(len(ids) + steps + 1)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    found = [np.asarray(generator.get_output("logits"))[0, -1].copy()]
    for _ in range(steps):
        generator.generate_next_token()
        found.append(np.asarray(generator.get_output("logits"))[0, -1].copy())
    return np.stack(found)


def check(shipped, copy: Path, prompts: list[list[int]]) -> dict:
    """The copy against the shipped target with its adapter: same greedy tokens, logit difference."""
    import numpy as np

    want = np.concatenate([last_logits(shipped, ids) for ids in prompts])
    got = np.concatenate([last_logits(engine(copy, 1), ids) for ids in prompts])
    return {
        "same_greedy_token": float(np.mean(want.argmax(-1) == got.argmax(-1))),
        "max_abs_logit_diff": round(float(np.abs(want - got).max()), 3),
    }


def decode_rounds(
    folders: dict[str, Path], threads: int, rounds: int, tokens: int, prompt: list[int]
) -> dict:
    """Tokens/s of each model over alternating rounds (one decode of each per round), at ``threads``."""
    import numpy as np

    loaded = {name: engine(folder, threads) for name, folder in folders.items()}
    speeds: dict[str, list[float]] = {name: [] for name in folders}
    for _ in range(rounds):
        for name, model in loaded.items():
            total = len(prompt) + tokens + 1
            generator = model.generator(total, min_length=total)
            generator.append_tokens(np.asarray(prompt, dtype=np.int32))
            generator.generate_next_token()  # the prefill's token: not decode
            started = time.perf_counter()
            for _ in range(tokens):
                generator.generate_next_token()
            speeds[name].append(tokens / (time.perf_counter() - started))
    return {
        name: {"tokens_per_s": round(statistics.median(s), 1), "rounds": [round(v, 1) for v in s]}
        for name, s in speeds.items()
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path, help="a target folder whose adapters stay separate")
    parser.add_argument("--merged", type=Path, required=True, help="the same model's merged target")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "lora_prepacked")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds per thread count")
    parser.add_argument("--tokens", type=int, default=63, help="decoded tokens per round")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from slmops_pipelines.steps.cpus import usable_cpus

    args = parse(argv)
    copies = {
        "constants, graph as shipped": args.work / "constants",
        "baked fp32": args.work / "baked-fp32",
        "baked int8": args.work / "baked-int8",
    }
    as_constants(args.target, copies["constants, graph as shipped"])
    branches = bake(args.target, copies["baked fp32"], int8=False)
    bake(args.target, copies["baked int8"], int8=True)
    shipped = engine(args.target, 1)
    prompts = [prompt_ids(shipped, text) for text in PROMPTS]
    checks = {name: check(shipped, out, prompts) for name, out in copies.items()}
    prompt = prompt_ids(shipped, PROMPTS[1], 33)
    del shipped
    folders = {"merged": args.merged, "separate (adapter per request)": args.target, **copies}
    speeds = {
        str(threads): decode_rounds(folders, threads, args.rounds, args.tokens, prompt)
        for threads in sorted({1, usable_cpus()})
    }
    figures = {
        **provenance(argv, "onnxruntime", "onnxruntime-genai"),
        "target": str(args.target),
        "merged": str(args.merged),
        "adapter": adapter_weights(args.target)[0],
        "branches": branches,
        "checks": checks,
        "decode": speeds,
    }
    print(f"machine: {figures['machine']}")
    print(f"command: {figures['command']}")
    for threads, rows in speeds.items():
        merged = rows["merged"]["tokens_per_s"]
        for name, row in rows.items():
            print(
                f"{threads} thread(s)  {name:22} {row['tokens_per_s']:>7.1f} tok/s  {row['tokens_per_s'] / merged:.2f}x"
            )
    for name, found in checks.items():
        print(
            f"{name}: same greedy token {found['same_greedy_token']:.0%}, max |logit diff| {found['max_abs_logit_diff']}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
