"""What each KFP component does: the shared stages over the folders of its artifacts.

A component's body is one call into this module (see :mod:`.components`), so the logic is
ordinary, importable, testable Python; KFP only decides where it runs and moves the
artifacts.  Artifacts are folders (``Dataset``, ``Model``) or files (``HTML``,
``Markdown``); ``Metrics`` artifacts get the scalars the dashboard shows.

Every task takes the job's ``spec`` (the resource's ``spec``, camelCase, as a dict) and a
``job`` context (:class:`JobContext`) as parameters, so the spec is part of every cache key;
data prep also takes the dataset fingerprint, and what follows it takes its output artifact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from slmops_pipelines.errors import InputError, JobError
from slmops_pipelines.specs import FineTuneJobSpec, OptimizeJobSpec


class MetricsArtifact(Protocol):
    path: str
    metadata: dict

    def log_metric(self, metric: str, value: float) -> None: ...


class JobContext(BaseModel):
    """Who the run is for: identity, labels to pass on, and how to train on many nodes.

    The pipelines' ``job`` parameter, in camelCase (``distributedEngine``) like the API.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: str
    namespace: str = "default"
    uid: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    distributed_engine: Literal["pytorchjob", "trainjob"] = "pytorchjob"
    trainjob_runtime: str = "torch-distributed"  # the ClusterTrainingRuntime of a TrainJob
    trainer_image: str = ""  # the image of the distributed workers (default: the trainer image)
    # The Secrets the run's pods mount ({name, keyToEnv}; names, never values): workers get them too.
    secrets: list[dict[str, Any]] = Field(default_factory=list)


def _log(metrics: MetricsArtifact, values: dict[str, Any]) -> None:
    """Log scalars for the dashboard; also write them to the artifact's file.

    The file matters: kfp.local's cache treats an output artifact whose file does not
    exist as gone, so a step with only-logged metrics would never be reused.
    """
    for key, value in values.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            metrics.log_metric(key, round(float(value), 6))
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(dict(metrics.metadata), indent=2, sort_keys=True))


def _say(stage: str, message: str) -> None:
    print(f"[slmops] {stage}: {message}", flush=True)


def _print_event(event: dict) -> None:
    kind = event.get("event")
    if kind in ("log", "evaluate", "train_end", "save"):
        fields = {k: v for k, v in event.items() if k != "event"}
        print(f"[slmops] train {kind}: {json.dumps(fields, default=str)}", flush=True)


ERROR_KEY = ".slmops/error.json"


def _record_error(output_uri: str, step: str, exc: JobError) -> None:
    """Leave the failure, with its spec field, where every engine and the operator can read it."""
    from slmops_pipelines.storage import open_store

    try:
        open_store(output_uri).write_text(
            ERROR_KEY,
            json.dumps({"step": step, "message": exc.message, "field": exc.field, "reason": exc.reason}),
        )
    except Exception as store_error:  # the output itself may be what failed: say so, keep the cause
        print(f"[slmops] could not record the error at {output_uri}: {store_error}", flush=True)


def reports_errors(func):
    """A task that fails with a JobError records it in the output location, then fails."""
    import functools

    @functools.wraps(func)
    def wrapper(**kwargs):
        try:
            return func(**kwargs)
        except JobError as exc:
            print(f"[slmops] {func.__name__} failed: {exc}", flush=True)
            _record_error(kwargs["output_uri"], func.__name__, exc)
            raise

    return wrapper


def read_error(output_uri: str) -> JobError | None:
    """The error a task recorded in this output location, if any."""
    from slmops_pipelines.storage import open_store

    store = open_store(output_uri)
    if not store.exists(ERROR_KEY):
        return None
    data = json.loads(store.read_text(ERROR_KEY))
    if data.get("reason") == "InvalidInput":
        return InputError(data["message"], field=data.get("field"))
    return JobError(data["message"], field=data.get("field"), reason=data.get("reason") or "Failed")


def _clear_error(output_uri: str) -> None:
    from slmops_pipelines.storage import open_store

    store = open_store(output_uri)
    if store.exists(ERROR_KEY):
        store.delete_prefix(ERROR_KEY)


def _copy_into(src: Path, dst: Path) -> None:
    """Copy the contents of ``src`` into ``dst`` (merging folders)."""
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)


