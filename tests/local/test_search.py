"""Hyperparameter search: trials, pruning, failures, the best trial as the job's result."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from slmops_operator.api import FineTuneJob
from slmops_pipelines.errors import JobError
from slmops_pipelines.local import run_finetune
from slmops_pipelines.stages.search import TrialStages, run_search
from tests.conftest import finetune_manifest, job_run


def spec_with(search: dict, **overrides):
    return FineTuneJob.model_validate(
        finetune_manifest("s", Path("/models/tiny"), search=search, **overrides)
    ).spec


def fake_train(losses):
    """A stand-in for the train stage: eval losses per step from the trial's learning rate."""

    def train(tspec, *, work: Path, on_event):
        lr = tspec.training.learning_rate
        if lr in losses.get("fail", ()):
            raise JobError("out of memory", reason="TrainingFailed")
        curve = [losses["curve"](lr, step) for step in range(1, 6)]
        for step, loss in enumerate(curve, start=1):
            on_event({"event": "log", "step": step, "eval_loss": loss})
        (work / "adapter").mkdir(parents=True, exist_ok=True)
        (work / "adapter" / "lr.txt").write_text(str(lr))
        return SimpleNamespace(eval_loss=curve[-1], train_loss=curve[-1])

    return train


def search_of(spec, tmp_path, losses, progress: list | None = None) -> dict:
    stages = TrialStages(train=fake_train(losses), evaluate=lambda *_a, **_k: None, say=lambda *_: None)
    on_progress = progress.append if progress is not None else lambda _c: None
    return run_search(spec, work=tmp_path / "work", stages=stages, on_progress=on_progress)


GRID = {
    "strategy": "grid",
    "trials": 4,
    "space": {"training.learningRate": {"values": [0.001, 0.002, 0.003, 0.004]}},
}


def test_the_best_trial_wins_and_its_results_are_the_jobs(tmp_path):
    progress: list = []
    summary = search_of(
        spec_with({**GRID, "pruning": "none"}),
        tmp_path,
        {"curve": lambda lr, step: lr * 100 + 1 / step},
        progress,
    )
    assert progress[-1] == {
        "total": 4,
        "done": 4,
        "running": 0,
        "pruned": 0,
        "failed": 0,
        "bestTrial": summary["best_trial"],
        "bestValue": summary["best_value"],
    }
    assert summary["best_params"] == {"training.learningRate": 0.001}
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE"] * 4
    assert [t["value"] for t in summary["trials"]] == sorted(
        t["value"] for t in summary["trials"]
    )  # best first
    assert (tmp_path / "work" / "adapter" / "lr.txt").read_text() == "0.001"  # copied from the best trial
    for n in range(4):
        trial = json.loads((tmp_path / "work" / "trials" / f"trial-{n:03d}" / "trial.json").read_text())
        assert trial["trial"] == n and trial["state"] == "COMPLETE"


def test_median_pruning_stops_a_hopeless_trial(tmp_path):
    spec = spec_with({**GRID, "strategy": "random", "trials": 8, "seed": 3})
    summary = search_of(spec, tmp_path, {"curve": lambda lr, step: lr * 1000 + 1 / step})
    assert summary["counts"]["PRUNED"] >= 1
    pruned = [t for t in summary["trials"] if t["state"] == "PRUNED"]
    assert all(
        t["params"]["training.learningRate"] > summary["best_params"]["training.learningRate"] for t in pruned
    )


def test_a_failing_trial_does_not_fail_the_job_but_all_failing_does(tmp_path):
    spec = spec_with({**GRID, "pruning": "none"})
    summary = search_of(spec, tmp_path, {"curve": lambda lr, step: lr, "fail": (0.001,)})
    assert summary["counts"] == {"COMPLETE": 3, "PRUNED": 0, "FAIL": 1}
    failed = next(t for t in summary["trials"] if t["state"] == "FAIL")
    assert failed["error"] == "out of memory"
    with pytest.raises(JobError, match=r"every one of 4 trials failed.*out of memory"):
        search_of(
            spec, tmp_path / "again", {"curve": lambda lr, step: lr, "fail": (0.001, 0.002, 0.003, 0.004)}
        )


