"""``slmops serve TARGET``: the model a job made, behind OpenAI's HTTP API.

TARGET is what ``slmops generate`` takes: a job's output (``runs/NAME``, ``s3://...``), a
target folder in one, or an onnxruntime-genai folder.  Every adapter is its own model id
next to the base's; concurrent requests are decoded in batches.  One log line per request
at INFO; the libraries' logs only with ``--debug``.  Errors before the server listens (a
TARGET that is not there, a PyTorch model) are one line, exit 2.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import click

from slmops_operator.cli.generate import one_line_errors

# One row an option: (flag, type, default, help).  The last four are the server's Settings.
OPTIONS: list[tuple[str, Any, Any, str]] = [
    ("--host", str, "127.0.0.1", "Address to listen on (0.0.0.0: every interface)."),
    ("--port", click.IntRange(0, 65535), 8000, "Port to listen on."),
    (
        "--target",
        str,
        None,
        "Which target of an optimized output (default: the first this machine runs that keeps its "
        "adapters separate, else the first it runs).",
    ),
    ("--name", str, None, "The base model's id (default: TARGET's last path segment)."),
    (
        "--threads",
        click.IntRange(min=1),
        None,
        "Threads per model call (default: the target's runtime.threads, else the CPUs this process may use).",
    ),
    ("--max-batch", click.IntRange(min=1), 8, "Sequences decoded at once."),
    ("--max-queue", click.IntRange(min=0), 64, "Requests waiting beyond that (then 429)."),
    ("--max-tokens", click.IntRange(min=1), 1024, "Answer length when a request names no max_tokens."),
    ("--drain-seconds", click.FloatRange(min=0), 30.0, "On SIGTERM, how long requests in flight may take."),
]
SETTINGS = ("max_batch", "max_queue", "max_tokens", "drain_seconds")


def server_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for flag, kind, default, help_ in reversed(OPTIONS):
        shown = default is not None
        command = click.option(flag, type=kind, default=default, show_default=shown, help=help_)(command)
    return command


@click.command()
@click.argument("source", metavar="TARGET")
@server_options
def serve(source: str, **options: Any) -> None:
    """Serve TARGET with OpenAI's API: /v1/models, /v1/chat/completions, /v1/completions.

    Also /health, /ready and /metrics (Prometheus).  The base model and each adapter are
    model ids; a request's "model" picks one, and prompts are rendered as the job rendered
    its training data (its system prompt unless the request brings one).
    """
    from slmops_pipelines import jobs

    debug = os.environ.get("SLMOPS_DEBUG") == "1"  # `slmops --debug serve`: the libraries' logs too
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.WARNING)
    logging.getLogger("slmops.serve").setLevel(logging.INFO)
    settings = jobs.serve_settings(**{key: options.pop(key) for key in SETTINGS})
    with one_line_errors():
        jobs.serve_target(
            source, target_name=options.pop("target"), settings=settings, access_log=debug, **options
        )