def _markdown_links(title: str, artifacts: dict[str, str]) -> str:
    rows = "\n".join(f"| {name} | `{uri}` |" for name, uri in artifacts.items())
    return f"### {title}\n\n| artifact | URI |\n|---|---|\n{rows}\n"


# -- FineTuneJob -------------------------------------------------------------------------------


@reports_errors
def inspect_finetune(*, spec: dict, job: dict, output_uri: str) -> tuple[str, float, dict, dict, dict]:
    """Claim the output (refusing another job's), fingerprint the dataset, derive the steps' views.

    Never cached: it looks at the world.  Returns the fingerprint, the start time and the
    ``data``, ``train`` and ``evaluate`` views of the spec (see :mod:`.cache_keys`).
    """
    from slmops_pipelines.kubeflow.cache_keys import finetune_views
    from slmops_pipelines.stages import finetune as stages

    started = time.time()
    parsed, ctx = FineTuneJobSpec.model_validate(spec), JobContext.model_validate(job)
    if parsed.search is not None and parsed.search.strategy == "tpe":
        raise InputError(
            "tpe chooses each trial from the results of the ones before: on a pipeline, whose trials run "
            "side by side in their own pods, use random or grid (or run tpe with the local engine)",
            field="search.strategy",
        )
    stages.check_inputs(parsed, multi_node=True)
    stages.inspect_output(
        name=ctx.name, namespace=ctx.namespace, spec=parsed, output_uri=output_uri, uid=ctx.uid
    )
    _clear_error(output_uri)  # a previous run's failure is not this run's
    if parsed.search is not None:  # nor its trials
        from slmops_pipelines.storage import open_store

        open_store(output_uri).delete_prefix(TRIALS_PREFIX)
    fingerprint = stages.dataset_fingerprint(parsed)
    _say("inspect", f"output {output_uri} claimed; dataset {fingerprint[:19]}")
    views = finetune_views(parsed)
    return fingerprint, started, views["data"], views["train"], views["evaluate"]


@reports_errors
def prepare_data(
    *, spec: dict, output_uri: str, fingerprint: str, data_dir: str, metrics: MetricsArtifact
) -> None:
    from slmops_pipelines.stages import finetune as stages

    parsed = FineTuneJobSpec.model_validate(spec)
    model_path = stages.resolve_base_model(parsed)
    stats = stages.prepare_data(parsed, data_dir=Path(data_dir), model_path=model_path)
    if stats.fingerprint != fingerprint:  # the dataset changed between inspect and now
        raise InputError(
            f"the dataset changed while the run started ({fingerprint[:19]} -> {stats.fingerprint[:19]})",
            field="dataset.uri",
        )
    _say("data", f"{stats.train.rows} training rows, {stats.eval.rows if stats.eval else 0} eval rows")
    _log(
        metrics,
        {
            "train_rows": stats.train.rows,
            "train_tokens": stats.train.tokens,
            "train_truncated": stats.train.truncated,
            "eval_rows": stats.eval.rows if stats.eval else 0,
        },
    )


@reports_errors
def train(
    *, spec: dict, job: dict, output_uri: str, data_dir: str, model_dir: str, metrics: MetricsArtifact
) -> None:
    """Train on this pod (torchrun) or, with ``nodes > 1``, on a PyTorchJob/TrainJob; fill ``model_dir``."""
    from slmops_pipelines.stages import finetune as stages
    from slmops_pipelines.stages.progress import StoredProgress
    from slmops_pipelines.storage import open_store

    parsed, ctx = FineTuneJobSpec.model_validate(spec), JobContext.model_validate(job)
    store = open_store(output_uri, field="output.uri")
    work = Path(model_dir)
    work.mkdir(parents=True, exist_ok=True)
    progress = StoredProgress(store)  # the operator mirrors it into status.progress
    progress.stage("train")

    def on_event(event: dict) -> None:
        _print_event(event)
        progress.event(event)

    if parsed.resources.nodes > 1:
        from slmops_pipelines.kubeflow.distributed.train import train_on_cluster

        train_on_cluster(
            parsed, ctx, store=store, data_dir=Path(data_dir), work=work, say=_say, on_event=on_event
        )
    else:
        _say("train", f"{parsed.method} with {parsed.resources.processes_per_node} process(es)")
        stages.train(
            parsed,
            model_path=stages.resolve_base_model(parsed),
            data_dir=Path(data_dir),
            work=work,
            checkpoint_store=store,
            on_event=on_event,
        )
    progress.flush()
    shutil.rmtree(work / stages.CHECKPOINTS, ignore_errors=True)  # resume state lives in the output
    result = stages.read_train_result(work)
    _log(
        metrics,
        {
            "train_loss": result.train_loss,
            "eval_loss": result.eval_loss,
            "steps": result.global_step,
            "tokens_per_second": result.tokens_per_second,
            "train_runtime_s": result.train_runtime_s,
            "peak_memory_mb": result.peak_memory_mb,
            "trainable_parameters": result.trainable_parameters,
        },
    )


