"""Human-readable results of a FineTuneJob: ``loss_curve.png`` and ``report.html``.

The HTML report is one self-contained file (style and charts inline, see :mod:`.html`), so
it can be opened from S3, a KFP HTML artifact or a laptop folder alike, without a network.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmops_pipelines.steps.report import html as kit


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


def _positions_computed(train: dict[str, Any]) -> str | None:
    """What the steps ran against the tokens they trained on, where a shared prefix made it fewer."""
    computed, seen = train.get("positions_computed"), train.get("tokens_seen")
    if not computed or not seen or computed >= seen:
        return None
    return f"{computed:,} ({computed / seen:.0%} of the tokens: shared prefix)"


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
        ("positions computed", _positions_computed(train)),
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


METHODS = {"lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA", "full": "full fine-tuning"}


def write_report(
    metrics: dict[str, Any], out_dir: Path, *, title: str, search_plot: Path | None = None
) -> Path:
    """``report.html``: the job at a glance, the loss curve, the evaluation, the search and the data."""
    train = metrics.get("train", {})
    body = "".join(
        [
            kit.figures(_key_figures(metrics)),
            kit.section("Loss curve", _loss_chart(metrics.get("log_history") or []), anchor="loss"),
            _evaluation_section(metrics.get("evaluation") or {}),
            _leaderboard(metrics, search_plot),
            kit.section("Training", kit.kv_table(summary_rows(metrics), columns=2), anchor="training"),
            _data_section(metrics.get("data") or {}),
            kit.usage_section(metrics.get("usage")),
        ]
    )
    footer = f"slmops · {train.get('tokens_seen', 0):,} tokens seen · all figures in metrics.json"
    page = kit.page(title=title, header=_header(metrics, title), body=body, footer=footer)
    path = out_dir / "report.html"
    path.write_text(page)
    return path


def _header(metrics: dict[str, Any], title: str) -> str:
    job, train = metrics.get("job") or {}, metrics.get("train") or {}
    steps = train.get("global_step")
    if steps is not None and train.get("total_steps"):
        steps = f"{steps} of {train['total_steps']}" + (
            " (stopped early)" if train.get("stopped_early") else ""
        )
    return kit.job_header(
        kind=job.get("kind") or "",
        name=job.get("name") or title,
        phase="Succeeded",
        ok=True,
        meta=[
            ("model", job.get("model")),
            ("method", METHODS.get(job.get("method", ""), job.get("method"))),
            ("dataset", job.get("dataset")),
            ("namespace", job.get("namespace")),
            ("steps", steps),
            ("processes", train.get("world_size")),
        ],
    )


def _key_figures(metrics: dict[str, Any]) -> list[kit.Figure]:
    train, evaluation = metrics.get("train") or {}, metrics.get("evaluation") or {}
    found: list[kit.Figure | None] = [_accuracy_figure(evaluation.get("base"), evaluation.get("finetuned"))]
    losses = [h["loss"] for h in metrics.get("log_history") or [] if "loss" in h]
    if losses:
        eval_loss = train.get("eval_loss")
        note = (
            f"eval loss <b>{kit.fmt(eval_loss)}</b>"
            if eval_loss is not None
            else "train loss, first → last log"
        )
        value = f"{losses[-1]:.3g}" if len(losses) == 1 else _arrow(f"{losses[0]:.3g}", f"{losses[-1]:.3g}")
        found.append(kit.Figure("Train loss", value, note))
    if train.get("tokens_per_second"):
        per_step = train.get("seconds_per_step")
        note = f"{per_step:.2f} s/step" if per_step else ""
        found.append(kit.Figure("Training tokens/s", f"{train['tokens_per_second']:,.0f}", note))
    if metrics.get("wall_time_s") is not None:
        runtime = train.get("train_runtime_s")
        note = f"training {kit.duration(runtime)}" if runtime else ""
        found.append(kit.Figure("Wall time", kit.duration(metrics["wall_time_s"]), note))
    if train.get("trainable_parameters") and train.get("total_parameters"):
        share = train["trainable_parameters"] / train["total_parameters"]
        note = f"{_count(train['trainable_parameters'])} of {_count(train['total_parameters'])} parameters"
        found.append(kit.Figure("Trained", kit.percent(share), note))
    if train.get("peak_memory_mb"):
        found.append(kit.Figure("Peak memory", kit.megabytes(train["peak_memory_mb"]), "per process"))
    return [f for f in found if f]


def _accuracy_figure(base: dict[str, Any] | None, tuned: dict[str, Any] | None) -> kit.Figure | None:
    if not tuned or not tuned.get("total"):
        return None
    after = _share(tuned["accuracy"])
    note = f"{tuned['correct']}/{tuned['total']} correct after fine-tuning"
    if not base:
        return kit.Figure("Accuracy, fine-tuned", after, note)
    change = (tuned["accuracy"] - base["accuracy"]) * 100
    direction = "up" if change > 0 else "down" if change < 0 else ""
    note = f'<b class="{direction}">{change:+.1f} points</b> · {note}'
    return kit.Figure("Accuracy, base → fine-tuned", _arrow(_share(base["accuracy"]), after), note)


def _share(value: float) -> str:
    return kit.percent(value).replace(".0%", "%")


def _arrow(before: str, after: str) -> str:
    return f'{before}<span class="arrow">→</span>{after}'


def _count(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _loss_chart(log_history: list[dict]) -> str:
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    return kit.line_chart(
        [
            kit.Series("train loss", train, kit.PALETTE[0]),
            kit.Series("eval loss", evals, kit.PALETTE[1], dashed=True, markers=True),
        ],
        x_label="step",
        y_label="loss",
        caption="Train loss at each logging step; eval loss at each evaluation (hover a point for its value).",
    )


def _evaluation_section(evaluation: dict[str, Any]) -> str:
    base, tuned = evaluation.get("base"), evaluation.get("finetuned")
    if not tuned:
        return ""
    names = ["accuracy", *((tuned.get("metrics") or {}).keys())]

    def value(result: dict[str, Any] | None, name: str) -> float | None:
        if not result:
            return None
        return result.get("accuracy") if name == "accuracy" else (result.get("metrics") or {}).get(name)

    rows = []
    for name in names:
        before, after = value(base, name), value(tuned, name)
        shown = kit.percent if name == "accuracy" else _shown
        change = ""
        if before is not None and after is not None:
            change = f"{(after - before) * 100:+.1f} pts" if name == "accuracy" else f"{after - before:+.3g}"
        rows.append([kit.esc(name), _maybe(shown, before), _maybe(shown, after), change])
    header = ["metric", "base model", "fine-tuned", "change"] if base else ["metric", "", "fine-tuned", ""]
    table = kit.table(header, rows, numeric=[False, True, True, True])
    return kit.section(
        f"Evaluation on {tuned['total']} rows", table + _samples(base, tuned), anchor="evaluation"
    )


def _shown(value: float) -> str:
    return kit.fmt(float(value))


def _maybe(shown: Callable[[float], str], value: float | None) -> str:
    return "" if value is None else shown(value)


def _samples(base: dict[str, Any] | None, tuned: dict[str, Any]) -> str:
    samples = tuned.get("samples") or []
    if not samples:
        return ""
    before = [s.get("generated", "") for s in (base or {}).get("samples") or []]
    header = ["expected", "fine-tuned answer"] + (["base model answer"] if before else [])
    rows = [
        [kit.esc(s["expected"]), _answer(s["generated"])] + ([_answer(before[i])] if i < len(before) else [])
        for i, s in enumerate(samples)
    ]
    return "<h3>Sample answers</h3>" + kit.table(header, rows)


def _answer(text: str) -> str:
    return kit.esc(text) if text.strip() else '<span class="empty">(nothing)</span>'


def _data_section(data: dict[str, Any]) -> str:
    columns = ["rows", "tokens", "label_tokens", "truncated", "dropped", "max_length"]
    splits = [(name, data[name]) for name in ("train", "eval") if data.get(name)]
    rows = [[name] + [f"{split.get(c, 0):,}" for c in columns] for name, split in splits]
    table = kit.table(["split", *[c.replace("_", " ") for c in columns]], rows, numeric=[False] + [True] * 6)
    facts = kit.kv_table(
        [
            ("mode", data.get("mode")),
            ("columns", ", ".join(data.get("columns") or []) or None),
            ("fingerprint", data.get("fingerprint")),
        ]
    )
    raw = f"<details><summary>data statistics as JSON</summary><pre>{kit.esc(json.dumps(data, indent=2))}</pre></details>"
    return kit.section("Data", table + facts + raw, anchor="data")


def _leaderboard(metrics: dict[str, Any], search_plot: Path | None) -> str:
    search = metrics.get("search")
    if not search:
        return ""

    def row(trial: dict[str, Any]) -> list[str]:
        best = trial["trial"] == search["best_trial"]
        state = kit.badge("best", "ok") if best else kit.badge(trial["state"].lower(), "")
        value = "" if trial["value"] is None else f"{trial['value']:.4g}"
        params = ", ".join(f"{k} = {kit.fmt(v)}" for k, v in trial["params"].items())
        return [str(trial["trial"]), state, value, kit.esc(params)]

    title = f"Search: {search['strategy']}, {search['metric']} ({search['direction']}), best trial {search['best_trial']}"
    table = kit.table(
        ["trial", "state", kit.esc(search["metric"]), "parameters"],
        [row(t) for t in search["trials"]],
        numeric=[True, False, True, False],
    )
    return kit.section(title, table + _embedded(search_plot, "metric against parameters"), anchor="search")


def _embedded(plot: Path | None, alt: str) -> str:
    if not plot or not plot.exists():
        return ""
    encoded = base64.b64encode(plot.read_bytes()).decode()
    return f'<img alt="{alt}" src="data:image/png;base64,{encoded}">'
