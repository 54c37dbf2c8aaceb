"""``slmops run``: run validated resources on this machine and print their results.

Two engines run the same stages: ``local`` (the default: one process, a progress bar) and
``kfp-local`` (the compiled KFP pipeline, each step its own process, through ``kfp.local``).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from slmops_operator.api.resources import FineTuneJob, OptimizeJob, Resource

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _summary_table(name: str, outcome, wall: float) -> Table:
    from slmops_pipelines.steps.report import summary_rows

    table = Table(title=f"FineTuneJob {name}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = summary_rows(outcome.metrics)
    rows = [(k, v) for k, v in rows if k != "wall time (s)"] + [("wall time (s)", round(wall, 1))]
    for key, value in rows:
        if value is not None:
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    for key, uri in outcome.artifacts.items():
        table.add_row(key, uri)
    return table


def run_finetune_job(job: FineTuneJob, *, runs_dir: Path, console: Console, engine: str = "local") -> int:
    from slmops_operator.cli.progress import RichReporter

    started = time.time()
    console.rule(f"FineTuneJob {job.name}")
    if engine == "kfp-local":
        from slmops_pipelines.kubeflow.local_engine import run_finetune_kfp_local

        outcome = run_finetune_kfp_local(
            name=job.name, namespace=job.namespace, spec=job.spec, output_uri=str(runs_dir / job.name)
        )
    else:
        from slmops_pipelines.local import run_finetune

        with RichReporter(console) as reporter:
            outcome = run_finetune(
                name=job.name,
                namespace=job.namespace,
                spec=job.spec,
                output_uri=str(runs_dir / job.name),
                reporter=reporter,
            )
    console.print(_summary_table(job.name, outcome, time.time() - started))
    if outcome.metrics.get("search"):
        console.print(_leaderboard(outcome.metrics["search"]))
    return EXIT_OK


def _leaderboard(search: dict) -> Table:
    """Every trial of a search, best first; the winner is the job's result."""
    table = Table(
        title=f"Search: {search['strategy']}, {search['metric']} ({search['direction']}), best trial {search['best_trial']}",
        title_justify="left",
    )
    for column in ("trial", "state", search["metric"], "settings"):
        table.add_column(column)
    for trial in search["trials"]:
        value = "" if trial["value"] is None else f"{trial['value']:.4g}"
        settings = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["params"].items()
        )
        style = "bold green" if trial["trial"] == search["best_trial"] else None
        table.add_row(str(trial["trial"]), trial["state"].lower(), value, settings, style=style)
    return table


def run_optimize_job(
    job: OptimizeJob, *, runs_dir: Path, console: Console, outputs: dict[str, str], engine: str = "local"
) -> int:
    from slmops_operator.cli.progress import RichReporter
    from slmops_pipelines.steps.optimize.report import comparison_rows

    def locate_job(name: str) -> str:
        return outputs.get(name, str(runs_dir / name))

    console.rule(f"OptimizeJob {job.name}")
    if engine == "kfp-local":
        from slmops_pipelines.kubeflow.local_engine import run_optimize_kfp_local

        ref = job.spec.source.fine_tune_job_ref
        outcome = run_optimize_kfp_local(
            name=job.name,
            namespace=job.namespace,
            spec=job.spec,
            output_uri=str(runs_dir / job.name),
            source_uri=locate_job(ref.name) if ref else "",
        )
    else:
        from slmops_pipelines.local.optimize import run_optimize

        with RichReporter(console) as reporter:
            outcome = run_optimize(
                name=job.name,
                namespace=job.namespace,
                spec=job.spec,
                output_uri=str(runs_dir / job.name),
                locate_job=locate_job,
                reporter=reporter,
            )
    if outcome.metrics.get("targets"):
        header, rows = comparison_rows(outcome.metrics, compact=True)
        table = Table(title=f"OptimizeJob {job.name}", title_justify="left")
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for key, uri in outcome.artifacts.items():
        console.print(f"  {key}: {uri}", highlight=False)
    return EXIT_OK


def run_resources(
    resources: list[Resource],
    *,
    runs_dir: Path,
    console: Console,
    err_console: Console,
    engine: str = "local",
) -> int:
    """Run every resource in order; an OptimizeJob finds the FineTuneJobs run before it."""
    from slmops_pipelines.errors import InputError, JobError

    outputs: dict[str, str] = {}  # FineTuneJob name -> output URI, for fineTuneJobRef
    for resource in resources:
        try:
            if isinstance(resource, FineTuneJob):
                run_finetune_job(resource, runs_dir=runs_dir, console=console, engine=engine)
                outputs[resource.name] = resource.spec.output.uri or str(runs_dir / resource.name)
            elif isinstance(resource, OptimizeJob):
                run_optimize_job(resource, runs_dir=runs_dir, console=console, outputs=outputs, engine=engine)
        except InputError as exc:
            err_console.print(
                f"[red]error[/red] {resource.kind_name} {resource.name}: spec.{exc}", highlight=False
            )
            return EXIT_INVALID
        except JobError as exc:
            err_console.print(
                f"[red]failed[/red] {resource.kind_name} {resource.name}: {exc}", highlight=False
            )
            return EXIT_FAILED
        except KeyboardInterrupt:
            err_console.print(
                f"[yellow]interrupted[/yellow] {resource.kind_name} {resource.name}: run it again to resume"
            )
            return 130
    return EXIT_OK
