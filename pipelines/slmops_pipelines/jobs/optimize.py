"""OptimizeJob: convert a model to ONNX, optimize it per execution provider, evaluate and gate it.

Its stages are :mod:`slmops_pipelines.stages.optimize`; the embedded engine is
:mod:`slmops_pipelines.local.optimize`; on a cluster it is the ``optimize`` pipeline.  Its
source may be a FineTuneJob's output (``source.fineTuneJobRef``): that job is its upstream,
and the engines pass its output location as ``source_uri``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slmops_pipelines.jobs import base
from slmops_pipelines.jobs.base import JobKind, JobRun, SummaryTable, Upstream, float_values
from slmops_pipelines.jobs.finetune import FineTuneJobKind
from slmops_pipelines.specs import OptimizeJobSpec


class OptimizeJobKind(JobKind[OptimizeJobSpec]):
    name = "OptimizeJob"
    spec_class = OptimizeJobSpec
    description = "Convert a model to ONNX, optimize it per execution provider, evaluate and gate it."
    plural, short_names, run_prefix = "optimizejobs", ("optj", "optimize"), "optj"
    printer_columns = (
        {
            "name": "Source",
            "type": "string",
            "jsonPath": ".spec.source.fineTuneJobRef.name",
            "description": "Source FineTuneJob.",
        },
    )

    def upstream(self, spec: OptimizeJobSpec) -> Upstream | None:
        ref = spec.source.fine_tune_job_ref
        if ref is None:
            return None
        return Upstream(kind=FineTuneJobKind.name, name=ref.name, field="source.fineTuneJobRef")

    def run_local(self, run: JobRun, *, reporter: base.Reporter | None = None) -> base.JobOutcome:
        from slmops_pipelines.local.optimize import run_optimize
        from slmops_pipelines.stages.optimize_source import source_locator

        return run_optimize(run, locate_job=source_locator(run.source_uri), reporter=reporter)

    def claim_output(self, run: JobRun) -> tuple[base.ArtifactStore, dict[str, Any] | None]:
        from slmops_pipelines.stages.outputs import open_output

        return open_output(run.output_uri, run.identity())

    def pipeline(self, spec: OptimizeJobSpec) -> tuple[str, Callable[..., Callable]]:
        from slmops_pipelines.kubeflow.pipelines import optimize_pipeline

        return "optimize", optimize_pipeline

    def pipeline_settings(self, spec: OptimizeJobSpec) -> dict[str, Any]:
        from slmops_pipelines.kubeflow.settings import OPTIMIZE, settings_of

        return settings_of(OPTIMIZE, spec)

    def placement_settings(self, spec: OptimizeJobSpec) -> dict[str, Any]:
        from slmops_pipelines.specs.providers import image_family

        families = sorted({image_family(t.provider) for t in spec.targets})  # cpu before cuda
        target_gpus = max(1, spec.resources.gpus) if "cuda" in families else 0
        # The source step measures PyTorch on CPU: only the GPU targets' pods get GPUs, in the CUDA image.
        return {"gpus": 0, "target_gpus": target_gpus, "target_families": families, "multi_node": False}

    def run_arguments(
        self, *, spec: OptimizeJobSpec, job: dict[str, Any], output_uri: str, source_uri: str
    ) -> dict[str, Any]:
        return {
            **super().run_arguments(spec=spec, job=job, output_uri=output_uri, source_uri=source_uri),
            "source_uri": source_uri,
        }

    def output_artifacts(self, store: base.ArtifactStore) -> dict[str, str]:
        from slmops_pipelines.stages.optimize import output_artifacts
        from slmops_pipelines.steps import publish

        return output_artifacts(store, publish.read_json(store, "metrics.json") or {})

    def status_details(self, spec: OptimizeJobSpec, artifacts: dict[str, str]) -> dict[str, Any]:
        """``status.targets``: each built target's folder (KServe's ``storageUri``), provider, precision."""
        return {
            "targets": {
                t.name: {"storageUri": artifacts[t.name], "provider": t.provider, "precision": t.precision}
                for t in spec.targets
                if t.name in artifacts
            }
        }

    def summary_metrics(self, metrics_doc: dict[str, Any]) -> dict[str, float]:
        values: dict[str, Any] = {"wallTimeSeconds": metrics_doc.get("wall_time_s")}
        for target, entry in (metrics_doc.get("targets") or {}).items():
            measured = entry.get("metrics") or {}
            latency = measured.get("latency") or {}
            values[f"{target}.accuracy"] = measured.get("accuracy")
            values[f"{target}.decodeTokensPerSecond"] = latency.get("decode_tokens_per_s_p50")
            values[f"{target}.sizeMb"] = measured.get("size_mb")
            for adapter, row in (entry.get("byAdapter") or {}).items():  # several adapters: each its own
                values[f"{target}.{adapter}.accuracy"] = row["metrics"].get("accuracy")
        return float_values(values)

    def chat_loader(self) -> Callable[[base.JobOutput, base.TargetChoice], base.ChatTarget]:
        from slmops_pipelines.chat.targets import optimize_output_target

        return optimize_output_target

    def summary_tables(
        self, name: str, outcome: base.JobOutcome, *, wall_time_s: float
    ) -> list[SummaryTable]:
        from slmops_pipelines.steps.report.optimize import comparison_rows

        tables = []
        if outcome.metrics.get("targets"):
            header, rows = comparison_rows(outcome.metrics, compact=True)
            tables.append(SummaryTable(title=f"OptimizeJob {name}", columns=header, rows=rows))
        artifacts = base.run_facts(outcome.metrics) + [[key, uri] for key, uri in outcome.artifacts.items()]
        tables.append(SummaryTable(title="artifacts", rows=artifacts, layout="lines"))
        return tables
