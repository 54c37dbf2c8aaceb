"""The OptimizeJob comparison: one row per model (PyTorch reference, base, each target).

:func:`comparison_rows` is shared by the CLI's table and the HTML report; the report
(:func:`write_optimize_report`) adds the job at a glance, a card per target with its gates,
bar charts and the gates' table, in one self-contained file (see :mod:`.html`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmops_pipelines.steps.report import html as kit

# Columns shown in the terminal; the HTML report shows all of them.
COMPACT = {"size MB", "accuracy", "perplexity", "prefill ms p50", "decode tok/s p50"}
COLUMNS = [
    ("size MB", lambda m: m.get("size_mb")),
    ("accuracy", lambda m: m.get("accuracy")),
    ("perplexity", lambda m: m.get("perplexity")),
    ("ROUGE-L", lambda m: m.get("rouge_l")),
    ("BLEU", lambda m: m.get("bleu")),
    ("prefill ms p50", lambda m: (m.get("latency") or {}).get("prefill_ms_p50")),
    ("decode tok/s p50", lambda m: (m.get("latency") or {}).get("decode_tokens_per_s_p50")),
    ("decode ms/token p95", lambda m: (m.get("latency") or {}).get("decode_ms_per_token_p95")),
    ("threads", lambda m: (m.get("latency") or {}).get("threads")),  # sized where it was measured
]


# What a target (or the reference) measures once for all its adapters; the rest is per adapter.
_PER_MODEL = ("size_mb", "latency", "skipped")


def _per_model(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: metrics.get(key) for key in _PER_MODEL}


Entry = tuple[str, str, dict[str, Any], float | None]  # model, adapter, metrics, speedup


def _entries(doc: dict[str, Any], *, compact: bool) -> list[Entry]:
    """(model, adapter, metrics, speedup) per row: the references, then each target.

    With several adapters a model's row holds size and latency, and one row per adapter
    (its own data, its own reference) holds the rest.
    """
    reference = doc["reference"]
    by_adapter = reference.get("byAdapter") or {}
    finetuned = reference["finetuned_pytorch"]
    entries: list[Entry] = [("pytorch fp32", "", _per_model(finetuned) if by_adapter else finetuned, None)]
    entries += [("pytorch fp32", name, ref["finetuned_pytorch"], None) for name, ref in by_adapter.items()]
    if by_adapter:
        bases = [(name, ref["base_pytorch"]) for name, ref in by_adapter.items() if ref.get("base_pytorch")]
    else:
        bases = [("", reference["base_pytorch"])] if reference.get("base_pytorch") else []
    entries += [("pytorch fp32 base", name, base, None) for name, base in bases]
    for name, target in doc["targets"].items():
        label = (
            name
            if compact
            else f"{name} ({target['provider'].removesuffix('ExecutionProvider')} {target['precision']})"
        )
        rows = target.get("byAdapter") or {}
        speedup = target.get("vsFinetuned", {}).get("decode_speedup")
        entries.append((label, "", _per_model(target["metrics"]) if rows else target["metrics"], speedup))
        entries += [(label, adapter, row["metrics"], None) for adapter, row in rows.items()]
    return entries


def comparison_rows(doc: dict[str, Any], *, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (shared by the CLI and the HTML report)."""
    entries = _entries(doc, compact=compact)
    adapter_column = any(adapter for _, adapter, _, _ in entries)  # only jobs with several adapters
    columns = [(t, g) for t, g in COLUMNS if t in COMPACT] if compact else COLUMNS
    used = [(title, get) for title, get in columns if any(get(m) is not None for _, _, m, _ in entries)]
    notes = [f"skipped: {m['skipped']}" if m.get("skipped") else "" for _, _, m, _ in entries]
    header = [
        "model",
        *(["adapter"] if adapter_column else []),
        *[title for title, _ in used],
        "speedup",
        *(["note"] if any(notes) else []),  # an empty column would cost 80 columns' room
    ]
    rows = []
    for (label, adapter, metrics, speedup), note in zip(entries, notes, strict=True):
        cells = [label, *([adapter] if adapter_column else []), *[_fmt(get(metrics)) for _, get in used]]
        cells.append(f"{speedup:.2f}x" if speedup else "")
        rows.append(cells + ([note] if any(notes) else []))
    return header, rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


GATES = {
    "accuracyDrop": "accuracy drop ≤",
    "perplexityIncrease": "perplexity increase ≤",
    "decodeSpeedup": "decode speedup ≥",
    "sizeMb": "size MB ≤",
}
REFERENCE = "PyTorch fp32"


