"""Human-readable results: ``metrics.json``, ``loss_curve.png`` and ``report.html``.

The HTML report is self-contained (the plot is embedded), so it can be opened from S3, a
KFP HTML artifact or a laptop folder alike.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any


def plot_loss_curve(log_history: list[dict], out_path: Path, *, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), marker=".", label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows if v is not None)
    return f"<table>{body}</table>"


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """The headline figures, shared by the CLI's table and the HTML report."""
    data, train, evaluation = (
        metrics.get("data", {}),
        metrics.get("train", {}),
        metrics.get("evaluation") or {},
    )
    base, tuned = evaluation.get("base"), evaluation.get("finetuned")
    return [
        ("training rows", data.get("train", {}).get("rows")),
        ("eval rows", (data.get("eval") or {}).get("rows")),
        ("truncated rows", data.get("train", {}).get("truncated")),
        ("steps", train.get("global_step")),
        ("processes", train.get("world_size")),
        ("resumed from step", train.get("resumed_from_step")),
        ("train loss", train.get("train_loss")),
        ("eval loss", train.get("eval_loss")),
        ("tokens/s", train.get("tokens_per_second")),
        ("seconds/step", train.get("seconds_per_step")),
        ("peak memory (MB)", train.get("peak_memory_mb")),
        (
            "accuracy, base model",
            f"{base['accuracy']:.1%} ({base['correct']}/{base['total']})" if base else None,
        ),
        (
            "accuracy, fine-tuned",
            f"{tuned['accuracy']:.1%} ({tuned['correct']}/{tuned['total']})" if tuned else None,
        ),
        *[
            (f"{name}, {which}", value)
            for which, result in (("base model", base), ("fine-tuned", tuned))
            for name, value in ((result or {}).get("metrics") or {}).items()
        ],
        ("wall time (s)", metrics.get("wall_time_s")),
    ]


def _embedded(plot: Path | None, alt: str) -> str:
    if not plot or not plot.exists():
        return ""
    encoded = base64.b64encode(plot.read_bytes()).decode()
    return f'<img alt="{alt}" src="data:image/png;base64,{encoded}">'


def _leaderboard(metrics: dict[str, Any], search_plot: Path | None) -> str:
    search = metrics.get("search")
    if not search:
        return ""

    def row(trial: dict[str, Any]) -> str:
        value = "" if trial["value"] is None else f"{trial['value']:.4g}"
        params = html.escape(json.dumps(trial["params"]))
        return f"<tr><td>{trial['trial']}</td><td>{trial['state']}</td><td>{value}</td><td>{params}</td></tr>"

    rows = "".join(row(t) for t in search["trials"])
    return (
        f"<h2>Search: {html.escape(search['strategy'])}, {html.escape(search['metric'])} "
        f"({html.escape(search['direction'])}), best trial {search['best_trial']}</h2>"
        f"<table><tr><th>trial</th><th>state</th><th>{html.escape(search['metric'])}</th><th>params</th></tr>{rows}</table>"
        f"{_embedded(search_plot, 'metric against parameters')}"
    )


def write_report(
    metrics: dict[str, Any], out_dir: Path, *, title: str, plot: Path | None, search_plot: Path | None = None
) -> Path:
    image = _embedded(plot, "loss curve")
    samples = ((metrics.get("evaluation") or {}).get("finetuned") or {}).get("samples", [])
    sample_rows = "".join(
        f"<tr><td>{html.escape(s['expected'])}</td><td>{html.escape(s['generated'])}</td></tr>"
        for s in samples
    )
    sample_table = (
        f"<h2>Sample answers</h2><table><tr><th>expected</th><th>generated</th></tr>{sample_rows}</table>"
        if samples
        else ""
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}} th,td{{border:1px solid #ccc;padding:.3em .7em;text-align:left}}
th{{background:#f4f4f4}} img{{max-width:100%}} pre{{background:#f8f8f8;padding:1em;overflow:auto}}
</style></head><body>
<h1>{html.escape(title)}</h1>
{_table(summary_rows(metrics))}
{image}
{_leaderboard(metrics, search_plot)}
{sample_table}
<h2>Data</h2><pre>{html.escape(json.dumps(metrics.get("data", {}), indent=2))}</pre>
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path
