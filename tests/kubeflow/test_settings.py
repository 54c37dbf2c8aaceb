"""The job's main settings are typed, described pipeline parameters; the spec still travels and runs."""

from __future__ import annotations

import inspect

import pytest
import yaml

from slmops_operator.api import FineTuneJob, OptimizeJob
from slmops_pipelines import jobs
from slmops_pipelines.errors import InputError
from slmops_pipelines.kubeflow import settings
from slmops_pipelines.kubeflow.pipelines import finetune_pipeline, finetune_search_pipeline, optimize_pipeline
from tests.conftest import finetune_manifest

OPTIMIZE = {
    "apiVersion": "slmops.io/v1alpha1",
    "kind": "OptimizeJob",
    "metadata": {"name": "opt"},
    "spec": {
        "source": {"model": {"uri": "s3://models/base"}},
        "targets": [
            {"name": "cpu-int4", "provider": "CPUExecutionProvider", "precision": "int4"},
            {"name": "gpu", "provider": "CUDAExecutionProvider", "precision": "fp16"},
        ],
    },
}


def finetune_job():
    manifest = finetune_manifest("ft", "/models/tiny")
    manifest["spec"]["training"] = {"learningRate": 0.0002, "maxSteps": 30}
    return FineTuneJob.model_validate(manifest)


@pytest.mark.parametrize(
    ("factory", "shown"),
    [
        (finetune_pipeline, settings.FINETUNE),
        (finetune_search_pipeline, settings.FINETUNE),
        (optimize_pipeline, settings.OPTIMIZE),
    ],
)
def test_every_pipeline_takes_its_settings_typed_and_described(factory, shown, tmp_path):
    from slmops_pipelines.kubeflow.pipelines import compile_pipeline

    pipeline = factory()
    parameters = inspect.signature(pipeline.pipeline_func).parameters
    for setting in shown:
        assert parameters[setting.name].annotation is type(setting.empty)
        assert parameters[setting.name].default == setting.empty
    ir = next(yaml.safe_load_all(compile_pipeline(pipeline, tmp_path / "p.yaml").read_text()))
    root = ir["root"]["inputDefinitions"]["parameters"]
    for setting in shown:
        assert setting.description in root[setting.name]["description"]
    assert "what runs" in root["spec"]["description"]


def test_the_combined_pipeline_shows_both_jobs_settings_prefixed(tmp_path):
    from slmops_pipelines.kubeflow.pipelines import compile_pipeline, finetune_optimize_pipeline

    ir = next(
        yaml.safe_load_all(compile_pipeline(finetune_optimize_pipeline(), tmp_path / "p.yaml").read_text())
    )
    root = ir["root"]["inputDefinitions"]["parameters"]
    for prefix, shown in (("finetune_", settings.FINETUNE), ("optimize_", settings.OPTIMIZE)):
        for setting in shown:
            assert setting.description in root[prefix + setting.name]["description"]
        assert "what runs" in root[prefix + "spec"]["description"]
    assert root["finetune_learning_rate"]["parameterType"] == "NUMBER_DOUBLE"
    assert root["finetune_max_steps"]["parameterType"] == "NUMBER_INTEGER"


@pytest.mark.parametrize(
    ("component", "shown", "more"),
    [("inspect_finetune", settings.FINETUNE, ()), ("inspect_optimize", settings.OPTIMIZE, ("source_uri",))],
)
def test_the_inspect_components_spell_the_settings_the_table_declares(component, shown, more):
    """Their source ships to the pod, so it spells the parameters; they must be the table's."""
    from slmops_pipelines.kubeflow import components

    parameters = inspect.signature(getattr(components, component)).parameters
    expected = [p.name for p in settings.JOB_PARAMETERS] + list(more) + [s.name for s in shown]
    assert list(parameters) == expected
    for setting in shown:
        assert parameters[setting.name].annotation is type(setting.empty)
        assert parameters[setting.name].default == setting.empty
        assert setting.description in getattr(components, component).__doc__


def test_the_run_arguments_fill_the_settings_from_the_spec():
    job = finetune_job()
    arguments = jobs.run_arguments("FineTuneJob", job.spec, job={"name": "ft"}, output_uri="s3://out/ft")
    assert arguments["model"] == "/models/tiny" and arguments["learning_rate"] == 0.0002
    assert arguments["max_steps"] == 30 and arguments["method"] == "lora"
    assert arguments["spec"]["training"]["learningRate"] == 0.0002  # the spec still travels whole
    optimize = OptimizeJob.model_validate(OPTIMIZE)
    arguments = jobs.run_arguments("OptimizeJob", optimize.spec, job={"name": "opt"}, output_uri="s3://o/p")
    assert arguments["model"] == "s3://models/base"
    assert arguments["targets"] == "cpu-int4=CPU/int4, gpu=CUDA/fp16"


def test_a_setting_changed_in_the_dashboard_is_refused_naming_the_spec_field():
    job = finetune_job()
    settings.check_settings(settings.FINETUNE, job.spec, {"learning_rate": 0.0, "model": ""})  # empty: as is
    settings.check_settings(settings.FINETUNE, job.spec, settings.settings_of(settings.FINETUNE, job.spec))
    with pytest.raises(
        InputError, match=r"learning_rate \(0\.01\) differs from spec\.training\.learningRate"
    ) as err:
        settings.check_settings(settings.FINETUNE, job.spec, {"learning_rate": 0.01})
    assert err.value.field == "training.learningRate"


def test_the_inspect_step_checks_the_settings_before_it_claims_anything(tmp_path):
    from slmops_pipelines.kubeflow import tasks

    job = finetune_job()
    context = {"kind": "FineTuneJob", "apiVersion": "slmops.io/v1alpha1", "name": "ft"}
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        tasks.inspect_finetune(spec=job.spec.to_manifest(), job=context, output_uri=str(out), method="full")
    assert err.value.field == "method"
    assert not (out / ".slmops" / "job.json").exists()
