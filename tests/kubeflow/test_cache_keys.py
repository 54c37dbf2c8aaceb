"""Each cached step's view of the spec: editing what a step does not read reuses its outputs."""

from __future__ import annotations

from pathlib import Path

from slmops_operator.api import FineTuneJob, OptimizeJob
from slmops_pipelines.kubeflow.cache_keys import finetune_views, optimize_source_view, optimize_target_views
from slmops_pipelines.specs import FineTuneJobSpec, OptimizeJobSpec
from tests.conftest import finetune_manifest

MODEL = Path("/models/tiny")


def views(**overrides) -> dict:
    return finetune_views(FineTuneJob.model_validate(finetune_manifest("v", MODEL, **overrides)).spec)


def test_views_are_valid_specs():
    for view in views(output={"mergedModel": True, "credentialsSecret": "s3"}).values():
        FineTuneJobSpec.model_validate(view)


def test_an_evaluation_change_keeps_data_and_training():
    base, changed = views(), views(evaluation={"maxNewTokens": 9})
    assert changed["data"] == base["data"] and changed["train"] == base["train"]
    assert changed["evaluate"] != base["evaluate"]


def test_a_training_change_keeps_the_data():
    base, changed = views(), views(training={"learningRate": 5e-4})
    assert changed["data"] == base["data"] and changed["train"] != base["train"]


def test_the_output_location_is_in_no_view():
    base, moved = views(), views(output={"uri": "s3://elsewhere/x"})
    assert base == moved


def test_merging_reaches_evaluation_and_secrets_reach_no_step():
    """Secrets reach pods (and multi-node workers) as mounts, not through the spec: renaming one reuses the cache."""
    v = views(output={"credentialsSecret": "team-s3", "mergedModel": True})
    assert "output" not in v["train"]
    assert v["evaluate"]["output"] == {"mergedModel": True}
    assert views(output={"credentialsSecret": "other"})["train"] == views()["train"]


def optimize_spec(*targets: dict, gates: dict | None = None) -> OptimizeJobSpec:
    spec = {
        "source": {"model": {"uri": str(MODEL)}},
        "targets": list(targets),
        "evaluation": {"gates": gates or {}},
    }
    return OptimizeJob.model_validate(
        {"apiVersion": "slmops.io/v1alpha1", "kind": "OptimizeJob", "metadata": {"name": "o"}, "spec": spec}
    ).spec


INT4 = {"name": "cpu-int4", "provider": "CPUExecutionProvider", "precision": "int4"}
INT8 = {"name": "cpu-int8", "provider": "CPUExecutionProvider", "precision": "int8"}
STATIC = {**INT8, "name": "static", "quantization": {"int8Mode": "static", "calibrationSamples": 16}}


def test_adding_a_target_rebuilds_no_other():
    one, two = optimize_target_views(optimize_spec(INT4)), optimize_target_views(optimize_spec(INT4, INT8))
    assert two[0] == one[0] and len(two) == 2
    for view in two:
        assert len(OptimizeJobSpec.model_validate(view).targets) == 1


def test_the_source_step_ignores_targets_and_gates_unless_it_calibrates():
    plain = optimize_source_view(optimize_spec(INT4))
    assert plain == optimize_source_view(optimize_spec(INT4, INT8, gates={"maxSizeMb": 10}))
    calibrating = optimize_source_view(optimize_spec(INT4, STATIC))
    assert [t["name"] for t in calibrating["targets"]] == ["static"]
    OptimizeJobSpec.model_validate(calibrating)
