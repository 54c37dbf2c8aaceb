"""The OptimizeJob's tasks: inspect, prepare the source, build each target, publish.

Each is one KFP component's body over the folders of its artifacts, calling
:mod:`slmops_pipelines.stages.optimize`, the very stages the local engine calls.  The
targets fan out in a ``dsl.ParallelFor``, one pod each (a GPU one for CUDA/TensorRT).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from slmops_pipelines.errors import InputError
from slmops_pipelines.kubeflow import settings
from slmops_pipelines.kubeflow.settings import check_settings
from slmops_pipelines.kubeflow.tasks import common
from slmops_pipelines.kubeflow.tasks.common import (
    JobContext,
    MetricsArtifact,
    metered_task,
    pinned_inputs,
    reports_errors,
)
from slmops_pipelines.models.resolve import model_digest
from slmops_pipelines.specs import OptimizeJobSpec
from slmops_pipelines.stages.optimize_source import adapter_refs, source_locator
from slmops_pipelines.stages.preflight import check_optimize, raise_findings


def source_fingerprint(spec: OptimizeJobSpec, source_uri: str) -> str:
    """What identifies the source's content: the FineTuneJob's manifest, or the model's and the
    adapters' listings (S3: keys, sizes and ETags, pinned for the run; a folder: keys and sizes)."""
    from slmops_pipelines.steps import publish
    from slmops_pipelines.storage import open_store

    digest = hashlib.sha256()
    if spec.source.fine_tune_job_ref is not None:
        store = open_store(source_locator(source_uri)(spec.source.fine_tune_job_ref.name))
        if not store.exists(publish.MANIFEST):
            raise InputError(
                f"source job {spec.source.fine_tune_job_ref.name!r} has not succeeded: no manifest.json at "
                f"{store.uri}",
                field="source.fineTuneJobRef",
            )
        digest.update(store.read_text(publish.MANIFEST).encode())
    elif spec.source.model is not None:  # the spec has exactly one of fineTuneJobRef and model
        digest.update(model_digest(spec.source.model, field="source.model.uri").encode())
        for uri_field, ref in adapter_refs(spec):
            digest.update(f"\0{ref.name}\0{ref.uri}\0{_adapter_digest(ref.uri, uri_field)}\n".encode())
    return "sha256:" + digest.hexdigest()


def _adapter_digest(uri: str, field: str) -> str:
    from slmops_pipelines.credentials import s3_credentials
    from slmops_pipelines.models import input_cache
    from slmops_pipelines.storage import open_store

    store = open_store(uri, field=field, credentials=s3_credentials("model"))  # an adapter is the model's
    if uri.startswith("s3://"):
        return input_cache.listed(store, "", field=field)
    return "".join(f"{info.key}:{info.size}\n" for info in store.list(""))


@reports_errors
@pinned_inputs(first_step=True)
def inspect_optimize(
    *, spec: dict, job: dict, output_uri: str, source_uri: str, **shown: Any
) -> tuple[str, float, dict]:
    """Claim the output, fingerprint the source, derive the source step's view; never cached."""
    from slmops_pipelines.kubeflow.cache_keys import optimize_source_view
    from slmops_pipelines.stages.outputs import open_output

    started = time.time()
    parsed, ctx = OptimizeJobSpec.model_validate(spec), JobContext.model_validate(job)
    check_settings(settings.OPTIMIZE, parsed, shown)
    open_output(output_uri, ctx.run(parsed, output_uri, source_uri).identity())
    common.clear_error(output_uri)
    fingerprint = source_fingerprint(parsed, source_uri)
    # On this CPU pod, before a GPU target is scheduled: every problem at once.
    raise_findings(check_optimize(parsed, locate_job=source_locator(source_uri)))
    common.say("inspect", f"output {output_uri} claimed; source {fingerprint[:19]}")
    return fingerprint, started, optimize_source_view(parsed)


def plan_targets(*, spec: dict, family: str = "") -> list[dict]:
    """One spec view per target of the image ``family`` (``cpu``, ``cuda``; empty: all): a ParallelFor's items."""
    from slmops_pipelines.kubeflow.cache_keys import optimize_target_views
    from slmops_pipelines.specs.providers import image_family

    parsed = OptimizeJobSpec.model_validate(spec)
    views = optimize_target_views(parsed)
    return [v for v, t in zip(views, parsed.targets, strict=True) if family in ("", image_family(t.provider))]