@reports_errors
def evaluate_finetune(
    *,
    spec: dict,
    output_uri: str,
    data_dir: str,
    model_dir: str,
    evaluation_path: str,
    merged_dir: str,
    metrics: MetricsArtifact,
) -> None:
    from slmops_pipelines.stages import finetune as stages

    parsed = FineTuneJobSpec.model_validate(spec)
    merged = Path(merged_dir)
    merged.mkdir(parents=True, exist_ok=True)  # an empty folder when no merged model is asked for
    evaluation = stages.evaluate(
        parsed,
        model_path=stages.resolve_base_model(parsed),
        train_dir=Path(model_dir),
        data_dir=Path(data_dir),
        merged_dir=merged if parsed.output.merged_model else None,
    )
    Path(evaluation_path).write_text(json.dumps(evaluation))
    if evaluation:
        _log(metrics, {"accuracy": evaluation["finetuned"]["accuracy"]})
        if evaluation.get("base"):
            _log(metrics, {"base_accuracy": evaluation["base"]["accuracy"]})


@reports_errors
def publish_finetune(
    *,
    spec: dict,
    job: dict,
    output_uri: str,
    fingerprint: str,
    started_at: float,
    data_dir: str,
    model_dir: str,
    evaluation_path: str,
    merged_dir: str,
    report_path: str,
    summary_path: str,
    metrics: MetricsArtifact,
    search_dir: str = "",
) -> str:
    """Assemble the output as the local engine lays it out, publish it (manifest last); return its URI."""
    from slmops_pipelines.stages import finetune as stages

    parsed, ctx = FineTuneJobSpec.model_validate(spec), JobContext.model_validate(job)
    search = json.loads((Path(search_dir) / "summary.json").read_text()) if search_dir else None
    with tempfile.TemporaryDirectory(prefix="slmops-publish-") as tmp:
        out = Path(tmp)
        _copy_into(Path(model_dir), out)
        if search_dir:
            _copy_into(Path(search_dir) / "trials", out / "trials")
        _copy_into(Path(data_dir), out / "data")
        merged = Path(merged_dir)
        if merged.is_dir() and any(merged.iterdir()):  # empty unless output.mergedModel
            _copy_into(merged, out / "merged")
        evaluation = json.loads(Path(evaluation_path).read_text())
        report = stages.write_report(
            name=ctx.name,
            namespace=ctx.namespace,
            spec=parsed,
            data_stats=stages.read_data_stats(Path(data_dir)),
            train_dir=out,
            evaluation=evaluation,
            out_dir=out,
            wall_time_s=time.time() - started_at,
            search=search,
        )
        shutil.copyfile(out / "report.html", report_path)
        inspection = stages.inspect_output(
            name=ctx.name, namespace=ctx.namespace, spec=parsed, output_uri=output_uri, uid=ctx.uid
        )
        manifest = stages.publish_output(
            inspection,
            spec=parsed,
            out_dir=out,
            model_path=stages.resolve_base_model(parsed),
            fingerprint=fingerprint,
            search=search,
        )
    artifacts = stages.output_artifacts(inspection.store, manifest)
    Path(summary_path).write_text(_markdown_links(f"FineTuneJob {ctx.namespace}/{ctx.name}", artifacts))
    train_result = report["train"]
    finetuned = (evaluation or {}).get("finetuned") or {}
    _log(
        metrics,
        {
            "train_loss": train_result.get("train_loss"),
            "eval_loss": train_result.get("eval_loss"),
            "accuracy": finetuned.get("accuracy"),
            "wall_time_s": report["wall_time_s"],
        },
    )
    _say("publish", f"{inspection.store.uri}: {len(manifest['files'])} files, manifest last")
    return inspection.store.uri


