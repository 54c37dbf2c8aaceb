"""Runs in MLflow, where teams already look (``spec.tracking.mlflow``).

Once a job's report is written (both engines call this, with the same files), its run is
logged through MLflow's own client:

* a FineTuneJob: the spec as parameters (``training.learningRate``...), every logged step's
  losses (``loss``, ``eval_loss``, ``learning_rate``, ``grad_norm`` at their step), the
  evaluation and summary metrics, what it cost (``usage.*``), and ``metrics.json``,
  ``report.html`` and the adapter (or model) as artifacts; search trials as child runs;
* an OptimizeJob: each target's metrics (``cpu-int4.accuracy``...) and gate verdicts (tags
  ``gate.<target>.<gate>``), linked to its FineTuneJob's run (tags ``slmops.finetune_run_id``
  and ``mlflow.note.content``).

The server is the tenant's: it is reached from the job's pods with the job's credentials
(MLflow's own ``MLFLOW_TRACKING_*`` variables, from ``credentialsSecret``).  It never fails
the job: an unreachable or refusing server gives a record with an ``error``, which the
``Tracked`` condition shows.  Logging is idempotent per job run: a retried step finds the
finished MLflow run of this job run (tag ``slmops.run``: the job and when its run started)
and logs nothing twice; running the job again makes a new MLflow run.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from slmops_pipelines.stages.outputs import JobRun

# An unreachable server costs seconds, not the client's default minutes of retries.
_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
_PARAM_LIMIT = 6000  # characters of one parameter value MLflow keeps
_BATCH = 500  # metrics per log_batch call (MLflow takes 1000 at most)
_STEP_KEYS = ("loss", "eval_loss", "learning_rate", "grad_norm")
_KEY_CHARS = re.compile(r"[^\w\-./ ]")  # what MLflow refuses in a metric's name


def _settings(run: JobRun):
    tracking = getattr(run.spec, "tracking", None)
    return tracking.mlflow if tracking is not None else None


def track(run: JobRun, metrics_doc: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Log the run where its spec says; return what ``metrics.json`` records (``{}``: not asked)."""
    settings = _settings(run)
    if settings is None:
        return {}
    for key, value in _CLIENT_ENV.items():
        os.environ.setdefault(key, value)
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=settings.tracking_uri)
        experiment_id = _experiment(client, settings.experiment)
        run_id = _log(client, experiment_id, run, metrics_doc, out_dir)
    except Exception as exc:  # whatever the server or the network did: the job stands
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
        return {"mlflow": {"trackingUri": settings.tracking_uri, "error": message}}
    url = f"{settings.tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return {
        "mlflow": {
            "trackingUri": settings.tracking_uri,
            "experimentId": experiment_id,
            "runId": run_id,
            "url": url,
        }
    }


def _experiment(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another job created it in between
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _identity(run: JobRun, metrics_doc: dict[str, Any]) -> str:
    """This run of the job: a retried step (the same start) finds it, a rerun (a new start) does not."""
    started = metrics_doc.get("started_at")
    attempt = f"{started:.3f}" if isinstance(started, int | float) else uuid.uuid4().hex
    return "/".join((run.kind, run.namespace or "-", run.name, run.uid or "local", attempt))


def _log(client, experiment_id: str, run: JobRun, metrics_doc: dict[str, Any], out_dir: Path) -> str:
    identity = _identity(run, metrics_doc)
    earlier = client.search_runs(
        [experiment_id], filter_string=f"tags.`slmops.run` = '{identity}'", max_results=5
    )
    for found in earlier:
        if found.info.status == "FINISHED":
            return found.info.run_id  # a retried step: this run is logged already
    tags = {"slmops.run": identity, "slmops.kind": run.kind, "slmops.namespace": run.namespace or ""}
    created = client.create_run(experiment_id, run_name=run.name, tags=tags)
    run_id = created.info.run_id
    try:
        _log_params(client, run_id, _flat(run.spec.model_dump(mode="json", by_alias=True, exclude_none=True)))
        if "targets" in metrics_doc:  # an optimization's report
            _log_optimize(client, run_id, run, metrics_doc)
        else:
            _log_finetune(client, experiment_id, run_id, metrics_doc, out_dir)
        _log_metrics(
            client, run_id, [(key, value, 0) for key, value in sorted(_numbers(metrics_doc).items())]
        )
        for name in ("metrics.json", "report.html"):
            if (out_dir / name).is_file():
                client.log_artifact(run_id, str(out_dir / name))
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _flat(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            if key != "tracking":
                flat.update(_flat(item, f"{prefix}{key}."))
        return flat
    text = json.dumps(value) if isinstance(value, list) else str(value)
    return {prefix.rstrip("."): text[:_PARAM_LIMIT]}


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(key, value) for key, value in sorted(params.items())]
    for start in range(0, len(items), 100):  # MLflow takes 100 parameters a call
        client.log_batch(run_id, params=items[start : start + 100])


def _log_metrics(client, run_id: str, points: list[tuple[str, float, int]]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(key, float(value), now, step) for key, value, step in points]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, metrics=items[start : start + _BATCH])


