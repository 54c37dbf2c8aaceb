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


def _with_source(lines: list[str], figures: dict) -> str:
    """The table's lines, then the line that says which run they come from."""
    versions = ", ".join(f"{name} {version}" for name, version in (figures.get("versions") or {}).items())
    with_versions = f"; {versions}" if versions else ""
    lines = [*lines, "", f"*{figures['machine']}, {figures['date']}: `{figures['command']}`{with_versions}*"]
    return "\n".join(lines) + "\n"


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
    return _with_source(lines, figures)


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
    return _with_source(lines, figures)


def finetune_table(figures: dict) -> str:
    """bench/finetune.py: the demo's fine-tuning through each tool, judged by one judge."""
    lines = [
        "| tool | precision | wall s | train s | tokens/s | MFU | peak RSS MB | eval loss | accuracy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for tool, r in figures["tools"].items():
        lines.append(
            f"| {tool} | {r['precision']} | {r['wall_s']:.1f} | {r['train_s']:.1f} | {r['tokens_per_s']:.0f} "
            f"| {r['mfu']:.0%} | {r['peak_rss_mb']:.0f} | {r['eval_loss']:.4f} "
            f"| {r['accuracy']:.0%} ({r['correct']}/{r['rows']}) |"
        )
    peaks = figures["matmul_peak_flops"]
    lines.append("")
    lines.extend(f"* {line}" for line in figures.get("verdict", []))
    lines.append(
        f"* matmul peak in this run: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} "
        f"GFLOP/s; {figures['parameters'] / 1e6:.0f}M parameters"
    )
    return _with_source(lines, figures)


def operator_table(figures: dict) -> str:
    """bench/operator_load.py: N FineTuneJobs applied at once, to one KFP run each."""
    lines = [
        "| jobs | runs | exactly one run | p50 s | p95 s | max s | jobs/s | RSS idle MB | RSS peak MB "
        "| RSS end MB | CPU ms/job |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in figures["sizes"]:
        if not r["submitted"]:
            lines.append(
                f"| {r['jobs']} | {r['runs']} | 0/{r['jobs']} | no run submitted: {r['failures']} ||||||||"
            )
            continue
        lines.append(
            f"| {r['jobs']} | {r['runs']} | {r['jobs_with_exactly_one_run']}/{r['jobs']} "
            f"| {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['max_s']:.2f} | {r['jobs_per_s']:.1f} "
            f"| {r['rss_idle_mb']:.0f} | {r['rss_peak_mb']:.0f} | {r['rss_end_mb']:.0f} "
            f"| {r['cpu_s_per_job'] * 1000:.1f} |"
        )
    return _with_source(lines, figures)


def batch_kernels_table(figures: dict) -> str:
    """bench/batch_kernels.py: decoding batches with the int4 kernel against an int8 GEMM prototype."""
    nodes: dict[str, dict[int, float]] = {}
    for r in figures["nodes"]:
        nodes.setdefault(r["node"], {})[r["rows"]] = r["us_per_call"]
    lines = [
        "| model | batch | ms per step | tokens/s | x1 |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['model']} | {r['batch']} | {r['ms_per_step']:.2f} | {r['tokens_per_s']:.0f} | {r['x1']:.2f} |"
            for r in figures["decode"]
        ),
        "",
        "| one node, K 576 N 3072 | " + " | ".join(f"{m} rows" for m in next(iter(nodes.values()))) + " |",
        "| --- |" + " ---: |" * len(next(iter(nodes.values()))),
        *(
            f"| {node} | " + " | ".join(f"{us:.0f} us" for us in rows.values()) + " |"
            for node, rows in nodes.items()
        ),
    ]
    return _with_source(lines, figures)


def lora_kernels_table(figures: dict) -> str:
    """bench/lora_kernels.py: a separate adapter's LoRA branch per kernel, microseconds per call."""
    kernels = list(dict.fromkeys(r["kernel"] for r in figures["rows"]))
    groups: dict[str, dict[str, float]] = {}
    for r in figures["rows"]:
        groups.setdefault(f"{r['group']} (K {r['k']}, rank {r['rank']}, N {r['n']})", {})[r["kernel"]] = r[
            "us_per_call"
        ]
    lines = [
        "| LoRA group | " + " | ".join(kernels) + " |",
        "| --- |" + " ---: |" * len(kernels),
        *(
            f"| {group} | " + " | ".join(f"{us[k]:.1f} us" for k in kernels) + " |"
            for group, us in groups.items()
        ),
        "| a layer (the four) | "
        + " | ".join(f"{sum(us[k] for us in groups.values()):.1f} us" for k in kernels)
        + " |",
    ]
    return _with_source(lines, figures)


def lora_prepacked_table(figures: dict) -> str:
    """bench/lora_prepacked.py: a separate adapter as shipped against copies with it baked in."""
    decode = figures["decode"]
    counts = list(decode)
    names = list(decode[counts[0]])
    heads = [f"{count} thread{'s' if count != '1' else ''}" for count in counts]
    lines = [
        "| model | "
        + " | ".join(f"{h}, tok/s | vs merged" for h in heads)
        + " | same greedy token | max logit diff |",
        "| --- |" + " ---: | ---: |" * len(counts) + " ---: | ---: |",
    ]
    for name in names:
        cells = []
        for count in counts:
            row, merged = decode[count][name], decode[count]["merged"]["tokens_per_s"]
            cells += [f"{row['tokens_per_s']:.1f}", f"{row['tokens_per_s'] / merged:.2f}x"]
        check = figures["checks"].get(name)
        same = f"{check['same_greedy_token']:.0%}" if check else "-"
        diff = f"{check['max_abs_logit_diff']:.2f}" if check else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {same} | {diff} |")
    return _with_source(lines, figures)


def int4_sweep_table(figures: dict) -> str:
    """bench/int4_sweep.py: the model builder's int4 settings side by side, at equal threads."""
    variants = figures["variants"]
    base = (variants.get("default-b32") or {}).get("decode_tok_s_p50_threads")
    lines = [
        f"| variant | builder options | size MB | accuracy | perplexity | prefill ms | decode tok/s, {figures['threads']} threads | vs default |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in variants.items():
        options = " ".join(f"`{k}={v}`" for k, v in r["options"].items()) or "(none)"
        if "error" in r:
            lines.append(f"| {name} | {options} | could not build: {r['error']} ||||||")
            continue
        speed = r["decode_tok_s_p50_threads"]
        ratio = f"{speed / base:.2f}x" if base else ""
        lines.append(
            f"| {name} | {options} | {r['size_mb']:.0f} | {r['accuracy']:.0%} | {r['perplexity']:.3f} "
            f"| {r['prefill_ms_p50_threads']:.1f} | {speed:.0f} | {ratio} |"
        )
    return _with_source(lines, figures)


def _decode(models: dict, name: str) -> str | None:
    r = models.get(name) or {}
    if "decode_tok_s_p50" not in r:
        return None
    return f"{r['decode_tok_s_p50']:.0f} ({r['accuracy']:.0%})"


def _named(pairs: list[tuple[str, str | None]]) -> str:
    return "; ".join(f"{label} {value}" for label, value in pairs if value is not None)


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours and theirs else None


def _goal(text: str, ratio: float | None, goal: float) -> str | None:
    if ratio is None:
        return None
    return f"{text.format(ratio=ratio)} (goal {goal:g}x: {'met' if ratio >= goal else 'not met'})"


def _finetune_row(tools: dict) -> str:
    def figure(tool: str) -> str | None:
        r = tools.get(tool)
        return None if r is None else f"{r['tokens_per_s']:.0f} {r['precision']} ({r['accuracy']:.0%})"

    trl = ", ".join(f for f in (figure("trl-bf16"), figure("trl")) if f) or None
    others = _named(
        [("TRL", trl), ("plain transformers+peft", figure("plain")), ("Microsoft Olive", figure("olive"))]
    )
    return f"| LoRA fine-tuning, the demo job, tokens/s (accuracy) | {figure('slmops')} | {others} |"


def _finetune_summary(figures: dict) -> tuple[list[str], list[str | None]]:
    tools = figures["tools"]
    best = max((tools[t]["tokens_per_s"] for t in ("trl", "trl-bf16") if t in tools), default=None)
    ratio = _ratio(tools.get("slmops", {}).get("tokens_per_s"), best)
    return [_finetune_row(tools)], [_goal("fine-tuning: {ratio:.2f}x TRL's best tokens/s", ratio, 3)]


def _decode_summary(figures: dict) -> tuple[list[str], list[str | None]]:
    models = figures["models"]
    int4 = _named(
        [
            ("model builder", _decode(models, "builder cpu-int4")),
            ("Olive", _decode(models, "olive cpu-int4")),
            ("llama.cpp Q4_0", _decode(models, "llama.cpp Q4_0")),
            ("OpenVINO GenAI", _decode(models, "openvino cpu-int4")),
        ]
    )
    int8 = _named(
        [
            ("Olive", _decode(models, "olive cpu-int8")),
            ("llama.cpp Q8_0", _decode(models, "llama.cpp Q8_0")),
            ("OpenVINO GenAI", _decode(models, "openvino cpu-int8")),
        ]
    )
    rows = [
        f"| CPU int4 decode, tokens/s as shipped (accuracy) | {_decode(models, 'slmops cpu-int4')} | {int4} |"
    ]
    if "slmops cpu-int8" in models:  # a run of --precisions int4 measured no int8
        rows.append(
            f"| CPU int8 decode, tokens/s as shipped (accuracy) | {_decode(models, 'slmops cpu-int8')} | {int8} |"
        )
    speed = {name: r.get("decode_tok_s_p50_threads") for name, r in models.items()}
    builder = _ratio(speed.get("slmops cpu-int4"), speed.get("builder cpu-int4"))
    adapter = _ratio(speed.get("slmops cpu-int4-adapter"), speed.get("slmops cpu-int4"))
    notes = [
        _goal("int4 decode at equal threads: {ratio:.2f}x the model builder's int4", builder, 1.3),
        _goal("the separate adapter at equal threads: {ratio:.2f}x the merged model's decode", adapter, 0.8),
    ]
    return rows, notes


def _serve_summary(figures: dict) -> tuple[list[str], list[str | None]]:
    rows = figures["rows"]

    def at(name: str, clients: int) -> float | None:
        return next((r["tokens_per_s"] for r in rows.get(name, []) if r["clients"] == clients), None)

    merged, adapter, theirs = (
        at("slmops cpu-int4", 8),
        at("slmops cpu-int4-adapter", 8),
        at("llama.cpp Q4_0", 8),
    )
    ours = _named(
        [
            ("merged", f"{merged:.0f}" if merged else None),
            ("adapter per request", f"{adapter:.0f}" if adapter else None),
        ]
    )
    row = f"| serving, int4, 8 concurrent clients, tokens/s | {ours} | " + (
        f"llama.cpp's server {theirs:.0f} |" if theirs else "|"
    )
    ratio = _ratio(merged, at("slmops cpu-int4", 1))
    with_adapter = _ratio(adapter, at("slmops cpu-int4-adapter", 1))
    if with_adapter is None:
        return [row], [_goal("serving: 8 clients get {ratio:.2f}x one client's tokens/s merged", ratio, 2.5)]
    # Judged on the adapter per request: what `slmops serve runs/smollm2-tone-cpu` serves (issue 25).
    merged_too = f", {ratio:.2f}x merged" if ratio else ""
    text = (
        "serving: 8 clients get {ratio:.2f}x one client's tokens/s with the adapter per request" + merged_too
    )
    return [row], [_goal(text, with_adapter, 2.5)]


def _operator_summary(figures: dict) -> tuple[list[str], list[str | None]]:
    largest = figures["sizes"][-1]
    one_each = largest["jobs_with_exactly_one_run"] == largest["jobs"] == largest["runs"]
    runs = "exactly one KFP run each" if one_each else "NOT one KFP run each"
    return [
        f"| the operator, {largest['jobs']} jobs applied at once | {runs}, {largest['rss_peak_mb']:.0f} MB peak RSS | |"
    ], []


SUMMARIES = {  # README's order: what each benchmark's headline is, and what it is called
    "finetune": ("fine-tuning", _finetune_summary),
    "optimize": ("decode", _decode_summary),
    "serve": ("serving", _serve_summary),
    "operator": ("the operator", _operator_summary),
}


def summary_table(results: dict) -> str:
    """README's block: the headline of each benchmark's newest figures (bench/results/**.json)."""
    lines = ["| what | slmops | others |", "| --- | --- | --- |"]
    notes: list[str | None] = []
    sources = []
    for name, (what, summary) in SUMMARIES.items():
        if name in results:
            rows, said = summary(results[name])
            lines += rows
            notes += said
            sources.append((results[name]["machine"], f"{what} {results[name]['date']}"))
    lines.append("")
    lines.extend(f"* {note}" for note in notes if note)
    lines.append("")
    machines: dict[str, list[str]] = {}
    for machine, run in sources:
        machines.setdefault(machine, []).append(run)
    said = "; ".join(f"{machine}: {', '.join(runs)}" for machine, runs in machines.items())
    lines.append(f"*{said} (docs/benchmarks.md has each run's command and versions)*")
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[dict], str]] = {
    "batch_kernels": batch_kernels_table,
    "lora_kernels": lora_kernels_table,
    "lora_prepacked": lora_prepacked_table,
    "int4_sweep": int4_sweep_table,
    "summary": summary_table,
    "operator": operator_table,
    "serve": serve_table,
    "optimize": optimize_table,
    "finetune": finetune_table,
}


