"""``slmops run --engine kfp-local``: the compiled pipeline, run on this machine by ``kfp.local``.

The job's pipeline is compiled to IR YAML (as for a cluster, with the local placement),
loaded back from that YAML, and run by ``kfp.local``'s ``SubprocessRunner(use_venv=False)``:
every component runs as its own Python process, artifacts pass through the local pipeline
root, and the components call the same stages as the default engine, so the output location
ends up with the same files.

Caching is on: a rerun with unchanged inputs reuses the outputs of data prep, training and
evaluation from ``$SLMOPS_CACHE_DIR/kfp-local``.  A task that fails with a JobError leaves it
in the output location (``.slmops/error.json``, see :mod:`.tasks`); this engine raises it
again with its spec field, as the default engine would have.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from slmops_pipelines.errors import JobError
from slmops_pipelines.kubeflow.placement import Placement
from slmops_pipelines.models import cache_root
from slmops_pipelines.specs import FineTuneJobSpec, OptimizeJobSpec
from slmops_pipelines.stages.outputs import JobOutcome


def spec_argument(spec: FineTuneJobSpec | OptimizeJobSpec) -> dict[str, Any]:
    """The spec as a pipeline argument: JSON, camelCase, without nulls (protobuf Struct has none)."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


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


def _load_compiled(pipeline, name: str):
    """Compile to IR YAML and load that file back: what runs is what a cluster would get."""
    from kfp import components

    from slmops_pipelines.kubeflow.pipelines import compile_pipeline

    path = compile_pipeline(pipeline, _kfp_root() / "compiled" / f"{name}.yaml")
    return components.load_component_from_file(str(path))


def _run(pipeline, *, output_uri: str, arguments: dict[str, Any]) -> None:
    from slmops_pipelines.kubeflow.tasks import read_error

    _init_kfp_local()
    try:
        with warnings.catch_warnings():
            # Kubernetes-only settings (display names, resources) do not apply here, by design.
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
            # The images carry slmops; this environment does too.
            warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
            pipeline(**arguments)
    except RuntimeError as exc:  # kfp.local: "Pipeline '...' finished with status FAILURE"
        recorded = read_error(output_uri)
        if recorded is not None:
            raise recorded from exc
        raise JobError(f"the pipeline failed: {exc}", reason="PipelineFailed") from exc


def _job(name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace}


def run_finetune_kfp_local(
    *, name: str, namespace: str = "default", spec: FineTuneJobSpec, output_uri: str
) -> JobOutcome:
    from slmops_pipelines.kubeflow.pipelines import finetune_pipeline, finetune_search_pipeline
    from slmops_pipelines.stages import finetune as stages
    from slmops_pipelines.steps import publish

    output_uri = spec.output.uri or output_uri
    stages.check_inputs(spec, multi_node=False)
    inspection = stages.inspect_output(name=name, namespace=namespace, spec=spec, output_uri=output_uri)
    if inspection.finished is None:
        placement = Placement.for_finetune(spec).model_copy(
            update={
                "gpus": 0,
                "secrets": [],
                "cache_pvc": None,
                "node_selector": {},
                "tolerations": [],
            }
        )
        factory, name_ = (
            (finetune_search_pipeline, "finetune-search") if spec.search else (finetune_pipeline, "finetune")
        )
        pipeline = _load_compiled(factory(placement=placement), name_)
        _run(
            pipeline,
            output_uri=output_uri,
            arguments={
                "spec": spec_argument(spec),
                "job": _job(name, namespace),
                "output_uri": output_uri,
            },
        )
    store = inspection.store
    manifest = publish.read_json(store, publish.MANIFEST)
    if manifest is None:
        raise JobError(f"the pipeline finished without a manifest at {store.uri}", reason="PipelineFailed")
    return JobOutcome(
        output_uri=store.uri,
        metrics=stages.stored_metrics(store),
        artifacts=stages.output_artifacts(store, manifest),
        already_complete=inspection.finished is not None,
    )


def run_optimize_kfp_local(
    *, name: str, namespace: str = "default", spec: OptimizeJobSpec, output_uri: str, source_uri: str
) -> JobOutcome:
    from slmops_pipelines.kubeflow.pipelines import optimize_pipeline
    from slmops_pipelines.stages.outputs import job_identity, open_output
    from slmops_pipelines.steps import publish

    output_uri = spec.output.uri or output_uri
    store, finished = open_output(output_uri, job_identity("OptimizeJob", namespace, name, spec))
    if finished is None:
        pipeline = _load_compiled(optimize_pipeline(placement=Placement.local()), "optimize")
        _run(
            pipeline,
            output_uri=output_uri,
            arguments={
                "spec": spec_argument(spec),
                "job": _job(name, namespace),
                "output_uri": output_uri,
                "source_uri": source_uri,
            },
        )
    metrics = publish.read_json(store, "metrics.json") or {}
    artifacts = {t: store.uri_of(f"targets/{t}") for t in metrics.get("targets", {})}
    artifacts.update(
        {key: store.uri_of(rel) for key, rel in (("metrics", "metrics.json"), ("report", "report.html"))}
    )
    artifacts["manifest"] = store.uri_of(publish.MANIFEST)
    return JobOutcome(store.uri, metrics, artifacts, already_complete=finished is not None)
