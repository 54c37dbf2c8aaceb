"""Metrics by name: F1 built in, plug-ins from other packages through entry points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops_operator.api import FineTuneJob
from slmops_pipelines.errors import InputError
from slmops_pipelines.local import run_finetune
from slmops_pipelines.steps.metrics import available_metrics, check_metrics, compute_metrics
from slmops_pipelines.steps.metrics.builtin import macro_f1
from tests.conftest import finetune_manifest, job_run


def test_macro_f1():
    refs = ["happy", "sad", "sad", "angry"]
    assert macro_f1(["happy", "sad", "sad", "angry"], refs) == 1.0
    # happy: F1 1; sad: tp 1, fp 1 (the angry row), fn 1 (answered calm) -> 0.5; angry: 0.
    assert macro_f1(["Happy.", "sad", "calm", "sad"], refs) == pytest.approx((1 + 0.5 + 0) / 3)
    assert macro_f1([], []) == 0.0


@pytest.fixture
def plugin_package(tmp_path: Path, monkeypatch) -> str:
    """A package that registers a metric under slmops.metrics, importable from sys.path."""
    package = tmp_path / "tone_metrics"
    package.mkdir()
    (package / "__init__.py").write_text(
        "def answered_rate(predictions, references):\n"
        "    return sum(bool(p.strip()) for p in predictions) / max(1, len(predictions))\n"
    )
    info = tmp_path / "tone_metrics-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tone-metrics\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[slmops.metrics]\nanswered_rate = tone_metrics:answered_rate\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "answered_rate"


def test_a_plugin_is_found_by_name(plugin_package):
    assert plugin_package in available_metrics() and "f1" in available_metrics()
    assert compute_metrics([plugin_package, "f1"], ["happy", ""], ["happy", "sad"]) == {
        "answered_rate": 0.5,
        "f1": 0.5,
    }


def test_an_unknown_metric_names_the_field_and_the_known_ones():
    with pytest.raises(InputError) as raised:
        check_metrics(["f1", "bleurt"])
    assert raised.value.field == "evaluation.metrics"
    assert "'bleurt'" in raised.value.message and "f1" in raised.value.message


def test_a_job_reports_its_metrics(plugin_package, tiny_model, tmp_path):
    job = FineTuneJob.model_validate(
        finetune_manifest("metrics", tiny_model, evaluation={"metrics": ["f1", plugin_package]})
    )
    outcome = run_finetune(job_run(job, str(tmp_path / "out")))
    evaluation = json.loads((tmp_path / "out" / "metrics.json").read_text())["evaluation"]
    for model in ("finetuned", "base"):
        assert set(evaluation[model]["metrics"]) == {"f1", "answered_rate"}
        assert 0 <= evaluation[model]["metrics"]["f1"] <= 1
    assert outcome.metrics["evaluation"]["finetuned"]["metrics"]["answered_rate"] >= 0


def test_a_misspelled_metric_fails_before_training(tiny_model, tmp_path):
    job = FineTuneJob.model_validate(finetune_manifest("typo", tiny_model, evaluation={"metrics": ["f_1"]}))
    with pytest.raises(InputError, match="unknown metric 'f_1'"):
        run_finetune(job_run(job, str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()  # nothing was written