def figures_at(path: Path) -> dict:
    """One script's figures, or for a folder each script's newest, by name (optimize.json -> "optimize").

    A folder's subfolders hold runs on other machines (bench/results/epyc-avx2/); a script's
    newest run (by date, then by time where the run wrote one) is taken from any of them; of
    runs equally new, the folder's own, then the first subfolder by name.
    """
    if not path.is_dir():
        return json.loads(path.read_text())
    newest: dict[str, dict] = {}
    for child in sorted(path.rglob("*.json"), key=lambda c: (len(c.relative_to(path).parts), str(c))):
        figures = json.loads(child.read_text())
        if child.stem not in newest or _when(figures) > _when(newest[child.stem]):
            newest[child.stem] = figures
    return newest


def _when(figures: dict) -> tuple[str, str]:
    """When a run was made: its date, then its UTC time (runs before the time was written: none)."""
    return figures["date"], figures.get("time", "")


def rendered(text: str) -> str:
    def one(match: re.Match) -> str:
        opening, kind, source, _, closing = match.groups()
        return opening + RENDERERS[kind](figures_at(REPO / source)) + closing

    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a table drifted")
    args = parser.parse_args(argv)
    drifted = []
    for path in DOCS:
        text = path.read_text()
        try:
            fresh = rendered(text)
        except FileNotFoundError as missing:
            print(
                f"{path.relative_to(REPO)}: no figures at {missing.filename}: run its benchmark with --json"
            )
            return 1
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
