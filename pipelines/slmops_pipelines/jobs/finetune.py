"""FineTuneJob: fine-tune a small language model (LoRA, QLoRA, DoRA or full) and store the result.

Its stages are :mod:`slmops_pipelines.stages.finetune` (and :mod:`~slmops_pipelines.stages.search`
for ``spec.search``); the embedded engine is :mod:`slmops_pipelines.local.finetune`; on a
cluster it is the ``finetune`` pipeline, or ``finetune-search`` when ``spec.search`` is set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slmops_pipelines.jobs import base
from slmops_pipelines.jobs.base import JobKind, JobRun, SummaryTable, float_values
from slmops_pipelines.specs import FineTuneJobSpec


class FineTuneJobKind(JobKind[FineTuneJobSpec]):
    name = "FineTuneJob"
    plural = "finetunejobs"
    short_names = ("ftj", "finetune")
    run_prefix = "ftj"
    spec_class = FineTuneJobSpec
    description = "Fine-tune a small language model (LoRA, QLoRA, DoRA or full) and store the result."
    printer_columns = (
        {
            "name": "Method",
            "type": "string",
            "jsonPath": ".spec.method",
            "description": "Fine-tuning method.",
        },
        {
            "name": "Model",
            "type": "string",
            "jsonPath": ".spec.model.uri",
            "priority": 1,
            "description": "Base model.",
        },
        {
            "name": "Loss",
            "type": "number",
            "jsonPath": ".status.progress.loss",
            "priority": 1,
            "description": "Latest loss.",
        },
    )

    def run_local(self, run: JobRun, *, reporter: base.Reporter | None = None) -> base.JobOutcome:
        from slmops_pipelines.local.finetune import run_finetune

        return run_finetune(run, reporter=reporter)

    def claim_output(self, run: JobRun) -> tuple[base.ArtifactStore, dict[str, Any] | None]:
        from slmops_pipelines.stages import finetune as stages

        stages.check_inputs(run.spec, multi_node=False)
        found = stages.inspect_output(run)
        return found.store, found.finished

    def pipeline(self, spec: FineTuneJobSpec) -> tuple[str, Callable[..., Callable]]:
        from slmops_pipelines.kubeflow.pipelines import finetune_pipeline, finetune_search_pipeline

        if spec.search is not None:
            return "finetune-search", finetune_search_pipeline
        return "finetune", finetune_pipeline

    def pipeline_settings(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        from slmops_pipelines.kubeflow.settings import FINETUNE, settings_of

        return settings_of(FINETUNE, spec)

    def placement_settings(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        return {"trial_parallelism": spec.search.parallelism if spec.search else 2}

    def output_artifacts(self, store: base.ArtifactStore) -> dict[str, str]:
        from slmops_pipelines.stages.finetune import output_artifacts
        from slmops_pipelines.steps import publish

        return output_artifacts(store, publish.read_json(store, publish.MANIFEST) or {})

    def summary_metrics(self, metrics_doc: dict[str, Any]) -> dict[str, float]:
        train = metrics_doc.get("train") or {}
        evaluation = metrics_doc.get("evaluation") or {}
        tuned = evaluation.get("finetuned") or {}
        return float_values(
            {
                **(tuned.get("metrics") or {}),
                "trainLoss": train.get("train_loss"),
                "evalLoss": train.get("eval_loss"),
                "accuracy": tuned.get("accuracy"),
                "baseAccuracy": (evaluation.get("base") or {}).get("accuracy"),
                "tokensPerSecond": train.get("tokens_per_second"),
                "wallTimeSeconds": metrics_doc.get("wall_time_s"),
            }
        )

    def progress(self, spec: FineTuneJobSpec, store: base.ArtifactStore) -> dict[str, Any]:
        if spec.search is None:
            return {}
        from slmops_pipelines.stages.trial_records import trial_counts

        return {"trials": trial_counts(store, spec)}

    def chat_loader(self) -> Callable[[base.JobOutput, base.TargetChoice], base.ChatTarget]:
        from slmops_pipelines.chat.targets import finetune_output_target

        return finetune_output_target

    def summary_tables(
        self, name: str, outcome: base.JobOutcome, *, wall_time_s: float
    ) -> list[SummaryTable]:
        from slmops_pipelines.steps.report.finetune import summary_rows

        rows = [(k, v) for k, v in summary_rows(outcome.metrics) if k != "wall time (s)"]
        rows.append(("wall time (s)", round(wall_time_s, 1)))
        cells = [[k, f"{v:.4g}" if isinstance(v, float) else str(v)] for k, v in rows if v is not None]
        cells += base.run_facts(outcome.metrics)
        cells += [[key, uri] for key, uri in outcome.artifacts.items()]
        tables = [SummaryTable(title=f"FineTuneJob {name}", rows=cells)]
        if outcome.metrics.get("search"):
            tables.append(_leaderboard(outcome.metrics["search"]))
        return tables


def _leaderboard(search: dict[str, Any]) -> SummaryTable:
    """Every trial of a search, best first; the winner is the job's result."""
    table = SummaryTable(
        title=f"Search: {search['strategy']}, {search['metric']} ({search['direction']}), "
        f"best trial {search['best_trial']}",
        columns=["trial", "state", search["metric"], "settings"],
    )
    for trial in search["trials"]:
        value = "" if trial["value"] is None else f"{trial['value']:.4g}"
        settings = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["params"].items()
        )
        if trial["trial"] == search["best_trial"]:
            table.highlight = len(table.rows)
        table.rows.append([str(trial["trial"]), trial["state"].lower(), value, settings])
    return table
