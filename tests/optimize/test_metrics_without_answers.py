"""An OptimizeJob of a FineTuneJob trained on a textTemplate: no answers, so no accuracy (and no traceback).

Validation refuses accuracy with an ``evaluation.dataset`` that has a textTemplate; the
dataset of a ``fineTuneJobRef`` is known only when the job runs, so the stage decides there.
"""

from __future__ import annotations

import pytest

from slmops_pipelines.errors import InputError
from slmops_pipelines.specs import DatasetSpec, OptimizeJobSpec
from slmops_pipelines.stages.optimize import wanted_metrics

TARGETS = [{"name": "cpu", "provider": "CPUExecutionProvider", "precision": "int4"}]


def source(**dataset) -> DatasetSpec:
    """The evaluation data the source stage resolved (a FineTuneJob's dataset, here)."""
    return DatasetSpec.model_validate({"uri": "/data/d", **dataset})


def spec(**evaluation) -> OptimizeJobSpec:
    return OptimizeJobSpec.model_validate(
        {"source": {"fineTuneJobRef": {"name": "ft"}}, "targets": TARGETS, "evaluation": evaluation}
    )


def test_the_default_metrics_leave_answer_metrics_out():
    assert wanted_metrics(spec(), source(textTemplate="{text}")) == {"perplexity", "latency", "size"}


def test_accuracy_asked_for_by_name_fails_naming_the_field():
    with pytest.raises(InputError, match="no answer") as failed:
        wanted_metrics(spec(metrics=["accuracy", "latency"]), source(textTemplate="{text}"))
    assert failed.value.field == "evaluation.metrics"


def test_data_with_answers_keeps_every_metric():
    answered = source(promptTemplate="{q}", completionTemplate="{a}")
    assert wanted_metrics(spec(), answered) == {"perplexity", "accuracy", "latency", "size"}