def test_a_seed_makes_a_search_repeatable(tmp_path):
    search = {
        "strategy": "random",
        "trials": 6,
        "parallelism": 2,
        "seed": 11,
        "pruning": "none",
        "space": {
            "training.learningRate": {"low": 1e-4, "high": 1e-2, "log": True},
            "lora.r": {"values": [4, 8, 16]},
        },
    }
    losses = {"curve": lambda lr, step: abs(lr - 2e-3)}
    first = search_of(spec_with(search), tmp_path / "a", losses)
    second = search_of(spec_with(search), tmp_path / "b", losses)

    def params(s):
        return sorted(json.dumps(t["params"], sort_keys=True) for t in s["trials"])

    assert params(first) == params(second) and first["best_params"] == second["best_params"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_random_search_on_a_tiny_model(tiny_model, tmp_path):
    """Four real trials, two at a time; the job's adapter, manifest and report are the best trial's."""
    job = FineTuneJob.model_validate(
        finetune_manifest(
            "searched",
            tiny_model,
            training={"maxSteps": 4, "evalSteps": 2, "saveSteps": 4},
            search={
                "strategy": "random",
                "trials": 4,
                "parallelism": 2,
                "seed": 7,
                "space": {"training.learningRate": {"low": 1e-5, "high": 5e-2, "log": True}},
            },
        )
    )
    out = tmp_path / "out"
    outcome = run_finetune(job_run(job, str(out)))
    search = outcome.metrics["search"]
    done = [t for t in search["trials"] if t["state"] == "COMPLETE"]
    assert len(search["trials"]) == 4 and done
    assert search["best_value"] == min(t["value"] for t in done)
    best = out / "trials" / f"trial-{search['best_trial']:03d}"
    assert sha256(out / "adapter" / "adapter_model.safetensors") == sha256(
        best / "adapter" / "adapter_model.safetensors"
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["search"]["bestTrial"] == search["best_trial"]
    paths = {entry["path"] for entry in manifest["files"]}
    assert {f"trials/trial-{n:03d}/trial.json" for n in range(4)} <= paths
    report = (out / "report.html").read_text()
    assert f"best trial {search['best_trial']}" in report and "metric against parameters" in report
    assert (out / "metrics.json").exists() and outcome.metrics["evaluation"]["finetuned"]["total"] == 8


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"space": {"training.learningRate": {"low": 1e-2, "high": 1e-4}}}, "empty or inverted range"),
        ({"space": {"training.learningRate": {"low": 1e-3, "high": 1e-3}}}, "empty or inverted range"),
        ({"space": {"training.temperature": {"values": [1]}}}, "unknown parameter 'training.temperature'"),
        (
            {"metric": "bleurt", "space": {"lora.r": {"values": [8]}}},
            "search.metric 'bleurt' is not measured",
        ),
        (
            {"trials": 2, "parallelism": 3, "space": {"lora.r": {"values": [8]}}},
            "parallelism (3) is more than trials (2)",
        ),
        ({"space": {"lora.r": {"values": [8.5]}}}, "lora.r: 8.5 is not an integer"),
        (
            {"strategy": "grid", "space": {"training.learningRate": {"low": 1e-4, "high": 1e-2}}},
            "a grid needs values",
        ),
    ],
)
def test_bad_searches_are_refused_with_the_reason(search, message):
    from slmops_operator.api.manifests import Document, ManifestError, parse_document

    body = finetune_manifest("bad", Path("/models/tiny"), search=search)
    with pytest.raises(ManifestError) as raised:
        parse_document(Document("job.yaml", 1, body))
    [problem] = raised.value.problems
    assert problem.path.startswith("spec") and message in problem.reason, problem
