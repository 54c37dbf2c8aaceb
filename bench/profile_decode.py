"""Where a decoded token's time goes: onnxruntime's profiler over ONNX model folders, side by side.

    .venv/bin/python bench/profile_decode.py FOLDER [FOLDER ...] [--runs 5] [--threads N]

Each folder is loaded as shipped (plain ``onnxruntime_genai.Model``; ``--threads`` overrides
the intra-op threads, to compare at equal threads), its adapter active where it ships one
(the first ``*.onnx_adapter``: a separate adapter's LoRA branches do their arithmetic only
then; ``--no-adapter`` profiles the base alone), with onnxruntime's profiler switched on
through the same genai_config overlay a user would use.  The harness is bench/optimize.py's:
a 32-token prompt, then 32 forced new tokens, ``--runs`` times after a warm-up.  Only the
decode steps (one new token) are counted.  Printed per folder:

* the decode rate while profiling (the profiler costs a little);
* per operator type: microseconds per token, share, and kernel calls per token;
* per MatMulNBits node kind (layers folded, e.g. ``layers.N/mlp/up_proj``): microseconds per call.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

PROMPT = list(range(100, 132))


def decode_runs(model, og, runs: int, adapter: Path | None = None) -> float:
    """Decode tokens/s (median over runs) of 32 forced tokens after a 32-token prompt."""
    import numpy as np

    rates = []
    adapters = None
    if adapter is not None:
        adapters = og.Adapters(model)
        adapters.load(str(adapter), adapter.stem)
    for run in range(runs + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=64, min_length=64, do_sample=False)
        generator = og.Generator(model, params)
        if adapters is not None:
            generator.set_active_adapter(adapters, adapter.stem)
        generator.append_tokens(np.asarray(PROMPT, dtype=np.int32))
        started = time.perf_counter()
        for _ in range(32):
            generator.generate_next_token()
        if run:
            rates.append(32 / (time.perf_counter() - started))
    return sorted(rates)[len(rates) // 2]


def profile(
    folder: Path, *, runs: int, threads: int | None, out: Path, adapter: Path | None
) -> tuple[float, list[dict]]:
    import onnxruntime_genai as og

    options: dict = {"enable_profiling": str(out / "profile_")}
    if threads:
        options["intra_op_num_threads"] = threads
    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    model = og.Model(config)
    rate = decode_runs(model, og, runs, adapter)
    del model  # the profile file is written when the session ends
    files = sorted(out.glob("profile_*.json"))
    return rate, json.loads(files[-1].read_text())


def decode_kernels(events: list[dict]) -> list[dict]:
    """Kernel events of the decode steps: those whose first input has one position."""
    kernels = []
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        shapes = event["args"].get("input_type_shape") or [{}]
        dims = next(iter(shapes[0].values()), []) if shapes[0] else []
        positions = (
            dims[1] if len(dims) >= 3 else dims[-2] if len(dims) == 2 else None
        )  # [batch, positions, ...]
        if positions == 1:
            kernels.append(event)
    return kernels


def summarize(name: str, rate: float, kernels: list[dict]) -> None:
    tokens = sum(1 for k in kernels if k["args"]["op_name"] == "MatMulNBits" and "lm_head" in k["name"]) or 1
    by_op: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for k in kernels:
        by_op[k["args"]["op_name"]] += k["dur"]
        calls[k["args"]["op_name"]] += 1
    total = sum(by_op.values())
    print(f"\n### {name}: {rate:.0f} tok/s while profiling, {total / tokens:.0f} us of kernels per token\n")
    print("| op | us/token | share | calls/token |")
    print("| --- | ---: | ---: | ---: |")
    for op, us in by_op.most_common(8):
        print(f"| {op} | {us / tokens:.0f} | {us / total:.0%} | {calls[op] / tokens:.0f} |")
    nodes: collections.Counter = collections.Counter()
    node_calls: collections.Counter = collections.Counter()
    for k in kernels:
        if k["args"]["op_name"] == "MatMulNBits":
            kind = re.sub(r"layers\.\d+", "layers.N", k["name"].removesuffix("_kernel_time"))
            nodes[kind] += k["dur"]
            node_calls[kind] += 1
    print("\n| MatMulNBits node | us/call |")
    print("| --- | ---: |")
    for kind, us in nodes.most_common():
        print(f"| {kind} | {us / node_calls[kind]:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, help="override the intra-op threads (default: as shipped)")
    parser.add_argument("--no-adapter", action="store_true", help="leave a folder's adapter inactive")
    args = parser.parse_args(argv)
    for folder in args.folders:
        adapter = None if args.no_adapter else next(iter(sorted(folder.glob("*.onnx_adapter"))), None)
        with tempfile.TemporaryDirectory(prefix="slmops-profile-") as tmp:
            rate, events = profile(
                folder, runs=args.runs, threads=args.threads, out=Path(tmp), adapter=adapter
            )
        name = f"{folder} (adapter {adapter.stem})" if adapter else str(folder)
        summarize(name, rate, decode_kernels(events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
