"""Building blocks of the HTML reports: the page, key figures, badges, tables and SVG charts.

A report is one self-contained file: the style sheet is inline and the charts are inline SVG
drawn here (no script, no web font, no CDN), so it reads the same from S3, a KFP HTML
artifact or a laptop folder without a network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2")

STYLE = """
:root{--fg:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f3f4f6;--card:#fff;--accent:#2563eb;
--ok:#15803d;--ok-bg:#dcfce7;--bad:#b91c1c;--bad-bg:#fee2e2;--skip:#4b5563;--skip-bg:#e5e7eb}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 system-ui,-apple-system,"Segoe UI",
Roboto,"DejaVu Sans",sans-serif}
main{max-width:1120px;margin:0 auto;padding:24px 20px 48px}
header.job{background:var(--card);border-radius:12px;padding:20px 24px;border-top:4px solid var(--accent);
box-shadow:0 1px 2px rgba(0,0,0,.06)}
.kind{color:var(--muted);font-size:13px;letter-spacing:.06em;text-transform:uppercase}
h1{margin:2px 0 10px;font-size:28px;line-height:1.2;word-break:break-word}
h1 .badge{vertical-align:middle;margin-left:8px}
h2{font-size:18px;margin:0 0 12px} h3{font-size:16px;margin:20px 0 8px}
p.fine{color:var(--muted);font-size:13px;margin:10px 0 0}
dl.meta{display:flex;flex-wrap:wrap;gap:6px 28px;margin:0}
dl.meta div{min-width:0}
dl.meta dt{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}
dl.meta dd{margin:0;font-weight:500;overflow-wrap:anywhere}
.figures{display:grid;grid-template-columns:repeat(auto-fit,minmax(210px,1fr));gap:14px;margin:18px 0}
.figure{background:var(--card);border-radius:12px;padding:14px 18px;box-shadow:0 1px 2px rgba(0,0,0,.06)}
.figure .label{color:var(--muted);font-size:13px}
.figure .value{font-size:30px;font-weight:700;line-height:1.25;font-variant-numeric:tabular-nums}
.figure .value .arrow{color:var(--muted);font-weight:400;margin:0 .15em}
.figure .note{color:var(--muted);font-size:13px}
.figure .note b{color:var(--fg)}
.up{color:var(--ok)} .down{color:var(--bad)}
.targets{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(300px,100%),1fr));gap:14px}
.target{border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.target .name{font-weight:700;font-size:16px;margin-bottom:8px}
.target .stats{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:8px}
.target .label,.target .note{color:var(--muted);font-size:12px}
.target .value{font-size:21px;font-weight:700;font-variant-numeric:tabular-nums;white-space:nowrap}
section{background:var(--card);border-radius:12px;padding:18px 22px;margin:14px 0;
box-shadow:0 1px 2px rgba(0,0,0,.06)}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(320px,100%),1fr));gap:8px 28px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:7px 10px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
thead th{font-size:13px;color:var(--muted);font-weight:600;border-bottom:2px solid var(--line);vertical-align:bottom}
tbody tr:nth-child(even){background:#f9fafb}
th.num{text-align:right} td.num{text-align:right;white-space:nowrap} td:first-child{white-space:nowrap}
table.kv th{font-weight:500;color:var(--muted);width:45%} table.kv td{overflow-wrap:anywhere}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600;
white-space:nowrap;background:var(--skip-bg);color:var(--skip)}
.badge.ok{background:var(--ok-bg);color:var(--ok)} .badge.bad{background:var(--bad-bg);color:var(--bad)}
.badge.info{background:#dbeafe;color:#1d4ed8}
.badges{display:flex;flex-wrap:wrap;gap:4px;margin-top:6px}
figure.chart{margin:0}
figure.chart svg{display:block;width:100%;height:auto}
figcaption{color:var(--muted);font-size:13px;margin-top:4px}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:13px;margin-bottom:4px}
.legend span::before{content:"";display:inline-block;width:14px;height:3px;margin-right:6px;
vertical-align:middle;background:var(--c)}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;fill:#4b5563}
img{max-width:100%}
details summary{cursor:pointer;color:var(--muted)}
pre{background:#f9fafb;border:1px solid var(--line);border-radius:8px;padding:12px;overflow:auto;font-size:13px}
.empty{color:var(--muted);font-style:italic}
footer{color:var(--muted);font-size:13px;text-align:center;margin-top:24px}
@media (max-width:640px){main{padding:12px 10px 32px}header.job,section{padding:14px}
h1{font-size:22px}.figure .value{font-size:22px;overflow-wrap:anywhere}
.figures{grid-template-columns:repeat(2,minmax(0,1fr));gap:10px}.figure{padding:10px 12px}
figure.chart.wide{overflow-x:auto} figure.chart.wide svg{min-width:500px}}
"""


def esc(value: Any) -> str:
    return html.escape(str(value))


def page(*, title: str, header: str, body: str, footer: str = "") -> str:
    """The whole document: one file, style inline, nothing fetched."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style></head>\n"
        f"<body><main>\n{header}\n{body}\n<footer>{footer}</footer>\n</main></body></html>\n"
    )