# -- hyperparameter search (fan-out) ----------------------------------------------------------


def plan_trials(*, spec: dict) -> list[dict]:
    """The trials of ``spec.search``, drawn from its seed: one ParallelFor iteration each."""
    from slmops_pipelines.stages.search import planned_trials

    parsed = FineTuneJobSpec.model_validate(spec)
    return [{"trial": n, "params": params} for n, params in enumerate(planned_trials(parsed.search))]


@reports_errors
def train_trial(
    *, spec: dict, trial: dict, output_uri: str, data_dir: str, trial_dir: str, metrics: MetricsArtifact
) -> None:
    """Train (and, for answer metrics, evaluate) one trial; a failure is the trial's, not the run's."""
    from slmops_pipelines.stages import finetune as stages
    from slmops_pipelines.stages.search import objective_value, trial_spec

    parsed = FineTuneJobSpec.model_validate(spec)
    tspec = trial_spec(parsed, trial["params"])
    work = Path(trial_dir)
    work.mkdir(parents=True, exist_ok=True)
    model_path = stages.resolve_base_model(tspec)
    number = int(trial["trial"])  # numbers travel as protobuf Struct values: floats
    result: dict[str, Any] = {
        "trial": number,
        "params": trial["params"],
        "state": "FAIL",
        "value": None,
    }
    _say("trial", f"{number}: {json.dumps(trial['params'])}")
    record = _trial_recorder(output_uri, number)
    record({**result, "state": "RUNNING"})
    try:
        train_result = stages.train(
            tspec, model_path=model_path, data_dir=Path(data_dir), work=work, on_event=_print_event
        )
        evaluation = None
        if parsed.search.metric not in ("eval_loss", "train_loss"):
            quick = tspec.evaluation.model_copy(update={"compare_base": False})
            evaluation = stages.evaluate(
                tspec.model_copy(update={"evaluation": quick}),
                model_path=model_path,
                train_dir=work,
                data_dir=Path(data_dir),
                merged_dir=None,
            )
        result.update(state="COMPLETE", value=objective_value(parsed.search, train_result, evaluation))
    except JobError as exc:
        result["error"] = str(exc)
        _say("trial", f"{number} failed: {exc}")
    finally:
        shutil.rmtree(work / stages.CHECKPOINTS, ignore_errors=True)
        (work / "trial.json").write_text(json.dumps(result, indent=2))
        record(result)
    _log(metrics, {parsed.search.metric: result["value"], "trial": number})


TRIALS_PREFIX = ".slmops/trials"


def _trial_recorder(output_uri: str, number: int):
    """Each trial's state in the output location, where the operator counts them for status."""
    from slmops_pipelines.storage import open_store

    store = open_store(output_uri)

    def record(state: dict[str, Any]) -> None:
        try:
            store.write_text(f"{TRIALS_PREFIX}/trial-{number:03d}.json", json.dumps(state))
        except Exception as exc:  # best effort: status, not results
            print(f"[slmops] could not record trial {number}: {exc}", flush=True)

    return record


def trial_counts(output_uri: str, spec: FineTuneJobSpec) -> dict[str, Any] | None:
    """total/done/running/pruned/failed/bestTrial/bestValue from the recorded trials (None: no search)."""
    from slmops_pipelines.storage import open_store

    if spec.search is None:
        return None
    store = open_store(output_uri)
    states = [json.loads(store.read_text(info.key)) for info in store.list(TRIALS_PREFIX)]
    done = [t for t in states if t["state"] != "RUNNING"]
    complete = [t for t in done if t["state"] == "COMPLETE" and t["value"] is not None]
    pick = max if spec.search.goal == "maximize" else min
    best = pick(complete, key=lambda t: t["value"]) if complete else None
    return {
        "total": spec.search.trials,
        "done": len(done),
        "running": len(states) - len(done),
        "pruned": sum(t["state"] == "PRUNED" for t in done),
        "failed": sum(t["state"] == "FAIL" for t in done),
        "bestTrial": best["trial"] if best else None,
        "bestValue": best["value"] if best else None,
    }


