"""Run a FineTuneJob locally: the stages of :mod:`slmops_pipelines.stages.finetune` in one process.

Every stage writes into one work folder: the output folder itself for a local output, or a
staging folder under the cache for S3 (uploaded as it goes: checkpoints when saved,
everything else at publish).  Resumption and idempotence come from the output location:

* ``manifest.json`` present and ours    -> the job is done: nothing is retrained;
* complete checkpoints present           -> training resumes from the latest one;
* another job's claim or manifest there  -> refused (nothing is overwritten).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from slmops_pipelines.local.reporting import NullReporter, Reporter
from slmops_pipelines.models import input_cache
from slmops_pipelines.quiet import quiet_libraries
from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.stages import finetune as stages
from slmops_pipelines.stages.outputs import JobOutcome, JobRun, work_dir
from slmops_pipelines.stages.usage import metered


@input_cache.one_run()  # an input replaced while the job runs fails it; never two versions
def run_finetune(run: JobRun, *, reporter: Reporter | None = None) -> JobOutcome:
    """Run the job to completion (or resume it); raise JobError with a clear message on failure."""
    reporter = reporter or NullReporter()
    quiet_libraries()
    started = time.time()
    spec: FineTuneJobSpec = run.spec
    output_uri = run.output_uri
    inspection = _inspect(run, reporter=reporter)
    store = inspection.store
    if inspection.finished is not None:
        reporter.info(f"{output_uri} already holds this job's finished output: nothing to do")
        return JobOutcome(
            output_uri=store.uri,
            metrics=stages.stored_metrics(store),
            artifacts=stages.output_artifacts(store, inspection.finished),
            already_complete=True,
        )
    work = work_dir(store)
    remote = store.local_root() is None
    with metered(store, "data"):  # the output is claimed: its usage records are this job's
        model_path, data_dir, stats = _prepare(spec, work=work, reporter=reporter)
    with metered(store, "train"):
        search, evaluated_spec = _train(
            spec,
            model_path=model_path,
            data_dir=data_dir,
            work=work,
            checkpoints=store if remote else None,
            reporter=reporter,
        )
    reporter.stage("evaluate", "generating answers for the eval split")
    with metered(store, "evaluate"):
        evaluation = stages.evaluate(
            evaluated_spec,
            model_path=model_path,
            train_dir=work,
            data_dir=data_dir,
            merged_dir=work / "merged" if spec.output.merged_model else None,
        )
    reporter.stage("report", "metrics, loss curve and report")
    metrics = stages.write_report(
        run,
        data_stats=stats.to_json(),
        train_dir=work,
        evaluation=evaluation,
        out_dir=work,
        wall_time_s=time.time() - started,
        started_at=started,
        search=search,
    )
    reporter.stage("publish", f"writing {output_uri}")
    manifest = stages.publish_output(
        inspection,
        spec=spec,
        out_dir=work,
        model_path=model_path,
        fingerprint=stats.fingerprint,
        search=search,
    )
    if remote:
        shutil.rmtree(work, ignore_errors=True)
    return JobOutcome(
        output_uri=store.uri, metrics=metrics, artifacts=stages.output_artifacts(store, manifest)
    )


def _inspect(run: JobRun, *, reporter: Reporter) -> stages.Inspection:
    """Check the inputs and claim the output location (refusing another job's)."""
    from slmops_pipelines.credentials import secret_refs

    stages.check_inputs(run.spec, multi_node=False)
    reporter.stage("output", f"checking {run.output_uri}")
    for ref in secret_refs(run.spec):
        reporter.info(f"{ref.field} ({ref.name}) is read on a cluster; this local run uses your environment")
    return stages.inspect_output(run)


def _prepare(spec: FineTuneJobSpec, *, work: Path, reporter: Reporter):
    """Load and check the dataset, resolve the base model, render and tokenize into ``work/data``."""
    from slmops_pipelines.models import cache_root
    from slmops_pipelines.steps.data import check_dataset

    reporter.stage("data", f"loading {spec.dataset.uri}")
    loaded = check_dataset(spec.dataset, seed=spec.training.seed, cache_dir=cache_root())
    reporter.stage("model", f"resolving {spec.model.uri}")
    model_path = stages.resolve_base_model(spec)
    reporter.stage("data", "rendering and tokenizing")
    data_dir = work / "data"
    stats = stages.prepare_data(spec, data_dir=data_dir, model_path=model_path, loaded=loaded)
    reporter.info(
        f"data: {stats.train.rows} training rows ({stats.train.tokens} tokens, {stats.train.truncated} truncated), "
        f"{stats.eval.rows if stats.eval else 0} eval rows, fingerprint {stats.fingerprint[:19]}"
    )
    return model_path, data_dir, stats


def _train(
    spec: FineTuneJobSpec, *, model_path: Path, data_dir: Path, work: Path, checkpoints, reporter: Reporter
) -> tuple[dict | None, FineTuneJobSpec]:
    """Train once, or run the search; return the search summary (or None) and the spec to evaluate."""
    if spec.search is not None:
        search = _search(spec, model_path=model_path, data_dir=data_dir, work=work, reporter=reporter)
        return search, FineTuneJobSpec.model_validate(search["trial_spec"])
    reporter.stage("train", f"{spec.method} with {spec.resources.processes_per_node} process(es)")
    stages.train(
        spec,
        model_path=model_path,
        data_dir=data_dir,
        work=work,
        checkpoint_store=checkpoints,
        on_event=reporter.training_event,
    )
    return None, spec


def _search(
    spec: FineTuneJobSpec, *, model_path: Path, data_dir: Path, work: Path, reporter: Reporter
) -> dict:
    """The trials of ``spec.search``, one stage each, on the data prepared once."""
    from slmops_pipelines.stages.search import TrialStages, run_search, search_of

    search = search_of(spec)
    reporter.stage(
        "search",
        f"{search.trials} trial(s), {search.strategy}, {search.parallelism} at a time, by {search.metric}",
    )

    def train(tspec: FineTuneJobSpec, *, work: Path, on_event) -> object:
        return stages.train(tspec, model_path=model_path, data_dir=data_dir, work=work, on_event=on_event)

    def evaluate(tspec: FineTuneJobSpec, *, train_dir: Path):
        return stages.evaluate(
            tspec, model_path=model_path, train_dir=train_dir, data_dir=data_dir, merged_dir=None
        )

    def say(stage: str, message: str) -> None:
        reporter.info(f"{stage}: {message}")

    trial_stages = TrialStages(train=train, evaluate=evaluate, say=say)
    return run_search(spec, work=work, stages=trial_stages, on_progress=reporter.search_progress)


__all__ = ["run_finetune"]