def _log_finetune(
    client, experiment_id: str, run_id: str, metrics_doc: dict[str, Any], out_dir: Path
) -> None:
    steps = [
        (key, entry[key], int(entry["step"]))
        for entry in metrics_doc.get("log_history") or []
        for key in _STEP_KEYS
        if isinstance(entry.get(key), int | float) and "step" in entry
    ]
    _log_metrics(client, run_id, steps)
    result = (metrics_doc.get("train") or {}).get("output") or "adapter"
    if (out_dir / result).is_dir():
        client.log_artifacts(run_id, str(out_dir / result), artifact_path=result)
    for trial in (metrics_doc.get("search") or {}).get("trials") or []:
        _log_trial(client, experiment_id, run_id, trial)


def _log_trial(client, experiment_id: str, parent_id: str, trial: dict[str, Any]) -> None:
    """A search trial as a child run of the job's (MLflow shows them nested)."""
    tags = {
        "mlflow.parentRunId": parent_id,
        "slmops.trial": str(trial.get("trial")),
        "state": str(trial.get("state")),
    }
    child = client.create_run(experiment_id, run_name=f"trial-{trial.get('trial')}", tags=tags)
    _log_params(client, child.info.run_id, _flat(trial.get("params") or {}))
    if isinstance(trial.get("value"), int | float):
        _log_metrics(client, child.info.run_id, [("value", trial["value"], 0)])
    client.set_terminated(child.info.run_id, "FINISHED" if trial.get("state") == "COMPLETE" else "KILLED")


def _log_optimize(client, run_id: str, run: JobRun, metrics_doc: dict[str, Any]) -> None:
    for gate in metrics_doc.get("gates") or []:
        verdict = {True: "passed", False: "violated", None: "unchecked"}[gate.get("passed")]
        subject = gate["target"] + (f".{gate['adapter']}" if gate.get("adapter") else "")
        client.set_tag(run_id, f"gate.{subject}.{gate['gate']}", verdict)
    source = _finetune_run(run)
    if source:
        client.set_tag(run_id, "slmops.finetune_run_id", source["runId"])
        client.set_tag(
            run_id,
            "mlflow.note.content",
            f"Optimizes the fine-tuned model of run {source.get('url', source['runId'])}",
        )


def _finetune_run(run: JobRun) -> dict[str, Any] | None:
    """The MLflow run its FineTuneJob recorded in its own metrics.json, if it was tracked."""
    if not run.source_uri:
        return None
    try:
        from slmops_pipelines.steps import publish
        from slmops_pipelines.storage import open_store

        # Read as the job reads its source (stages/optimize_source.py): with the output's keys.
        store = open_store(run.source_uri, field="source.fineTuneJobRef")
        recorded = (publish.read_json(store, "metrics.json") or {}).get("tracking") or {}
    except Exception:  # an untracked or unreadable source: no link, nothing else lost
        return None
    mlflow = recorded.get("mlflow") or {}
    return mlflow if mlflow.get("runId") else None


def _numbers(value: Any, prefix: str = "") -> dict[str, float]:
    """Every number of the report (``train.train_loss``, ``targets.cpu-int4.metrics.accuracy``,
    ``usage.gpu_seconds``...), but the per-step history and the trials, logged on their own."""
    if isinstance(value, dict):
        found: dict[str, float] = {}
        for key, item in value.items():
            if not prefix and key in ("log_history", "search", "tracking", "job"):
                continue
            found.update(_numbers(item, f"{prefix}{_KEY_CHARS.sub('_', str(key))}."))
        return found
    if isinstance(value, int | float) and not isinstance(value, bool) and prefix:
        return {prefix.rstrip(".")[:250]: float(value)}
    return {}


def record_tracking(run: JobRun, metrics_doc: dict[str, Any], out_dir: Path) -> None:
    """Track the run (when its spec asks) and add what happened to ``metrics.json`` (``tracking``)."""
    tracked = track(run, metrics_doc, out_dir)
    if tracked:
        metrics_doc["tracking"] = tracked
        (out_dir / "metrics.json").write_text(json.dumps(metrics_doc, indent=2))