@reports_errors
def pick_best(*, spec: dict, output_uri: str, trial_dirs: list[str], best_dir: str, search_dir: str) -> dict:
    """The leaderboard from every trial; the best trial's results as the model; return its spec."""
    from slmops_pipelines.stages.search import RESULT_FOLDERS, adopt_best, summarize

    parsed = FineTuneJobSpec.model_validate(spec)
    results, folders = [], {}
    for folder in map(Path, trial_dirs):
        result = json.loads((folder / "trial.json").read_text())
        result["trial"] = int(result["trial"])
        results.append(result)
        folders[result["trial"]] = folder
    summary = summarize(parsed, sorted(results, key=lambda r: r["trial"]))
    adopt_best(folders[summary["best_trial"]], Path(best_dir))
    search = Path(search_dir)
    for number, folder in sorted(folders.items()):
        target = search / "trials" / f"trial-{number:03d}"
        target.mkdir(parents=True, exist_ok=True)
        for name in (*RESULT_FOLDERS, "trial.json"):
            source = folder / name
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True)
            elif source.is_file():
                shutil.copyfile(source, target / name)
    (search / "summary.json").write_text(json.dumps(summary, indent=2))
    _say("search", f"best trial {summary['best_trial']}: {summary['metric']} {summary['best_value']:.4g}")
    return summary["trial_spec"]


# -- OptimizeJob -------------------------------------------------------------------------------


def _source_locator(source_uri: str):
    def locate(name: str) -> str:
        if not source_uri:
            raise InputError(
                f"FineTuneJob {name!r}: the run was started without its output location",
                field="source.fineTuneJobRef",
            )
        return source_uri

    return locate


def source_fingerprint(spec: OptimizeJobSpec, source_uri: str) -> str:
    """What identifies the source's content: the FineTuneJob's manifest, or the adapters' listings."""
    from slmops_pipelines.steps import publish
    from slmops_pipelines.storage import open_store

    digest = hashlib.sha256()
    if spec.source.fine_tune_job_ref is not None:
        store = open_store(_source_locator(source_uri)(spec.source.fine_tune_job_ref.name))
        if not store.exists(publish.MANIFEST):
            raise InputError(
                f"FineTuneJob {spec.source.fine_tune_job_ref.name!r} has not succeeded: no manifest.json at "
                f"{store.uri}",
                field="source.fineTuneJobRef",
            )
        digest.update(store.read_text(publish.MANIFEST).encode())
    else:
        digest.update(spec.source.model.uri.encode())
        refs = [spec.source.adapter] if spec.source.adapter else list(spec.source.adapters or [])
        for ref in refs:
            digest.update(f"\0{ref.name}\0{ref.uri}\0".encode())
            for info in open_store(ref.uri, field="source.adapters").list(""):
                digest.update(f"{info.key}:{info.size}\n".encode())
    return "sha256:" + digest.hexdigest()


@reports_errors
def inspect_optimize(*, spec: dict, job: dict, output_uri: str, source_uri: str) -> tuple[str, float, dict]:
    """Claim the output, fingerprint the source, derive the source step's view; never cached."""
    from slmops_pipelines.kubeflow.cache_keys import optimize_source_view
    from slmops_pipelines.stages.outputs import job_identity, open_output

    started = time.time()
    parsed, ctx = OptimizeJobSpec.model_validate(spec), JobContext.model_validate(job)
    open_output(output_uri, job_identity("OptimizeJob", ctx.namespace, ctx.name, parsed, ctx.uid))
    _clear_error(output_uri)
    fingerprint = source_fingerprint(parsed, source_uri)
    _say("inspect", f"output {output_uri} claimed; source {fingerprint[:19]}")
    return fingerprint, started, optimize_source_view(parsed)


def plan_targets(*, spec: dict) -> list[dict]:
    """One spec view per target: the ParallelFor's items."""
    from slmops_pipelines.kubeflow.cache_keys import optimize_target_views

    return optimize_target_views(OptimizeJobSpec.model_validate(spec))


