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
from typing import Any

import click

from slmops_operator.cli.generate import one_line_errors


@click.command()
@click.argument("target")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface)."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--target",
    "target_name",
    default=None,
    help="Which target of an optimized output (default: the first this machine runs).",
)
@click.option("--name", default=None, help="The base model's id (default: TARGET's last path segment).")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads per model call (default: the CPUs this process may use, cgroup quota included).",
)
@click.option(
    "--max-batch", type=click.IntRange(min=1), default=8, show_default=True, help="Sequences decoded at once."
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="Requests waiting beyond that (then 429).",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Answer length when a request names no max_tokens (within the context).",
)
@click.option(
    "--drain-seconds",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGTERM, how long requests in flight may take to finish.",
)
def serve(target: str, **options: Any) -> None:
    """Serve TARGET with OpenAI's API: /v1/models, /v1/chat/completions, /v1/completions.

    Also /health, /ready and /metrics (Prometheus).  The base model and each adapter are
    model ids; a request's "model" picks one, and prompts are rendered as the job rendered
    its training data (its system prompt unless the request brings one).
    """
    from slmops_pipelines import jobs

    debug = os.environ.get("SLMOPS_DEBUG") == "1"  # `slmops --debug serve`: the libraries' logs too
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.WARNING)
    logging.getLogger("slmops.serve").setLevel(logging.INFO)
    settings = jobs.serve_settings(
        max_batch=options["max_batch"],
        max_queue=options["max_queue"],
        max_tokens=options["max_tokens"],
        drain_seconds=options["drain_seconds"],
    )
    with one_line_errors():
        jobs.serve_target(
            target,
            target_name=options["target_name"],
            name=options["name"],
            host=options["host"],
            port=options["port"],
            threads=options["threads"],
            settings=settings,
            access_log=debug,
        )
