"""The OptimizeJob comparison: one row per model (PyTorch reference, base, each target)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

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
]


def comparison_rows(doc: dict[str, Any], *, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (shared by the CLI and the HTML report)."""
    reference = doc["reference"]
    entries = [("pytorch fp32", reference["finetuned_pytorch"], None)]
    if reference.get("base_pytorch"):
        entries.append(("pytorch fp32 base", reference["base_pytorch"], None))
    for name, target in doc["targets"].items():
        label = (
            name
            if compact
            else f"{name} ({target['provider'].removesuffix('ExecutionProvider')} {target['precision']})"
        )
        entries.append((label, target["metrics"], target.get("vsFinetuned", {}).get("decode_speedup")))
    columns = [(t, g) for t, g in COLUMNS if t in COMPACT] if compact else COLUMNS
    used = [(title, get) for title, get in columns if any(get(m) is not None for _, m, _ in entries)]
    header = ["model", *[title for title, _ in used], "speedup", "note"]
    rows = []
    for label, metrics, speedup in entries:
        cells = [label, *[_fmt(get(metrics)) for _, get in used]]
        cells.append(f"{speedup:.2f}x" if speedup else "")
        cells.append(f"skipped: {metrics['skipped']}" if metrics.get("skipped") else "")
        rows.append(cells)
    return header, rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _chart(doc: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, speeds, accuracies = [], [], []
    models = [("PyTorch fp32", doc["reference"]["finetuned_pytorch"])]
    models += [(name, t["metrics"]) for name, t in doc["targets"].items()]
    for label, metrics in models:
        latency = metrics.get("latency") or {}
        labels.append(label)
        speeds.append(latency.get("decode_tokens_per_s_p50") or 0)
        accuracies.append(metrics.get("accuracy") or 0)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    left.barh(labels, speeds, color="#4c72b0")
    left.set_xlabel("decode tokens/s (p50)")
    right.barh(labels, accuracies, color="#55a868")
    right.set_xlabel("accuracy")
    right.set_xlim(0, 1)
    right.set_yticklabels([])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def write_optimize_report(doc: dict[str, Any], out_dir, *, title: str):
    header, rows = comparison_rows(doc)
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    table += (
        "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        + "</table>"
    )
    gates = "".join(
        f"<li>{html.escape(g['target'])}: {html.escape(g['gate'])} = {_fmt(g['value'])} (limit {g['limit']:g}) "
        f"{'ok' if g['passed'] else ('unchecked' if g['passed'] is None else '<b>VIOLATED</b>')}</li>"
        for g in doc.get("gates", [])
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}} th,td{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}
th{{background:#f4f4f4}} img{{max-width:100%}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{doc["evaluation"]["rows"]} evaluation rows; latency: 32-token prompt, 32 new tokens, batch 1.</p>
{table}
<img alt="decode speed and accuracy per model" src="data:image/png;base64,{_chart(doc)}">
<h2>Gates</h2><ul>{gates or "<li>none set</li>"}</ul>
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path