@metered_task("prepare")
@reports_errors
@pinned_inputs()
def prepare_source(
    *,
    spec: dict,
    output_uri: str,
    source_uri: str,
    fingerprint: str,
    prepared: str,
    reference_metrics: MetricsArtifact,
) -> None:
    """Merge the adapter, render the evaluation rows and measure the PyTorch references into ``prepared``."""
    from slmops_pipelines.stages import optimize as stages

    parsed = OptimizeJobSpec.model_validate(spec)
    stages.prepare_source(
        parsed, locate_job=source_locator(source_uri), prepared_dir=Path(prepared), say=common.say
    )
    reference = json.loads((Path(prepared) / stages.REFERENCE_JSON).read_text())
    common.log_metrics(reference_metrics, _target_scalars(reference["finetuned_pytorch"], prefix="pytorch_"))
    if reference.get("base_pytorch"):
        common.log_metrics(reference_metrics, {"base_accuracy": reference["base_pytorch"].get("accuracy")})
    references = {
        name: {"metrics": ref["finetuned_pytorch"]} for name, ref in reference.get("byAdapter", {}).items()
    }
    common.log_metrics(reference_metrics, _adapter_scalars(references, prefix="pytorch_"))


def _target_scalars(measured: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    latency = measured.get("latency") or {}
    return {
        f"{prefix}accuracy": measured.get("accuracy"),
        f"{prefix}perplexity": measured.get("perplexity"),
        f"{prefix}decode_tokens_per_s": latency.get("decode_tokens_per_s_p50"),
        f"{prefix}prefill_ms_p50": latency.get("prefill_ms_p50"),
        f"{prefix}size_mb": measured.get("size_mb"),
    }


def _adapter_scalars(by_adapter: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Each adapter's quality figures (several adapters: each measured on its own data)."""
    scalars = {}
    for adapter, row in by_adapter.items():
        scalars[f"{prefix}{adapter}_accuracy"] = row["metrics"].get("accuracy")
        scalars[f"{prefix}{adapter}_perplexity"] = row["metrics"].get("perplexity")
    return scalars


@metered_task("target")
@reports_errors
@pinned_inputs()
def build_target(
    *,
    spec: dict,
    output_uri: str,
    prepared: str,
    target: str,
    target_metrics: MetricsArtifact,
) -> None:
    """Export, measure and gate the target of this view; ``target`` gets ``model/`` and ``result.json``."""
    from slmops_pipelines.stages import optimize as stages

    parsed = OptimizeJobSpec.model_validate(spec)
    target_name = parsed.targets[0].name
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slmops-target-") as tmp:
        result = stages.build_target(
            parsed,
            target_name=target_name,
            prepared_dir=Path(prepared),
            targets_dir=Path(tmp),
            say=common.say,
        )
        shutil.rmtree(out / "model", ignore_errors=True)
        shutil.move(str(Path(tmp) / target_name), str(out / "model"))
        common.copy_into(
            Path(tmp) / "logs", out / "logs"
        )  # the builder's log, published as the local engine does
    (out / "result.json").write_text(json.dumps(result, indent=2))
    common.log_metrics(target_metrics, _target_scalars(result["metrics"]))
    common.log_metrics(target_metrics, _adapter_scalars(result.get("byAdapter", {})))
    common.log_metrics(target_metrics, {"decode_speedup": result["vsFinetuned"].get("decode_speedup")})


@metered_task("publish")
@reports_errors
@pinned_inputs()
def publish_optimize(
    *,
    spec: dict,
    job: dict,
    output_uri: str,
    started_at: float,
    prepared: str,
    targets: list[str],
    report: str,
    artifacts: str,
    summary: MetricsArtifact,
    more_targets: list[str] | None = None,  # built in the other optimizer image
) -> str:
    """Collect the targets, write metrics and report, apply the gates, publish; return the output URI."""
    from slmops_pipelines.stages import optimize as stages
    from slmops_pipelines.stages.outputs import open_output

    parsed, ctx = OptimizeJobSpec.model_validate(spec), JobContext.model_validate(job)
    run = ctx.run(parsed, output_uri)
    identity = run.identity()
    store, _finished = open_output(output_uri, identity)
    with tempfile.TemporaryDirectory(prefix="slmops-publish-") as tmp:
        out = Path(tmp)
        results = []
        for folder in map(Path, [*targets, *(more_targets or [])]):
            result = json.loads((folder / "result.json").read_text())
            shutil.copytree(folder / "model", out / "targets" / result["name"])
            common.copy_into(folder / "logs", out / "targets" / "logs")
            results.append(result)
        metrics_doc = stages.write_report(
            run,
            prepared_dir=Path(prepared),
            results=results,
            out_dir=out,
            wall_time_s=time.time() - started_at,
            started_at=started_at,
        )
        shutil.copyfile(out / "report.html", report)
        for name, entry in metrics_doc["targets"].items():
            common.log_metrics(summary, _target_scalars(entry["metrics"], prefix=f"{name}_"))
            common.log_metrics(summary, _adapter_scalars(entry.get("byAdapter", {}), prefix=f"{name}_"))
        links = stages.publish_output(
            store, spec=parsed, identity=identity, out_dir=out, metrics_doc=metrics_doc
        )
    Path(artifacts).write_text(common.markdown_links(run.title, links))
    common.say("publish", f"{store.uri}: {len(results)} target(s), manifest last")
    return store.uri
