"""A hyperparameter search on a pipeline: plan the trials, train each in its own pod, pick the best.

The trials fan out in a ``dsl.ParallelFor``; each records its state in the output location
(:mod:`slmops_pipelines.stages.trial_records`), where the operator counts them for
``status.progress.trials``.  A trial's failure is the trial's, not the run's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from slmops_pipelines.errors import JobError
from slmops_pipelines.kubeflow.tasks.common import (
    MetricsArtifact,
    log_metrics,
    metered_task,
    pinned_inputs,
    print_event,
    reports_errors,
    say,
)
from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.stages.trial_records import trial_recorder


def plan_trials(*, spec: dict) -> list[dict]:
    """The trials of ``spec.search``, drawn from its seed: one ParallelFor iteration each."""
    from slmops_pipelines.stages.search import planned_trials, search_of

    parsed = FineTuneJobSpec.model_validate(spec)
    return [{"trial": n, "params": params} for n, params in enumerate(planned_trials(search_of(parsed)))]


@metered_task("train")
@reports_errors
@pinned_inputs()
def train_trial(
    *, spec: dict, trial: dict, output_uri: str, data: str, trial_model: str, trial_metrics: MetricsArtifact
) -> None:
    """Train (and, for answer metrics, evaluate) one trial; a failure is the trial's, not the run's."""
    from slmops_pipelines.stages import finetune as stages
    from slmops_pipelines.stages.search import objective_value, search_of, trial_spec

    parsed = FineTuneJobSpec.model_validate(spec)
    search = search_of(parsed)
    tspec = trial_spec(parsed, trial["params"])
    work = Path(trial_model)
    work.mkdir(parents=True, exist_ok=True)
    model_path = stages.resolve_base_model(tspec)
    number = int(trial["trial"])  # numbers travel as protobuf Struct values: floats
    result: dict[str, Any] = {
        "trial": number,
        "params": trial["params"],
        "state": "FAIL",
        "value": None,
    }
    say("trial", f"{number}: {json.dumps(trial['params'])}")
    record = trial_recorder(output_uri, number)
    record({**result, "state": "RUNNING"})
    try:
        train_result = stages.train(
            tspec, model_path=model_path, data_dir=Path(data), work=work, on_event=print_event
        )
        evaluation = None
        if search.metric not in ("eval_loss", "train_loss"):
            quick = tspec.evaluation.model_copy(update={"compare_base": False})
            evaluation = stages.evaluate(
                tspec.model_copy(update={"evaluation": quick}),
                model_path=model_path,
                train_dir=work,
                data_dir=Path(data),
                merged_dir=None,
            )
        result.update(state="COMPLETE", value=objective_value(search, train_result, evaluation))
    except JobError as exc:
        result["error"] = str(exc)
        say("trial", f"{number} failed: {exc}")
    finally:
        shutil.rmtree(work / stages.CHECKPOINTS, ignore_errors=True)
        (work / "trial.json").write_text(json.dumps(result, indent=2))
        record(result)
    log_metrics(trial_metrics, {search.metric: result["value"], "trial": number})


@metered_task("select")
@reports_errors
def pick_best(*, spec: dict, output_uri: str, trials: list[str], best: str, search: str) -> dict:
    """The leaderboard from every trial; the best trial's results as the model; return its spec."""
    from slmops_pipelines.stages.search import RESULT_FOLDERS, adopt_best, summarize

    parsed = FineTuneJobSpec.model_validate(spec)
    results, folders = [], {}
    for folder in map(Path, trials):
        result = json.loads((folder / "trial.json").read_text())
        result["trial"] = int(result["trial"])
        results.append(result)
        folders[result["trial"]] = folder
    summary = summarize(parsed, sorted(results, key=lambda r: r["trial"]))
    adopt_best(folders[summary["best_trial"]], Path(best))
    leaderboard = Path(search)
    for number, folder in sorted(folders.items()):
        target = leaderboard / "trials" / f"trial-{number:03d}"
        target.mkdir(parents=True, exist_ok=True)
        for name in (*RESULT_FOLDERS, "trial.json"):
            source = folder / name
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True)
            elif source.is_file():
                shutil.copyfile(source, target / name)
    (leaderboard / "summary.json").write_text(json.dumps(summary, indent=2))
    say("search", f"best trial {summary['best_trial']}: {summary['metric']} {summary['best_value']:.4g}")
    return summary["trial_spec"]
