"""The FineTuneJob's tasks: inspect, prepare data, train, evaluate, publish.

Each is one KFP component's body (:mod:`slmops_pipelines.kubeflow.components`) over the
folders of its artifacts, calling :mod:`slmops_pipelines.stages.finetune`, the very stages
the local engine calls.  ``publish_finetune`` serves both FineTuneJob pipelines: with a
search it also publishes every trial and the leaderboard (``search``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from slmops_pipelines.errors import InputError
from slmops_pipelines.kubeflow import settings
from slmops_pipelines.kubeflow.settings import check_settings
from slmops_pipelines.kubeflow.tasks.common import (
    JobContext,
    MetricsArtifact,
    clear_error,
    copy_into,
    log_metrics,
    markdown_links,
    metered_task,
    pinned_inputs,
    print_event,
    reports_errors,
    say,
)
from slmops_pipelines.models import input_cache
from slmops_pipelines.models.resolve import model_digest
from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.stages.preflight import (
    check_finetune_model,
    declared_inputs_exist,
    finding_of,
    raise_findings,
)


@reports_errors
@pinned_inputs(first_step=True)
def inspect_finetune(
    *, spec: dict, job: dict, output_uri: str, **shown: Any
) -> tuple[str, float, dict, dict, dict, dict]:
    """Claim the output (refusing another job's), fingerprint the dataset, derive the steps' views.

    Never cached: it looks at the world.  Returns the fingerprint, the start time, the
    ``data``, ``train`` and ``evaluate`` views of the spec (see :mod:`.cache_keys`) and what
    the remote inputs hold now (spec field -> ``sha256:``), which the cached steps key on.
    """
    from slmops_pipelines.kubeflow.cache_keys import finetune_views
    from slmops_pipelines.stages import finetune as stages

    started = time.time()
    parsed, ctx = FineTuneJobSpec.model_validate(spec), JobContext.model_validate(job)
    check_settings(settings.FINETUNE, parsed, shown)
    if parsed.search is not None and parsed.search.strategy == "tpe":
        raise InputError(
            "tpe chooses each trial from the results of the ones before: on a pipeline, whose trials run "
            "side by side in their own pods, use random or grid (or run tpe with the local engine)",
            field="search.strategy",
        )
    stages.check_inputs(parsed, multi_node=True)
    # Pre-flight, on this CPU pod before any GPU step is scheduled: the model, and the dataset as
    # it is fingerprinted (one read of it), every problem at once.
    findings = check_finetune_model(parsed)
    try:
        model_digest(parsed.model)  # pinned for the run: a model replaced at its URI is a new run
    except InputError as exc:
        findings.append(finding_of(exc, "model.uri"))
    try:
        fingerprint = stages.dataset_fingerprint(parsed)
    except InputError as exc:
        findings.append(finding_of(exc, "dataset.uri"))
    raise_findings(declared_inputs_exist(parsed, findings))
    stages.inspect_output(ctx.run(parsed, output_uri))
    clear_error(output_uri)  # a previous run's failure is not this run's
    if parsed.search is not None:  # nor its trials
        from slmops_pipelines.stages.trial_records import clear_trials

        clear_trials(output_uri)
    say("inspect", f"output {output_uri} claimed; dataset {fingerprint[:19]}")
    views = finetune_views(parsed)
    return fingerprint, started, views["data"], views["train"], views["evaluate"], input_cache.pins()


@metered_task("data")
@reports_errors
@pinned_inputs()
def prepare_data(
    *, spec: dict, output_uri: str, fingerprint: str, inputs: dict, data: str, data_metrics: MetricsArtifact
) -> None:
    """Render and tokenize the dataset into ``data`` (checked against inspect's fingerprint).

    ``inputs`` (what inspect listed of the remote inputs) is part of this step's cache key, and
    so of every step after it: a model replaced at its URI is trained again, not reused.
    """
    from slmops_pipelines.stages import finetune as stages

    parsed = FineTuneJobSpec.model_validate(spec)
    model_path = stages.resolve_base_model(parsed)
    stats = stages.prepare_data(parsed, data_dir=Path(data), model_path=model_path)
    if stats.fingerprint != fingerprint:  # the dataset changed between inspect and now
        raise InputError(
            f"the dataset changed while the run started ({fingerprint[:19]} -> {stats.fingerprint[:19]})",
            field="dataset.uri",
        )
    say("data", f"{stats.train.rows} training rows, {stats.eval.rows if stats.eval else 0} eval rows")
    log_metrics(
        data_metrics,
        {
            "train_rows": stats.train.rows,
            "train_tokens": stats.train.tokens,
            "train_truncated": stats.train.truncated,
            "eval_rows": stats.eval.rows if stats.eval else 0,
        },
    )


@metered_task("train")
@reports_errors
@pinned_inputs()
def train(
    *, spec: dict, job: dict, output_uri: str, data: str, model: str, train_metrics: MetricsArtifact
) -> None:
    """Train on this pod (torchrun) or, with ``nodes > 1``, on a PyTorchJob/TrainJob; fill ``model``."""
    from slmops_pipelines.stages import finetune as stages
    from slmops_pipelines.stages.progress import StoredProgress
    from slmops_pipelines.storage import open_store

    parsed, ctx = FineTuneJobSpec.model_validate(spec), JobContext.model_validate(job)
    store = open_store(output_uri, field="output.uri")
    work = Path(model)
    work.mkdir(parents=True, exist_ok=True)
    progress = StoredProgress(store)  # the operator mirrors it into status.progress
    progress.stage("train")

    def on_event(event: dict) -> None:
        print_event(event)
        progress.event(event)

    if parsed.resources.nodes > 1:
        from slmops_pipelines.kubeflow.distributed.train import train_on_cluster

        train_on_cluster(parsed, ctx, store=store, data_dir=Path(data), work=work, say=say, on_event=on_event)
    else:
        say("train", f"{parsed.method} with {parsed.resources.processes_per_node} process(es)")
        stages.train(
            parsed,
            model_path=stages.resolve_base_model(parsed),
            data_dir=Path(data),
            work=work,
            checkpoint_store=store,
            on_event=on_event,
        )
    progress.flush()
    shutil.rmtree(work / stages.CHECKPOINTS, ignore_errors=True)  # resume state lives in the output
    result = stages.read_train_result(work)
    log_metrics(
        train_metrics,
        {
            "train_loss": result.train_loss,
            "eval_loss": result.eval_loss,
            "steps": result.global_step,
            "tokens_per_second": result.tokens_per_second,
            "positions_computed": result.positions_computed,
            "train_runtime_s": result.train_runtime_s,
            "peak_memory_mb": result.peak_memory_mb,
            "trainable_parameters": result.trainable_parameters,
        },
    )


@metered_task("evaluate")
@reports_errors
@pinned_inputs()
def evaluate_finetune(
    *,
    spec: dict,
    output_uri: str,
    data: str,
    model: str,
    evaluation: str,
    merged: str,
    eval_metrics: MetricsArtifact,
) -> None:
    """Score the trained model (and the base) into ``evaluation``; merge it into ``merged`` when asked."""
    from slmops_pipelines.stages import finetune as stages

    parsed = FineTuneJobSpec.model_validate(spec)
    merged_dir = Path(merged)
    merged_dir.mkdir(parents=True, exist_ok=True)  # an empty folder when no merged model is asked for
    scores = stages.evaluate(
        parsed,
        model_path=stages.resolve_base_model(parsed),
        train_dir=Path(model),
        data_dir=Path(data),
        merged_dir=merged_dir if parsed.output.merged_model else None,
    )
    Path(evaluation).write_text(json.dumps(scores))
    if scores:
        log_metrics(eval_metrics, {"accuracy": scores["finetuned"]["accuracy"]})
        if scores.get("base"):
            log_metrics(eval_metrics, {"base_accuracy": scores["base"]["accuracy"]})


@metered_task("publish")
@reports_errors
@pinned_inputs()
def publish_finetune(
    *,
    spec: dict,
    job: dict,
    output_uri: str,
    # the component's own outputs: the report page, the links to the artifacts, the scalars
    report: str,
    artifacts: str,
    summary: MetricsArtifact,
    # what the steps before made, and what inspect found
    data: str,
    model: str,
    evaluation: str,
    merged: str,
    search: str | None = None,  # a search's trials and leaderboard
    fingerprint: str,
    started_at: float,
) -> str:
    """Assemble the output as the local engine lays it out, publish it (manifest last); return its URI."""
    from slmops_pipelines.stages import finetune as stages

    parsed, ctx = FineTuneJobSpec.model_validate(spec), JobContext.model_validate(job)
    trials = json.loads((Path(search) / "summary.json").read_text()) if search else None
    with tempfile.TemporaryDirectory(prefix="slmops-publish-") as tmp:
        out = Path(tmp)
        copy_into(Path(model), out)
        if search:
            copy_into(Path(search) / "trials", out / "trials")
        copy_into(Path(data), out / "data")
        merged_dir = Path(merged)
        if merged_dir.is_dir() and any(merged_dir.iterdir()):  # empty unless output.mergedModel
            copy_into(merged_dir, out / "merged")
        scores = json.loads(Path(evaluation).read_text())
        run = ctx.run(parsed, output_uri)
        written = stages.write_report(
            run,
            data_stats=stages.read_data_stats(Path(data)),
            train_dir=out,
            evaluation=scores,
            out_dir=out,
            wall_time_s=time.time() - started_at,
            started_at=started_at,
            search=trials,
        )
        shutil.copyfile(out / "report.html", report)
        inspection = stages.inspect_output(run)
        manifest = stages.publish_output(
            inspection,
            spec=parsed,
            out_dir=out,
            model_path=stages.resolve_base_model(parsed),
            fingerprint=fingerprint,
            search=trials,
        )
    links = stages.output_artifacts(inspection.store, manifest)
    Path(artifacts).write_text(markdown_links(run.title, links))
    train_result = written["train"]
    finetuned = (scores or {}).get("finetuned") or {}
    log_metrics(
        summary,
        {
            "train_loss": train_result.get("train_loss"),
            "eval_loss": train_result.get("eval_loss"),
            "accuracy": finetuned.get("accuracy"),
            "wall_time_s": written["wall_time_s"],
        },
    )
    say("publish", f"{inspection.store.uri}: {len(manifest['files'])} files, manifest last")
    return inspection.store.uri
