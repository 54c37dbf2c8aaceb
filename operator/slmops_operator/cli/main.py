"""``slmops``: validate manifests, generate CRDs, run jobs locally, describe outputs, talk to models.

Exit codes: 0 success, 1 the job failed (or an unexpected error: one line, ``--debug`` for the
traceback), 2 invalid input (manifest, spec or data).  ``validate``, ``run`` and
``describe`` take ``-o json`` for scripts and CI: the JSON goes to stdout, everything for
people to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from slmops_operator.cli.generate import chat, generate
from slmops_operator.cli.runner import EXIT_FAILED, EXIT_INVALID
from slmops_operator.cli.serve import serve

console = Console(stderr=False)
err_console = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slmops")
@click.option("--debug", is_flag=True, help="Libraries' logs, and the traceback of an unexpected error.")
def cli(debug: bool) -> None:
    """slmops: fine-tune and optimize small language models, on a laptop or a Kubernetes cluster."""
    if debug:
        os.environ["SLMOPS_DEBUG"] = "1"  # the local engine and its training processes stay verbose
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def json_option():
    """``-o json``: the result as JSON on stdout (people's output goes to stderr)."""
    return click.option(
        "--output",
        "-o",
        "output_format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="text for people, json for scripts and CI.",
    )


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def output_dir_option(default: str):
    """``--output-dir/-o``: the folder generated files go to."""
    return click.option(
        "--output-dir",
        "-o",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(default),
        show_default=True,
    )


def check_option(what: str):
    """``--check``: compare with the files on disk instead of writing (exit 1 when stale)."""
    return click.option(
        "--check", is_flag=True, help=f"Exit 1 if the files on disk differ from the {what} ones."
    )


@cli.command()
@output_dir_option("crds")
@check_option("generated")
def crds(output_dir: Path, check: bool) -> None:
    """Write the CustomResourceDefinitions generated from the API models."""
    from slmops_operator.api.crd import all_crds, render_yaml

    stale = []
    for filename, crd in all_crds().items():
        path = output_dir / filename
        text = render_yaml(crd)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        console.print(f"wrote {escape(str(path))}")
    if stale:
        err_console.print(f"stale CRDs (run `slmops crds`): {', '.join(stale)}")
        sys.exit(EXIT_FAILED)


@cli.command("compile")
@click.argument("job", required=False, type=click.Path(path_type=Path, allow_dash=True))
@click.option(
    "--output",
    "--output-dir",
    "-o",
    "output",
    type=click.Path(path_type=Path),
    default=None,
    help="With JOB: the pipeline file (default: <name>.pipeline.yaml).  Without: the folder "
    "(default: pipelines/compiled).",
)
@click.option("--registry", default=None, help="Image registry of the components (default: ghcr.io/slmops).")
@check_option("compiled")
def compile_cmd(job: Path | None, output: Path | None, registry: str | None, check: bool) -> None:
    """Compile the KFP pipelines to IR YAML, ready to upload in a KFP dashboard.

    With JOB (a FineTuneJob or OptimizeJob manifest): the pipeline the operator would submit
    for that job -- its GPUs, images, pull secrets, affinity and Secrets in the platform spec.
    """
    if job is not None:
        compile_one_job(job, output, registry=registry, check=check)
        return
    compile_every_pipeline(output or Path("pipelines/compiled"), registry=registry, check=check)


def compile_one_job(file: Path, output: Path | None, *, registry: str | None, check: bool) -> None:
    import tempfile

    from slmops_operator.api.manifests import ManifestError, load_resources
    from slmops_pipelines import jobs

    try:
        resources = load_resources((file,))
    except ManifestError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error[/red] {escape(str(problem))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_INVALID)
    if len(resources) != 1:
        names = ", ".join(f"{r.kind_name} {r.name}" for r in resources)
        err_console.print(
            f"[red]error[/red] {escape(str(file))}: compile one job at a time (it holds {escape(names)})"
        )
        sys.exit(EXIT_INVALID)
    resource = resources[0]
    path = output or Path(f"{resource.name}.pipeline.yaml")
    meta = jobs.JobMeta(resource.name, resource.namespace, dict(resource.metadata.labels or {}))
    if not check:
        jobs.compile_job(resource.kind_name, resource.spec, path, registry=registry, meta=meta)
        console.print(
            f"wrote {escape(str(path))} ({resource.kind_name} {escape(resource.name)})",
            highlight=False,
            soft_wrap=True,
        )
        show_queued_steps(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = jobs.compile_job(
            resource.kind_name, resource.spec, Path(tmp) / path.name, registry=registry, meta=meta
        )
        if not path.exists() or path.read_text() != fresh.read_text():
            err_console.print(f"stale pipeline (run `slmops compile {file} -o {path}`): {path}")
            sys.exit(EXIT_FAILED)


def show_queued_steps(path: Path) -> None:
    """Which steps Kueue queues (the job's kueue.x-k8s.io/queue-name on their pods)."""
    from slmops_pipelines import jobs

    by_queue: dict[str, list[str]] = {}
    for step, queue in jobs.queued_steps(path).items():
        by_queue.setdefault(queue, []).append(step)
    for queue, steps in by_queue.items():
        console.print(
            f"Kueue queue {escape(queue)}: {escape(', '.join(steps))}", highlight=False, soft_wrap=True
        )


def compile_every_pipeline(output_dir: Path, *, registry: str | None, check: bool) -> None:
    import tempfile

    from slmops_pipelines import jobs

    if not check:
        for path in jobs.compile_all(output_dir, registry=registry):
            console.print(f"wrote {escape(str(path))}", soft_wrap=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = jobs.compile_all(Path(tmp), registry=registry)
        stale = [
            str(output_dir / path.name)
            for path in fresh
            if not (output_dir / path.name).exists()
            or (output_dir / path.name).read_text() != path.read_text()
        ]
    if stale:
        err_console.print(  # one line, whatever the width: the paths stay whole for copying
            f"stale pipelines (run `slmops compile`): {escape(', '.join(stale))}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, allow_dash=True))
@json_option()
def validate(files: tuple[Path, ...], output_format: str) -> None:
    """Validate manifests (multi-document YAML) against the slmops.io/v1alpha1 API.

    Documents of other API groups (an Argo CD Application, a Secret) are skipped and listed;
    an unknown slmops.io kind is an error.
    """
    from slmops_operator.api.manifests import ManifestError, load_manifests

    try:
        manifests = load_manifests(files)
    except ManifestError as exc:
        if output_format == "json":
            problems = [{"document": p.document, "path": p.path, "reason": p.reason} for p in exc.problems]
            print_json({"valid": False, "problems": problems})
        for problem in exc.problems:
            err_console.print(
                f"[red]error[/red] {escape(str(problem.document))}: [bold]{escape(problem.path or '(document)')}[/bold]: "
                f"{escape(problem.reason)}",
                highlight=False,
                soft_wrap=True,  # one line per problem, whatever the terminal's width (grep, CI logs)
            )
        sys.exit(EXIT_INVALID)
    if output_format == "json":
        found = [{"kind": r.kind_name, "name": r.name, "namespace": r.namespace} for r in manifests.resources]
        skipped = [
            {
                "apiVersion": s.api_version,
                "kind": s.kind,
                "name": s.name,
                "namespace": s.namespace,
                "document": s.document,
                "reason": s.reason,
            }
            for s in manifests.skipped
        ]
        print_json({"valid": True, "resources": found, "skipped": skipped})
        return
    for resource in manifests.resources:
        console.print(f"[green]valid[/green] {resource.kind_name} {escape(resource.name)}", highlight=False)
    for other in manifests.skipped:
        console.print(f"[yellow]skipped:[/yellow] {escape(str(other))}", highlight=False, soft_wrap=True)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, allow_dash=True))
@click.option(
    "--engine",
    type=click.Choice(["local", "kfp-local"]),
    default="local",
    show_default=True,
    help="local: the embedded engine; kfp-local: the compiled KFP pipeline, run by kfp.local.",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Default output root for jobs without output.uri.",
)
@json_option()
def run(files: tuple[Path, ...], engine: str, runs_dir: Path, output_format: str) -> None:
    """Run the jobs in FILES on this machine, in order."""
    from slmops_operator.api.manifests import ManifestError, load_resources
    from slmops_operator.cli.runner import run_resources

    as_json = output_format == "json"
    try:
        resources = load_resources(files)
    except ManifestError as exc:
        if as_json:
            problems = [{"document": p.document, "path": p.path, "reason": p.reason} for p in exc.problems]
            print_json({"jobs": [], "problems": problems})
        for problem in exc.problems:
            err_console.print(f"[red]error[/red] {escape(str(problem))}", highlight=False)
        sys.exit(EXIT_INVALID)
    results: list[dict[str, Any]] = []
    code = run_resources(
        resources,
        runs_dir=runs_dir,
        console=err_console if as_json else console,  # stdout carries the JSON alone
        err_console=err_console,
        engine=engine,
        results=results,
    )
    if as_json:
        print_json({"jobs": results})
    sys.exit(code)


@cli.command()
@click.argument("output")
@json_option()
@click.option("--no-verify", is_flag=True, help="Skip checking every file against the manifest's sha256.")
def describe(output: str, output_format: str, no_verify: bool) -> None:
    """What a job's OUTPUT location holds: identity, phase, metrics, artifacts, checksums.

    OUTPUT is a job's output: runs/NAME, /abs/path, s3://bucket/prefix or pvc://claim/path.
    Exit code 1 when a file no longer matches the manifest.
    """
    from slmops_operator.cli.describe import print_description
    from slmops_pipelines import jobs

    try:
        described = jobs.describe_output(output, verify=not no_verify)
    except jobs.JobError as exc:
        if output_format == "json":
            print_json({"uri": output, "error": exc.to_dict()})
        err_console.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_INVALID)
    if output_format == "json":
        print_json(described)
    else:
        print_description(described, console)
    checksums = described.get("checksums") or {}
    sys.exit(EXIT_FAILED if checksums.get("ok") is False else 0)


cli.add_command(generate)  # slmops generate TARGET --prompt TEXT (cli/generate.py)
cli.add_command(chat)  # slmops chat TARGET
cli.add_command(serve)  # slmops serve TARGET (cli/serve.py)


@cli.command("operator")
@click.option(
    "--backend", type=click.Choice(["kfp", "local"]), default=None, help="Overrides SLMOPS_BACKEND."
)
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    help="Watch only this namespace (repeatable; overrides SLMOPS_NAMESPACES; default: all).",
)
@click.option("--kfp-host", default=None, help="Overrides SLMOPS_KFP_HOST.")
@click.option("--max-running-per-namespace", type=int, default=None)
@click.option("--liveness-port", type=int, default=8081, show_default=True)
def operator_cmd(
    backend: str | None,
    namespaces: tuple[str, ...],
    kfp_host: str | None,
    max_running_per_namespace: int | None,
    liveness_port: int,
) -> None:
    """Run the operator (KUBECONFIG or the pod's service account; settings from SLMOPS_* variables)."""
    from slmops_operator.runtime import run
    from slmops_operator.settings import OperatorSettings

    settings = OperatorSettings.from_env(
        backend=backend,
        namespaces=list(namespaces) or None,
        kfp_host=kfp_host,
        max_running_per_namespace=max_running_per_namespace,
    )
    run(settings, liveness_port=liveness_port)


