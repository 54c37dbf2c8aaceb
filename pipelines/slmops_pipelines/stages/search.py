"""Hyperparameter search: trials of one FineTuneJob, the best one becomes the job's result.

An Optuna study drives the trials (grid, random or TPE sampler, seeded; median pruning on
the eval loss).  Each trial is the job's own spec with the trial's settings applied, trained
and evaluated by the same stages as any job, into ``trials/trial-NNN/`` of the job's
output: its adapter, logs, TensorBoard events and ``trial.json``.  Trials share the data
prepared once.  ``parallelism`` trials run side by side (threads, each driving its own
torchrun processes).

* pruning: the eval loss of each evaluation is reported to the study; a trial worse than
  the median of the others at that step is stopped (its trainers are terminated);
* a failing trial is recorded as failed and the search goes on; only when every trial
  fails does the job fail, with the first trial's error;
* at the end the best trial's results are copied to the job's root (``adapter/`` ...), so
  that the job's artifacts, its manifest and any OptimizeJob that refers to it use them,
  and the leaderboard (every trial: number, state, value, settings) goes into
  ``metrics.json`` and the report (a table and a plot of the metric against each setting).
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops_pipelines.errors import JobError
from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.specs.search import PARAMETERS, SearchSpec

if TYPE_CHECKING:
    import optuna

TRIALS = "trials"
RESULT_FOLDERS = ("adapter", "model", "tensorboard", "logs", "merged")


def search_of(spec: FineTuneJobSpec) -> SearchSpec:
    """The spec's search section; the search stages run only for a spec that has one."""
    if spec.search is None:  # not reached: callers check spec.search before running a search
        raise ValueError("the spec has no search section")
    return spec.search


def trial_spec(spec: FineTuneJobSpec, params: dict[str, float]) -> FineTuneJobSpec:
    """The job's spec with a trial's settings applied (and no search of its own)."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.pop("search", None)
    for path, value in params.items():
        section, key = path.split(".", 1)
        data.setdefault(section, {})[key] = int(value) if PARAMETERS[path][0] == "int" else value
    return FineTuneJobSpec.model_validate(data)


def _suggest(trial, search: SearchSpec) -> dict[str, float]:
    params = {}
    for name, parameter in search.space.items():
        kind = PARAMETERS[name][0]
        if parameter.values is not None:
            params[name] = trial.suggest_categorical(name, list(parameter.values))
        elif kind == "int":
            low, high = parameter.bounds
            params[name] = trial.suggest_int(name, int(low), int(high), log=parameter.log)
        else:
            low, high = parameter.bounds
            params[name] = trial.suggest_float(name, low, high, log=parameter.log)
    return params


def _grid(search: SearchSpec) -> dict[str, list[float]]:
    grid = {}
    for name, parameter in search.space.items():
        if parameter.values is not None:
            grid[name] = list(parameter.values)
        else:  # an integer range (validated)
            low, high = parameter.bounds
            grid[name] = list(range(int(low), int(high) + 1))
    return grid


def planned_trials(search: SearchSpec) -> list[dict[str, float]]:
    """Grid and random trials, drawn up front from the seed.

    Drawn before any trial runs, so that parallel trials (threads asking the sampler in
    whatever order they get to it) still try exactly the same settings: the same seed, the
    same trials.  TPE adapts to results, so it samples as it goes (repeatable when trials
    run one at a time).
    """
    import itertools
    import math
    import random

    rng = random.Random(search.seed)
    if search.strategy == "grid":
        grid = _grid(search)
        names = sorted(grid)
        combos = [
            dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))
        ]
        rng.shuffle(combos)
        return combos[: search.trials]
    plans = []
    for _ in range(search.trials):
        params: dict[str, float] = {}
        for name in sorted(search.space):
            parameter, kind = search.space[name], PARAMETERS[name][0]
            if parameter.values is not None:
                params[name] = rng.choice(parameter.values)
                continue
            low, high = parameter.bounds
            value = (
                math.exp(rng.uniform(math.log(low), math.log(high)))
                if parameter.log
                else rng.uniform(low, high)
            )
            params[name] = min(int(high), max(int(low), round(value))) if kind == "int" else value
        plans.append(params)
    return plans


def make_study(search: SearchSpec):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if search.strategy == "tpe":
        sampler = optuna.samplers.TPESampler(
            seed=search.seed, n_startup_trials=max(1, min(4, search.trials // 2))
        )
    else:
        sampler = optuna.samplers.RandomSampler(
            seed=search.seed
        )  # every trial is enqueued: see planned_trials
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        if search.pruning == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(direction=search.goal, sampler=sampler, pruner=pruner)
    if search.strategy != "tpe":
        for params in planned_trials(search):
            study.enqueue_trial(params)
    return study


def objective_value(search: SearchSpec, train_result, evaluation: dict[str, Any] | None) -> float:
    if search.metric == "eval_loss":
        value = train_result.eval_loss
    elif search.metric == "train_loss":
        value = train_result.train_loss
    else:
        tuned = (evaluation or {}).get("finetuned") or {}
        value = (
            tuned.get("accuracy")
            if search.metric == "accuracy"
            else (tuned.get("metrics") or {}).get(search.metric)
        )
    if value is None:
        raise JobError(
            f"the trial did not measure {search.metric}", field="search.metric", reason="SearchFailed"
        )
    return float(value)


def trial_folder(work: Path, number: int) -> Path:
    """Where trial ``number`` of a search in ``work`` keeps its results and ``trial.json``."""
    return work / TRIALS / f"trial-{number:03d}"


def needs_answers(search: SearchSpec) -> bool:
    """Whether the search metric needs the model's answers (the losses come from training alone)."""
    return search.metric not in ("eval_loss", "train_loss")


