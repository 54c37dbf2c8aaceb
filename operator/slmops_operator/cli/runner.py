"""``slmops run``: run validated resources on this machine and print their results.

Two engines run the same stages: ``local`` (the default: one process, a progress bar) and
``kfp-local`` (the compiled KFP pipeline, each step its own process, through ``kfp.local``).
What a job kind runs and which tables it prints is the kind's (:mod:`slmops_pipelines.jobs`);
this module only renders them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slmops_operator.api.resources import Resource
from slmops_pipelines import jobs

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def render_table(table: jobs.SummaryTable) -> Table | str:
    """A kind's summary table for the terminal: rich wraps long cells, it never cuts names."""
    if table.layout == "lines":
        return "\n".join(f"  {escape(str(key))}: {escape(str(value))}" for key, value in table.rows)
    rich_table = Table(
        title=table.title,
        show_header=bool(table.columns),
        title_justify="left",
        box=box.SIMPLE_HEAD,  # no side borders: at 80 columns every character counts
        pad_edge=False,
        padding=0,  # the box's blank divider is the one space between columns
    )
    if table.columns:
        # The first column names the row: never wrapped, never cut.  The figures wrap at spaces
        # and fold (never "…") when a word is wider than what 80 columns leave them.
        rich_table.add_column(table.columns[0], no_wrap=True)
        for column in table.columns[1:]:
            rich_table.add_column(column, overflow="fold")
    else:  # key/value
        rich_table.add_column(style="bold")
        rich_table.add_column(overflow="fold")  # paths fold, never end in "…"
    for number, row in enumerate(table.rows):
        rich_table.add_row(
            *(escape(str(cell)) for cell in row), style="bold green" if number == table.highlight else None
        )
    return rich_table


def run_job(
    resource: Resource,
    *,
    runs_dir: Path,
    console: Console,
    outputs: dict[tuple[str, str], str],
    engine: str = "local",
) -> jobs.JobOutcome:
    """Run one job to the end and print its tables; ``outputs`` holds the jobs run before it."""
    from slmops_operator.cli.progress import RichReporter

    kind = jobs.job_kind(resource.kind_name)
    upstream = kind.upstream(resource.spec)
    source_uri = ""
    if upstream is not None:  # run in this invocation, or by an earlier `slmops run` into runs_dir
        source_uri = outputs.get((upstream.kind, upstream.name), str(runs_dir / upstream.name))
    started = time.time()
    console.rule(f"{resource.kind_name} {resource.name}")
    run = kind.new_run(
        resource.name,
        resource.spec,
        default_output=str(runs_dir / resource.name),
        namespace=resource.namespace,
        source_uri=source_uri,
    )
    if engine == "kfp-local":  # every step is its own process: no progress bar
        outcome = jobs.run_job(resource.kind_name, run, engine=engine)
    else:
        with RichReporter(console) as reporter:
            outcome = jobs.run_job(resource.kind_name, run, engine=engine, reporter=reporter)
    for table in kind.summary_tables(resource.name, outcome, wall_time_s=time.time() - started):
        console.print(render_table(table), highlight=False)
    return outcome


def result_of(resource: Resource, phase: str, **found: Any) -> dict[str, Any]:
    """One job's line of ``slmops run -o json``."""
    return {
        "kind": resource.kind_name,
        "name": resource.name,
        "namespace": resource.namespace,
        "phase": phase,
        **found,
    }


def run_resources(
    resources: list[Resource],
    *,
    runs_dir: Path,
    console: Console,
    err_console: Console,
    engine: str = "local",
    results: list[dict[str, Any]] | None = None,
) -> int:
    """Run every resource in order; a job finds the outputs of the jobs run before it (its upstream).

    ``results`` gets one entry per job run (``slmops run -o json``): its phase, output,
    artifacts and summary metrics, or its error with the spec field.
    """
    outputs: dict[tuple[str, str], str] = {}  # (kind, name) -> output URI
    results = results if results is not None else []
    for resource in resources:
        try:
            outcome = run_job(resource, runs_dir=runs_dir, console=console, outputs=outputs, engine=engine)
            outputs[(resource.kind_name, resource.name)] = outcome.output_uri
            summary = jobs.summary_metrics(resource.kind_name, outcome.metrics)
            results.append(
                result_of(
                    resource,
                    "Succeeded",
                    outputUri=outcome.output_uri,
                    alreadyComplete=outcome.already_complete,
                    artifacts=outcome.artifacts,
                    metrics=summary,
                )
            )
        except jobs.JobError as exc:  # an InputError names the spec field it is about
            invalid = isinstance(exc, jobs.InputError)
            results.append(result_of(resource, "Failed", error=exc.to_dict()))
            word, where = ("error", "spec.") if invalid else ("failed", "")
            err_console.print(
                f"[red]{word}[/red] {resource.kind_name} {escape(resource.name)}: {where}{escape(str(exc))}",
                highlight=False,
            )
            return EXIT_INVALID if invalid else EXIT_FAILED
        except KeyboardInterrupt:
            results.append(result_of(resource, "Cancelled"))
            err_console.print(
                f"[yellow]interrupted[/yellow] {resource.kind_name} {resource.name}: run it again to resume"
            )
            return 130
    return EXIT_OK