@cli.group()
def cache() -> None:
    """The input cache: remote models, adapters and datasets, one entry per content (SLMOPS_CACHE_DIR)."""


@cache.command("ls")
@json_option()
def cache_ls(output_format: str) -> None:
    """List the entries, least recently used first."""
    import time

    from rich.table import Table

    from slmops_pipelines.jobs import cache_entries

    found = cache_entries()
    if output_format == "json":
        print_json(
            [
                {
                    "path": str(e.path),
                    "uri": e.uri,
                    "bytes": e.size,
                    "lastUsed": e.last_used,
                    "inUse": e.in_use,
                }
                for e in found
            ]
        )
        return
    table = Table(
        title=f"{len(found)} entries, {sum(e.size for e in found) / 1e9:.2f} GB", title_justify="left"
    )
    for column in ("entry", "source", "MB", "last used", "in use"):
        table.add_column(column, overflow="fold")
    for e in found:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        table.add_row(
            escape(e.path.name), escape(e.uri), f"{e.size / 1e6:.1f}", used, "yes" if e.in_use else ""
        )
    console.print(table, highlight=False)


@cache.command("prune")
@click.option(
    "--max-gb",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Keep the most recently used entries that fit; 0 removes every entry not in use.",
)
def cache_prune(max_gb: float) -> None:
    """Remove entries not in use, least recently used first."""
    from slmops_pipelines.jobs import prune_cache

    removed = prune_cache(max_bytes=int(max_gb * 1e9))
    freed = sum(e.size for e in removed) / 1e9
    console.print(f"removed {len(removed)} entries ({freed:.2f} GB)", highlight=False)


@cli.group()
def models() -> None:
    """Model utilities."""


@models.command("import-gguf")
@click.argument("gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def import_gguf_cmd(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file into a plain transformers model folder."""
    from slmops_pipelines.jobs import import_gguf

    if (out_dir / "config.json").exists():
        console.print(f"{escape(str(out_dir))} exists: nothing to do")
        return
    import_gguf(gguf, out_dir)
    console.print(f"wrote {escape(str(out_dir))}")


def main() -> None:
    """The console script: an unexpected error is one line and exit code 1 (``--debug``: the traceback)."""
    args = sys.argv[1:]
    if "--debug" in args[1:]:  # `slmops run job.yaml --debug` means what `slmops --debug run job.yaml` does
        args.remove("--debug")
        args.insert(0, "--debug")
    try:
        cli(args=args, prog_name="slmops", standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # bad usage: click's own message
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("SLMOPS_DEBUG") == "1":
            raise
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        err_console.print(
            f"[red]error[/red] {escape(reason)} (run with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