@reports_errors
def prepare_optimize_source(
    *,
    spec: dict,
    output_uri: str,
    source_uri: str,
    fingerprint: str,
    prepared_dir: str,
    metrics: MetricsArtifact,
) -> None:
    from slmops_pipelines.stages import optimize as stages

    parsed = OptimizeJobSpec.model_validate(spec)
    stages.prepare_source(
        parsed, locate_job=_source_locator(source_uri), prepared_dir=Path(prepared_dir), say=_say
    )
    reference = json.loads((Path(prepared_dir) / stages.REFERENCE_JSON).read_text())
    _log(metrics, _target_scalars(reference["finetuned_pytorch"], prefix="pytorch_"))
    if reference.get("base_pytorch"):
        _log(metrics, {"base_accuracy": reference["base_pytorch"].get("accuracy")})


def _target_scalars(measured: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    latency = measured.get("latency") or {}
    return {
        f"{prefix}accuracy": measured.get("accuracy"),
        f"{prefix}perplexity": measured.get("perplexity"),
        f"{prefix}decode_tokens_per_s": latency.get("decode_tokens_per_s_p50"),
        f"{prefix}prefill_ms_p50": latency.get("prefill_ms_p50"),
        f"{prefix}size_mb": measured.get("size_mb"),
    }


@reports_errors
def build_target(
    *,
    spec: dict,
    output_uri: str,
    prepared_dir: str,
    target_dir: str,
    metrics: MetricsArtifact,
) -> None:
    """Export, measure and gate the target of this view; ``target_dir`` gets ``model/`` and ``result.json``."""
    from slmops_pipelines.stages import optimize as stages

    parsed = OptimizeJobSpec.model_validate(spec)
    target_name = parsed.targets[0].name
    out = Path(target_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slmops-target-") as tmp:
        result = stages.build_target(
            parsed, target_name=target_name, prepared_dir=Path(prepared_dir), targets_dir=Path(tmp), say=_say
        )
        shutil.rmtree(out / "model", ignore_errors=True)
        shutil.move(str(Path(tmp) / target_name), str(out / "model"))
        _copy_into(Path(tmp) / "logs", out / "logs")  # the builder's log, published as the local engine does
    (out / "result.json").write_text(json.dumps(result, indent=2))
    _log(metrics, _target_scalars(result["metrics"]))
    _log(metrics, {"decode_speedup": result["vsFinetuned"].get("decode_speedup")})


@reports_errors
def publish_optimize(
    *,
    spec: dict,
    job: dict,
    output_uri: str,
    started_at: float,
    prepared_dir: str,
    target_dirs: list[str],
    report_path: str,
    summary_path: str,
    metrics: MetricsArtifact,
) -> str:
    """Collect the targets, write metrics and report, apply the gates, publish; return the output URI."""
    from slmops_pipelines.stages import optimize as stages
    from slmops_pipelines.stages.outputs import job_identity, open_output

    parsed, ctx = OptimizeJobSpec.model_validate(spec), JobContext.model_validate(job)
    identity = job_identity("OptimizeJob", ctx.namespace, ctx.name, parsed, ctx.uid)
    store, _finished = open_output(output_uri, identity)
    with tempfile.TemporaryDirectory(prefix="slmops-publish-") as tmp:
        out = Path(tmp)
        results = []
        for folder in map(Path, target_dirs):
            result = json.loads((folder / "result.json").read_text())
            shutil.copytree(folder / "model", out / "targets" / result["name"])
            _copy_into(folder / "logs", out / "targets" / "logs")
            results.append(result)
        metrics_doc = stages.write_report(
            parsed,
            name=ctx.name,
            namespace=ctx.namespace,
            prepared_dir=Path(prepared_dir),
            results=results,
            out_dir=out,
            wall_time_s=time.time() - started_at,
        )
        shutil.copyfile(out / "report.html", report_path)
        for name, entry in metrics_doc["targets"].items():
            _log(metrics, _target_scalars(entry["metrics"], prefix=f"{name}_"))
        artifacts = stages.publish_output(
            store, spec=parsed, identity=identity, out_dir=out, metrics_doc=metrics_doc
        )
    Path(summary_path).write_text(_markdown_links(f"OptimizeJob {ctx.namespace}/{ctx.name}", artifacts))
    _say("publish", f"{store.uri}: {len(results)} target(s), manifest last")
    return store.uri