def _improves(search: SearchSpec, value: float, best: float) -> bool:
    return value > best if search.goal == "maximize" else value < best


class _Progress:
    """Trial counts and the best trial so far, passed to ``on_progress`` at each change.

    Trials run in threads (``parallelism``): the counts change under a lock, and the callback
    is called outside it, so that a slow callback does not hold up the other trials.
    """

    def __init__(self, search: SearchSpec, on_progress: Callable[[dict[str, Any]], None]) -> None:
        self.search = search
        self.on_progress = on_progress
        self.lock = threading.Lock()
        self.tally = {"total": search.trials, "done": 0, "running": 0, "pruned": 0, "failed": 0}
        self.best: dict[str, Any] = {}

    def started(self) -> None:
        with self.lock:
            self.tally["running"] += 1
            counts = self._counts()
        self.on_progress(counts)

    def finished(self, state: str, number: int, value: float | None) -> None:
        """Trial ``number`` ended in ``state`` (COMPLETE, PRUNED or FAIL) with ``value``."""
        with self.lock:
            self.tally["running"] -= 1
            self.tally["done"] += 1
            self.tally["pruned"] += state == "PRUNED"
            self.tally["failed"] += state == "FAIL"
            if (
                state == "COMPLETE"
                and value is not None
                and (not self.best or _improves(self.search, value, self.best["value"]))
            ):
                self.best.update(trial=number, value=value)
            counts = self._counts()
        self.on_progress(counts)

    def _counts(self) -> dict[str, Any]:
        return {**self.tally, "bestTrial": self.best.get("trial"), "bestValue": self.best.get("value")}


def _prune_on_eval_loss(trial: optuna.Trial) -> Callable[[dict[str, Any]], None]:
    """The training-event handler that reports each eval loss to the study.

    When the pruner gives up on the trial it raises ``TrialPruned`` out of training, which
    stops the trial's trainers.
    """
    import optuna

    def on_event(event: dict[str, Any]) -> None:
        if "eval_loss" in event and event.get("step") is not None:
            trial.report(float(event["eval_loss"]), int(event["step"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"eval loss {event['eval_loss']:.4g} at step {event['step']}")

    return on_event


def _without_base_comparison(spec: FineTuneJobSpec) -> FineTuneJobSpec:
    # The base model scores the same in every trial: evaluating it again for each is wasted work.
    return spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"compare_base": False})})


def _write_trial_record(folder: Path, record: dict[str, Any]) -> None:
    """Leave the trial's folder with its results and ``trial.json``, without its checkpoints."""
    # Checkpoints are the bulk of a trial's disk and a finished trial is never resumed.
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trial.json").write_text(json.dumps(record, indent=2))


@dataclass(frozen=True)
class TrialStages:
    """The job's own stages, bound to its model and data by the engine: what each trial runs.

    ``train(spec, work=..., on_event=...) -> TrainResult``, ``evaluate(spec, train_dir=...)``,
    ``say(stage, message)``.
    """

    train: Callable[..., Any]
    evaluate: Callable[..., dict[str, Any] | None]
    say: Callable[[str, str], None]