def write_optimize_report(doc: dict[str, Any], out_dir: Path, *, title: str) -> Path:
    """``report.html``: the job at a glance, a card per target, the comparison, charts and gates."""
    rows = doc["evaluation"]["rows"]
    body = "".join(
        [
            kit.figures(_key_figures(doc)),
            kit.section("Targets", _target_cards(doc), anchor="targets"),
            kit.section("Comparison", comparison_table(doc) + _conditions(rows), anchor="comparison"),
            kit.section("Speed, accuracy and size", _charts(doc), anchor="charts"),
            kit.section("Gates", _gates_table(doc.get("gates", [])), anchor="gates"),
            kit.usage_section(doc.get("usage")),
        ]
    )
    footer = "slmops · all figures in metrics.json"
    page = kit.page(title=title, header=_header(doc, title), body=body, footer=footer)
    path = out_dir / "report.html"
    path.write_text(page)
    return path


def comparison_table(doc: dict[str, Any]) -> str:
    """The comparison as an HTML table: :func:`comparison_rows`, every column, numbers to the right."""
    header, rows = comparison_rows(doc)
    numeric = [title not in ("model", "adapter", "note") for title in header]
    cells = [[kit.esc(cell) for cell in row] for row in rows]
    return kit.table([kit.esc(h) for h in header], cells, numeric=numeric)


def _conditions(rows: int) -> str:
    return (
        f'<p class="fine">{rows} evaluation rows; latency: a 32-token '
        "prompt, 32 new tokens, batch 1 (p50 over the runs), with the threads shown (the CPUs the "
        "evaluation may use, or runtime.threads); speedup: decode tokens/s against "
        f"{REFERENCE}.</p>"
    )


def _violated(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for g in doc.get("gates", []) if g["passed"] is False]


def _header(doc: dict[str, Any], title: str) -> str:
    job, source = doc.get("job") or {}, doc.get("source") or {}
    violated = _violated(doc)
    phase = "Failed: gate violated" if violated else "Succeeded"
    targets = ", ".join(
        f"{name} ({t['provider'].removesuffix('ExecutionProvider')} {t['precision']})"
        for name, t in doc["targets"].items()
    )
    return kit.job_header(
        kind=job.get("kind") or "",
        name=job.get("name") or title,
        phase=phase,
        ok=not violated,
        meta=[
            (
                "source",
                f"{source.get('kind', '')} {source['fineTuneJob']}".strip()
                if source.get("fineTuneJob")
                else source.get("model"),
            ),
            ("base model", source.get("baseModel")),
            ("targets", targets),
            ("evaluation", f"{doc['evaluation']['rows']} rows, {', '.join(doc['evaluation']['metrics'])}"),
            ("namespace", job.get("namespace")),
        ],
    )


def _key_figures(doc: dict[str, Any]) -> list[kit.Figure]:
    targets = doc["targets"]
    found = []
    speedups = {n: t.get("vsFinetuned", {}).get("decode_speedup") for n, t in targets.items()}
    measured = {n: s for n, s in speedups.items() if s}
    if measured:
        best = max(measured, key=lambda n: measured[n])
        note = f"<b>{kit.esc(best)}</b> vs {REFERENCE}"
        found.append(kit.Figure("Fastest decode", kit.times(measured[best]), note))
    sizes = {n: t["metrics"].get("size_mb") for n, t in targets.items() if t["metrics"].get("size_mb")}
    if sizes:
        small = min(sizes, key=lambda n: sizes[n])
        reference = doc["reference"]["finetuned_pytorch"].get("size_mb")
        note = f"<b>{kit.esc(small)}</b>" + (f", {REFERENCE} {kit.megabytes(reference)}" if reference else "")
        found.append(kit.Figure("Smallest", kit.megabytes(sizes[small]), note))
    gates = doc.get("gates", [])
    if gates:
        passed = sum(1 for g in gates if g["passed"])
        unchecked = sum(1 for g in gates if g["passed"] is None)
        note = ", ".join(
            p for p in (f"{len(_violated(doc))} violated", f"{unchecked} unchecked" if unchecked else "") if p
        )
        found.append(kit.Figure("Gates passed", f"{passed}/{len(gates)}", note))
    if doc.get("wall_time_s") is not None:
        found.append(kit.Figure("Wall time", kit.duration(doc["wall_time_s"]), f"{len(targets)} targets"))
    return found


def _target_cards(doc: dict[str, Any]) -> str:
    gates_by_target: dict[str, list[dict[str, Any]]] = {}
    for gate in doc.get("gates", []):
        gates_by_target.setdefault(gate["target"], []).append(gate)
    cards = [_target_card(name, t, gates_by_target.get(name, [])) for name, t in doc["targets"].items()]
    return f'<div class="targets">{"".join(cards)}</div>'


