"""``slmops run --engine kfp-local``: a job's compiled pipeline, run on this machine by ``kfp.local``.

The job's pipeline is compiled to IR YAML (as for a cluster, with the local placement:
no GPUs, Secrets, volumes or node selectors), loaded back from that YAML, and run by
``kfp.local``'s ``SubprocessRunner(use_venv=False)``: every component runs as its own
Python process, artifacts pass through the local pipeline root, and the components call
the same stages as the default engine, so the output location ends up with the same files.

Caching is on: a rerun with unchanged inputs reuses the outputs of data prep, training and
evaluation from ``$SLMOPS_CACHE_DIR/kfp-local``.  A task that fails with a JobError leaves it
in the output location (``.slmops/error.json``, see :mod:`slmops_pipelines.stages.outputs`);
this engine raises it again with its spec field, as the default engine would have.  Which
pipeline a job is, and how its outcome is read, is the job kind's business
(:meth:`slmops_pipelines.jobs.JobKind.run_kfp_local`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmops_pipelines.errors import JobError
from slmops_pipelines.models import cache_root


def _kfp_root() -> Path:
    return cache_root() / "kfp-local"


def _init_kfp_local() -> None:
    from kfp import local

    root = _kfp_root()
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root / "outputs"),
        enable_caching=True,
        cache_root=str(root / "cache"),
    )


def _load_compiled(pipeline: Callable, name: str) -> Callable:
    """Compile to IR YAML and load that file back: what runs is what a cluster would get."""
    from kfp import components

    from slmops_pipelines.kubeflow.pipelines import compile_pipeline

    path = compile_pipeline(pipeline, _kfp_root() / "compiled" / f"{name}.yaml")
    return components.load_component_from_file(str(path))


def run_compiled(pipeline: Callable, *, name: str, output_uri: str, arguments: dict[str, Any]) -> None:
    """Run ``pipeline`` (compiled as ``name``) to the end; raise the JobError its failing step recorded."""
    from slmops_pipelines.stages.outputs import read_error

    loaded = _load_compiled(pipeline, name)
    _init_kfp_local()
    try:
        with warnings.catch_warnings():
            # Kubernetes-only settings (display names, resources) do not apply here, by design.
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
            # The images carry slmops; this environment does too.
            warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
            loaded(**arguments)
    except RuntimeError as exc:  # kfp.local: "Pipeline '...' finished with status FAILURE"
        recorded = read_error(output_uri)
        if recorded is not None:
            raise recorded from exc
        raise JobError(f"the pipeline failed: {exc}", reason="PipelineFailed") from exc