def job_header(*, kind: str, name: str, phase: str, ok: bool, meta: Sequence[tuple[str, Any]]) -> str:
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in meta if v not in (None, ""))
    return (
        f'<header class="job"><div class="kind">{esc(kind)}</div>'
        f"<h1>{esc(name)}{badge(phase, 'ok' if ok else 'bad')}</h1>"
        f'<dl class="meta">{items}</dl></header>'
    )


def badge(text: str, kind: str = "") -> str:
    return f'<span class="badge {kind}">{esc(text)}</span>'


@dataclass
class Figure:
    """One key figure: a label, a big value (HTML) and a note (HTML) under it."""

    label: str
    value: str
    note: str = ""


def figures(items: Sequence[Figure]) -> str:
    cards = "".join(
        f'<div class="figure"><div class="label">{esc(f.label)}</div><div class="value">{f.value}</div>'
        f'<div class="note">{f.note}</div></div>'
        for f in items
    )
    return f'<div class="figures">{cards}</div>' if cards else ""


def section(title: str, content: str, *, anchor: str = "") -> str:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>{content}</section>"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[bool] = ()) -> str:
    """A table of cells that are already HTML; ``numeric`` right-aligns columns."""

    def cls(i: int) -> str:
        return ' class="num"' if i < len(numeric) and numeric[i] else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def kv_table(rows: Sequence[tuple[str, Any]], *, columns: int = 1) -> str:
    """Name/value rows (``None`` values left out), split into side-by-side tables on wide screens."""
    shown = [(k, v) for k, v in rows if v is not None]
    per = -(-len(shown) // columns) or 1
    tables = [
        '<table class="kv"><tbody>'
        + "".join(f"<tr><th>{esc(k)}</th><td>{fmt(v)}</td></tr>" for k, v in shown[i : i + per])
        + "</tbody></table>"
        for i in range(0, len(shown), per)
    ]
    return tables[0] if len(tables) == 1 else f'<div class="grid2">{"".join(tables)}</div>'


# -- numbers ---------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return esc(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def number(value: float) -> str:
    """A measured figure for people: three significant digits, thousands separated from 100 up."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def times(value: float) -> str:
    """A ratio such as a speedup: 2.42x, 11.3x, 1,133x."""
    return f"{value:,.0f}x" if value >= 100 else f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def percent(value: float) -> str:
    return f"{value:.1%}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def megabytes(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB" if mb >= 10 else f"{mb:.2f} MB"


def nice_ticks(low: float, high: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values from at or below ``low`` to at or above ``high`` (steps of 1, 2, 2.5 or 5
    times a power of ten; whole steps when ``integer``)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if integer:
        step = max(1, round(step))
    ticks = [round(math.floor(low / step) * step, 12)]
    while ticks[-1] < high - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


# -- charts ----------------------------------------------------------------------------------


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    color: str = PALETTE[0]
    dashed: bool = False
    markers: bool = False


def line_chart(series: Sequence[Series], *, x_label: str, y_label: str, caption: str = "") -> str:
    """An SVG line chart with axes, ticks, grid, axis labels and a legend; one point per data point."""
    drawn = [s for s in series if s.points]
    if not drawn:
        return '<p class="empty">nothing was logged to plot</p>'
    width, height, left, right, top, bottom = 760, 340, 64, 18, 14, 50
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points]
    # From zero unless the values sit far above it (then zero would flatten the curve).
    low = 0.0 if 0 <= min(ys) <= 0.4 * max(ys) else min(ys)
    whole = all(float(x).is_integer() for x in xs)
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs), 6, integer=whole), nice_ticks(low, max(ys), 5)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * (width - left - right)

    def py(y: float) -> float:
        return top + (1 - (y - y0) / ((y1 - y0) or 1)) * (height - top - bottom)

    parts = [_axes(width, height, left, right, top, bottom, x_label, y_label)]
    parts += [
        f'<line class="grid" x1="{left}" x2="{width - right}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e5e7eb"/>'
        f'<text x="{left - 8}" y="{py(t) + 4:.1f}" text-anchor="end" font-size="12">{_tick(t)}</text>'
        for t in y_ticks
    ]
    parts += [
        f'<text x="{px(t):.1f}" y="{height - bottom + 18}" text-anchor="middle" font-size="12">{_tick(t)}</text>'
        for t in x_ticks
    ]
    for s in drawn:
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(s.points)
        )
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        parts.append(
            f'<path class="series" data-series="{esc(s.name)}" d="{path}" fill="none" stroke="{s.color}" '
            f'stroke-width="2.2" stroke-linejoin="round"{dash}/>'
        )
        radius = 3.5 if s.markers or len(s.points) == 1 else 1.8
        parts += [
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="{radius}" fill="{s.color}">'
            f"<title>{esc(s.name)}: step {_tick(x)}, {fmt(float(y))}</title></circle>"
            for x, y in s.points
        ]
    legend = "".join(f'<span style="--c:{s.color}">{esc(s.name)}</span>' for s in drawn)
    return _figure(legend, width, height, y_label + " against " + x_label, "".join(parts), caption)


def bar_chart(
    rows: Sequence[tuple[str, float | None, str]], *, title: str, color: str = PALETTE[0], maximum: float = 0
) -> str:
    """Horizontal bars, one per (label, value, shown text); ``None`` draws no bar ("n/a")."""
    width, label_w, value_w, bar_h, gap, top = 360, 110, 56, 22, 9, 30
    height = top + len(rows) * (bar_h + gap) + 4
    peak = max([maximum] + [v for _, v, _ in rows if v is not None]) or 1.0
    scale = (width - label_w - value_w) / peak
    parts = [f'<text x="0" y="16" font-size="14" font-weight="600" style="fill:#1f2937">{esc(title)}</text>']
    for i, (label, value, shown) in enumerate(rows):
        y = top + i * (bar_h + gap)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end" font-size="12">'
            f"{esc(_clip(label, 16))}<title>{esc(label)}</title></text>"
        )
        if value is None:
            parts.append(f'<text x="{label_w + 4}" y="{y + bar_h / 2 + 4:.1f}" font-size="12">n/a</text>')
            continue
        bar = max(value * scale, 1.5)
        parts.append(
            f'<rect class="bar" x="{label_w}" y="{y}" width="{bar:.1f}" height="{bar_h}" rx="3" fill="{color}">'
            f"<title>{esc(label)}: {esc(shown)}</title></rect>"
            f'<text x="{label_w + bar + 6:.1f}" y="{y + bar_h / 2 + 4:.1f}" font-size="12">{esc(shown)}</text>'
        )
    parts.append(f'<line x1="{label_w}" x2="{label_w}" y1="{top - 4}" y2="{height - 4}" stroke="#9ca3af"/>')
    return _figure("", width, height, title, "".join(parts), "", small=True)


def _axes(width: int, height: int, left: int, right: int, top: int, bottom: int, x: str, y: str) -> str:
    mid_y = top + (height - top - bottom) / 2
    return (
        f'<line class="axis" x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}" '
        f'stroke="#6b7280"/><line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" '
        f'stroke="#6b7280"/><text x="{left + (width - left - right) / 2:.0f}" y="{height - 8}" '
        f'text-anchor="middle" font-size="13">{esc(x)}</text><text transform="translate(16 {mid_y:.0f}) '
        f'rotate(-90)" text-anchor="middle" font-size="13">{esc(y)}</text>'
    )


def _figure(legend: str, width: int, height: int, label: str, inner: str, caption: str, small=False) -> str:
    legend_html = f'<div class="legend">{legend}</div>' if legend else ""
    style = ' style="max-width:480px"' if small else ""
    kind = "chart" if small else "chart wide"
    caption_html = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (
        f'<figure class="{kind}"{style}>{legend_html}<svg xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}">{inner}</svg>{caption_html}</figure>'
    )


def _tick(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.0e}"


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def usage_section(usage: dict[str, Any] | None) -> str:
    """What the job cost, stage by stage (metrics.json ``usage``); nothing when it was not measured."""
    if not usage or not usage.get("stages"):
        return ""
    rows = [
        [
            esc(name),
            str(row["runs"]),
            str(row["gpus"]),
            duration(row["wall_s"]),
            number(row["cpu_s"]),
            number(row["gpu_s"]),
        ]
        for name, row in usage["stages"].items()
    ]
    rows.append(
        [
            "<b>total</b>",
            "",
            "",
            duration(usage["wall_seconds"]),
            number(usage["cpu_seconds"]),
            number(usage["gpu_seconds"]),
        ]
    )
    header = ["stage", "runs", "GPUs", "wall time", "CPU-seconds", "GPU-seconds"]
    return section(
        "Usage", table(header, rows, numeric=[False, True, True, True, True, True]), anchor="usage"
    )
