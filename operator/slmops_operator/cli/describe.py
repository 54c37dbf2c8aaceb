"""``slmops describe OUTPUT``: what a job's output location holds, for people (a table) or scripts (JSON).

The identity the output was claimed by, its phase (Succeeded when the manifest is there),
the summary metrics, the artifacts, and whether every file still matches the manifest's
size and sha256 -- the question to ask before serving or promoting what a job produced.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

PHASE_STYLES = {"Succeeded": "green", "Failed": "red", "Incomplete": "yellow"}


def describe_table(described: dict[str, Any]) -> Table:
    job = described["job"]
    table = Table(
        title=escape(f"{job.get('kind')} {job.get('namespace')}/{job.get('name')}"),
        show_header=False,
        title_justify="left",
    )
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    phase = described["phase"]
    table.add_row("phase", f"[{PHASE_STYLES.get(phase, 'white')}]{phase}[/]")
    table.add_row("output", escape(described["uri"]))
    if job.get("uid"):
        table.add_row("uid", escape(job["uid"]))
    if described.get("createdAt"):
        table.add_row("finished", escape(described["createdAt"]))
    if described.get("error"):
        error = described["error"]
        where = f"spec.{error['field']}: " if error.get("field") else ""
        table.add_row("error", escape(f"{where}{error['message']} ({error['reason']})"))
    for key, value in described.get("metrics", {}).items():
        table.add_row(escape(key), f"{value:.4g}")
    for key, uri in described.get("artifacts", {}).items():
        table.add_row(escape(key), escape(uri))
    checksums = described.get("checksums")
    if checksums is not None:
        table.add_row("checksums", checksum_verdict(checksums))
    return table


def checksum_verdict(checksums: dict[str, Any]) -> str:
    if not checksums["verified"]:
        return f"not verified ({checksums['files']} files listed)"
    if checksums["ok"]:
        return f"[green]ok[/]: {checksums['files']} files match the manifest"
    listed = escape("; ".join(checksums["problems"][:5]))
    more = f" (+{len(checksums['problems']) - 5} more)" if len(checksums["problems"]) > 5 else ""
    return f"[red]{len(checksums['problems'])} file(s) differ[/]: {listed}{more}"


def print_description(described: dict[str, Any], console: Console) -> None:
    console.print(describe_table(described), highlight=False)