class _TrialRunner:
    """The study's objective: one trial trained and measured as a job of its own, in its folder.

    A trial that fails with a JobError is recorded (its message kept for the summary) and the
    study goes on; a pruned trial raises ``TrialPruned`` as Optuna expects.
    """

    def __init__(
        self,
        spec: FineTuneJobSpec,
        search: SearchSpec,
        *,
        work: Path,
        stages: TrialStages,
        progress: _Progress,
    ) -> None:
        self.spec, self.search, self.work, self.stages = spec, search, work, stages
        self.progress = progress
        self.errors: dict[int, str] = {}
        self.lock = threading.Lock()

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        params = _suggest(trial, self.search)
        tspec = trial_spec(self.spec, params)
        folder = trial_folder(self.work, trial.number)
        shutil.rmtree(folder, ignore_errors=True)
        self.stages.say("trial", f"{trial.number}: {json.dumps(params)}")
        self.progress.started()
        state, value = "FAIL", None
        try:
            value = self._measure(tspec, folder, on_event=_prune_on_eval_loss(trial))
            state = "COMPLETE"
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except JobError as exc:
            with self.lock:
                self.errors[trial.number] = str(exc)
            raise
        finally:
            self.progress.finished(state, trial.number, value)
            record = {"trial": trial.number, "params": params, "state": state, "value": value}
            _write_trial_record(folder, record)

    def _measure(
        self, tspec: FineTuneJobSpec, folder: Path, *, on_event: Callable[[dict[str, Any]], None]
    ) -> float:
        """Train the trial (and evaluate it, when the metric needs answers); its metric's value."""
        search = self.search
        result = self.stages.train(tspec, work=folder, on_event=on_event)
        evaluation = (
            self.stages.evaluate(_without_base_comparison(tspec), train_dir=folder)
            if needs_answers(search)
            else None
        )
        return objective_value(search, result, evaluation)

    def results(self, study: optuna.Study) -> list[dict[str, Any]]:
        """Every trial of ``study`` as ``summarize`` takes it, in trial order, with its error if it failed."""
        return [
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                **({"error": self.errors[t.number]} if t.number in self.errors else {}),
            }
            for t in sorted(study.trials, key=lambda t: t.number)
        ]


def run_search(
    spec: FineTuneJobSpec,
    *,
    work: Path,
    stages: TrialStages,
    on_progress: Callable[[dict[str, Any]], None] = lambda _counts: None,
) -> dict[str, Any]:
    """Run the study (each trial: ``stages``); copy the best trial's results into ``work``; return the summary."""
    search = search_of(spec)
    study = make_study(search)
    progress = _Progress(search, on_progress)
    run_trial = _TrialRunner(spec, search, work=work, stages=stages, progress=progress)
    study.optimize(run_trial, n_trials=search.trials, n_jobs=search.parallelism, catch=(JobError,))
    summary = summarize(spec, run_trial.results(study))
    adopt_best(trial_folder(work, summary["best_trial"]), work)
    stages.say("search", f"best trial {summary['best_trial']}: {search.metric} {summary['best_value']:.4g}")
    return summary


def adopt_best(best_dir: Path, work: Path) -> None:
    """The best trial's results become the job's (adapter/ or model/, logs, TensorBoard)."""
    for name in RESULT_FOLDERS:
        shutil.rmtree(work / name, ignore_errors=True)
        if (best_dir / name).is_dir():
            shutil.copytree(best_dir / name, work / name)


def summarize(spec: FineTuneJobSpec, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The leaderboard (best first) and the winner, from every trial's result; fails if none completed.

    A result is ``{"trial", "state" (COMPLETE, PRUNED, FAIL), "value", "params", "error"?}``:
    what ``trial.json`` holds, whichever engine ran the trial.
    """
    search = search_of(spec)
    complete = [r for r in results if r["state"] == "COMPLETE" and r["value"] is not None]
    if not complete:
        failed = sorted((r for r in results if r.get("error")), key=lambda r: r["trial"])
        detail = f": trial {failed[0]['trial']}: {failed[0]['error']}" if failed else ""
        raise JobError(
            f"every one of {len(results)} trials failed or was pruned{detail}", reason="SearchFailed"
        )
    maximize = search.goal == "maximize"
    best = (max if maximize else min)(
        complete, key=lambda r: (r["value"], -r["trial"] if maximize else r["trial"])
    )
    leaderboard = sorted(
        results,
        key=lambda r: (r["value"] is None, -(r["value"] or 0) if maximize else (r["value"] or 0), r["trial"]),
    )
    return {
        "strategy": search.strategy,
        "metric": search.metric,
        "direction": search.goal,
        "seed": search.seed,
        "best_trial": best["trial"],
        "best_value": best["value"],
        "best_params": best["params"],
        "trials": leaderboard,
        "counts": {
            state: sum(r["state"] == state for r in results) for state in ("COMPLETE", "PRUNED", "FAIL")
        },
        "trial_spec": trial_spec(spec, best["params"]).model_dump(
            mode="json", by_alias=True, exclude_none=True
        ),
    }


def plot_search(summary: dict[str, Any], out_path: Path) -> Path | None:
    """The metric against each searched setting, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in summary["trials"] if t["value"] is not None]
    names = sorted({name for t in done for name in t["params"]})
    if not done or not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        xs = [t["params"][name] for t in done]
        ys = [t["value"] for t in done]
        ax.scatter(xs, ys, color="#1f77b4")
        best = next(t for t in done if t["trial"] == summary["best_trial"])
        ax.scatter([best["params"][name]], [best["value"]], color="#d62728", label="best")
        if name in ("training.learningRate",) and min(xs) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(summary["metric"])
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
