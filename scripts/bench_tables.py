"""Tables in the docs made from the figures the benchmark scripts wrote (bench/results/*.json).

A table stands between two markers in a Markdown file::

    <!-- table: serve bench/results/serve.json -->
    | ... the rendered table ... |
    <!-- end table -->

``scripts/bench_tables.py`` rewrites every such table from its JSON; ``--check`` changes
nothing and exits 1 when a table differs from what its figures give (the test suite runs it,
as it runs ``slmops crds --check``): a figure is typed once, by the script that measured it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "docs" / "benchmarks.md", REPO / "README.md"]
BLOCK = re.compile(r"(<!-- table: (\w+) (\S+) -->\n)(.*?)(<!-- end table -->)", re.S)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def serve_table(figures: dict) -> str:
    """bench/serve.py: the engine's own ceiling, then each server at 1/4/8 clients."""
    rows = figures["rows"]
    labels = {
        "slmops cpu-int4": "slmops serve, cpu-int4 (merged)",
        "slmops cpu-int4-adapter": "slmops serve, cpu-int4-adapter (the adapter per request)",
        "llama.cpp Q4_0": "llama.cpp server, Q4_0 (merged)",
    }
    lines = [
        "| server | clients | tokens/s | x1 | time to first token p50 / p95 | latency p50 / p95 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in rows.items():
        base = runs[0]["tokens_per_s"]
        if "(alone)" in name:  # the ceiling: one row, the batch sizes side by side
            engine = name.replace(" (alone)", "").replace("genai ", "")
            sizes = " / ".join(str(r["clients"]) for r in runs)
            rates = " / ".join(f"{r['tokens_per_s']:.0f}" for r in runs)
            ratios = " / ".join(f"{r['tokens_per_s'] / base:.2f}" for r in runs)
            lines.append(
                f"| onnxruntime-genai alone, {engine} | {sizes} (batch) | {rates} | {ratios} | - | - |"
            )
            continue
        for i, r in enumerate(runs):
            label = labels.get(name, name) if i == 0 else ""
            ttft = f"{_ms(r['ttft_p50_ms'])} / {_ms(r['ttft_p95_ms'])} ms"
            latency = f"{r['latency_p50_s']:.2f} / {r['latency_p95_s']:.2f} s"
            ratio = f"{r['tokens_per_s'] / base:.2f}"
            lines.append(
                f"| {label} | {r['clients']} | {r['tokens_per_s']:.0f} | {ratio} | {ttft} | {latency} |"
            )
    lines.append("")
    lines.append(f"*{figures['machine']}, {figures['date']}: `{figures['command']}`*")
    return "\n".join(lines) + "\n"


def optimize_table(figures: dict) -> str:
    """bench/optimize.py: each model's production, quality and decode speed, as shipped and at equal threads."""
    models = figures["models"]
    threads = figures["threads"]
    baseline = (models.get("PyTorch fp32") or {}).get("decode_tok_s_p50")
    lines = [
        "| model | produce s | size MB | accuracy | perplexity | prefill ms p50 | decode tok/s as shipped "
        f"| decode tok/s, {threads} threads | vs PyTorch | MB read/token | bound tok/s | of bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in models.items():
        if "error" in r:
            lines.append(f"| {name} | could not run: {r['error']} |||||||||||")
            continue
        produce = f"{r['produce_s']:.0f}" if r.get("produce_s") is not None else ""
        speedup = f"{r['decode_tok_s_p50'] / baseline:.1f}x" if baseline else ""
        lines.append(
            f"| {name} | {produce} | {r['size_mb']:.0f} | {r['accuracy']:.0%} | {r['perplexity']:.3f} "
            f"| {r['prefill_ms_p50']:.1f} | {r['decode_tok_s_p50']:.0f} / {r['decode_tok_s_p95']:.0f} "
            f"| {r['decode_tok_s_p50_threads']:.0f} | {speedup} "
            f"| {r['bytes_per_token'] / 2**20:.0f} | {r['bound_tok_s']:.0f} | {r['of_bound']:.0%} |"
        )
    lines.append("")
    lines.extend(f"* {line}" for line in figures.get("verdict", []))
    lines.append("")
    lines.append(f"*{figures['machine']}, {figures['date']}: `{figures['command']}`*")
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[dict], str]] = {"serve": serve_table, "optimize": optimize_table}


def rendered(text: str) -> str:
    def one(match: re.Match) -> str:
        opening, kind, source, _, closing = match.groups()
        figures = json.loads((REPO / source).read_text())
        return opening + RENDERERS[kind](figures) + closing

    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a table drifted")
    args = parser.parse_args(argv)
    drifted = []
    for path in DOCS:
        text = path.read_text()
        fresh = rendered(text)
        if fresh != text:
            drifted.append(path.relative_to(REPO))
            if not args.check:
                path.write_text(fresh)
    if args.check and drifted:
        print(
            f"tables differ from their figures in: {', '.join(map(str, drifted))}: run scripts/bench_tables.py"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