def _target_card(name: str, target: dict[str, Any], gates: list[dict[str, Any]]) -> str:
    metrics, versus = target["metrics"], target.get("vsFinetuned", {})
    kind = f"{target['provider'].removesuffix('ExecutionProvider')} {target['precision']}"
    adapters = target.get("adapters") or []
    if adapters:
        kind += f" · adapters: {', '.join(adapters)}"
    speedup = versus.get("decode_speedup")
    accuracy = metrics.get("accuracy")
    accuracy_note = ""
    if accuracy is not None and versus.get("accuracy") is not None:
        accuracy_note = f"{versus['accuracy'] * 100:+.1f} pts vs {REFERENCE}"
    if target.get("byAdapter") and adapters:  # each adapter's own row is in the comparison
        accuracy_note = f"adapter {next(iter(target['byAdapter']))}; " + accuracy_note
    stats = [
        ("speedup", kit.times(speedup) if speedup else "–", _rate(metrics)),
        ("size", kit.megabytes(metrics["size_mb"]) if metrics.get("size_mb") else "–", ""),
        ("accuracy", kit.percent(accuracy) if accuracy is not None else "–", accuracy_note),
    ]
    stat_html = "".join(
        f'<div class="stat"><div class="label">{kit.esc(label)}</div><div class="value">{value}</div>'
        f'<div class="note">{kit.esc(note)}</div></div>'
        for label, value, note in stats
    )
    badges = [kit.badge(f"skipped: {metrics['skipped']}", "")] if metrics.get("skipped") else []
    badges += [_gate_badge(g) for g in gates]
    return (
        f'<div class="target"><div class="name">{kit.esc(name)} {kit.badge(kind, "info")}</div>'
        f'<div class="stats">{stat_html}</div><div class="badges">{"".join(badges)}</div></div>'
    )


def _rate(metrics: dict[str, Any]) -> str:
    rate = (metrics.get("latency") or {}).get("decode_tokens_per_s_p50")
    return f"{rate:,.0f} tokens/s" if rate else ""


def _gate_badge(gate: dict[str, Any]) -> str:
    label = GATES.get(gate["gate"], gate["gate"])
    text = (f"{gate['adapter']}: " if gate.get("adapter") else "") + f"{label} {gate['limit']:g}"
    if gate["passed"] is None:
        return kit.badge("unchecked: " + text, "")
    if gate["passed"]:
        return kit.badge("✓ " + text, "ok")
    return kit.badge("✗ " + text, "bad")


def _gate_subject(gate: dict[str, Any]) -> str:
    """The target, and the adapter of a quality gate on a target with several."""
    return gate["target"] + (f", adapter {gate['adapter']}" if gate.get("adapter") else "")


def _gates_table(gates: list[dict[str, Any]]) -> str:
    if not gates:
        return '<p class="empty">no gates set</p>'
    verdicts = {
        True: kit.badge("ok", "ok"),
        False: kit.badge("VIOLATED", "bad"),
        None: kit.badge("unchecked"),
    }
    rows = [
        [
            kit.esc(_gate_subject(g)),
            kit.esc(GATES.get(g["gate"], g["gate"]).rstrip(" ≤≥")),
            _fmt(g["value"]),
            f"{'≥' if g['gate'] == 'decodeSpeedup' else '≤'} {g['limit']:g}",
            verdicts[g["passed"]],
        ]
        for g in gates
    ]
    return kit.table(
        ["target", "gate", "value", "limit", "result"], rows, numeric=[False, False, True, True, False]
    )


def _charts(doc: dict[str, Any]) -> str:
    models = [(REFERENCE, doc["reference"]["finetuned_pytorch"])]
    models += [(name, t["metrics"]) for name, t in doc["targets"].items()]

    def rate(m: dict[str, Any]) -> float | None:
        return (m.get("latency") or {}).get("decode_tokens_per_s_p50")

    charts = [
        ("decode tokens/s (p50), higher is better", rate, kit.number, kit.PALETTE[0], 0.0),
        ("accuracy, higher is better", lambda m: m.get("accuracy"), kit.percent, kit.PALETTE[2], 1.0),
        ("size (MB), lower is better", lambda m: m.get("size_mb"), kit.number, kit.PALETTE[3], 0.0),
    ]
    drawn = []
    for title, get, shown, color, maximum in charts:
        values = [(label, get(m)) for label, m in models]
        if any(v is not None for _, v in values):
            bars = [(label, v, shown(v) if v is not None else "") for label, v in values]
            drawn.append(kit.bar_chart(bars, title=title, color=color, maximum=maximum))
    return f'<div class="grid2">{"".join(drawn)}</div>' if drawn else '<p class="empty">nothing measured</p>'
