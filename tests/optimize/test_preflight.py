"""Pre-flight: a job that cannot work fails in seconds, on a CPU, with every reason at once."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from slmops_operator.api import FineTuneJob, OptimizeJob
from slmops_pipelines.errors import InputError
from slmops_pipelines.kubeflow import tasks
from slmops_pipelines.local.optimize import run_optimize
from slmops_pipelines.stages.preflight import (
    PreflightError,
    builder_architectures,
    check_finetune_model,
    check_optimize,
    raise_findings,
)
from tests.conftest import TONE_DATA, finetune_manifest, job_run

CPU_INT4 = {"name": "cpu-int4", "provider": "CPUExecutionProvider", "precision": "int4"}


def optimize(name: str, source: dict, **spec) -> OptimizeJob:
    body = {"source": source, "targets": [CPU_INT4], **spec}
    return OptimizeJob.model_validate(
        {"apiVersion": "slmops.io/v1alpha1", "kind": "OptimizeJob", "metadata": {"name": name}, "spec": body}
    )


def no_job(name: str) -> str:
    raise AssertionError(f"no FineTuneJob expected, asked for {name}")


@pytest.fixture(scope="module")
def unexportable(tiny_model: Path, tmp_path_factory) -> Path:
    """The tiny model, claiming an architecture the model builder has no exporter for."""
    folder = tmp_path_factory.mktemp("gpt2ish") / "model"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    return folder


@pytest.fixture(scope="module")
def foreign_adapter(tmp_path_factory, unexportable: Path) -> Path:
    """An adapter folder whose config says it was trained on another base model."""
    folder = tmp_path_factory.mktemp("adapter") / "a"
    folder.mkdir()
    config = {"peft_type": "LORA", "base_model_name_or_path": str(unexportable), "r": 8}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_the_architectures_come_from_the_pinned_builder():
    supported = builder_architectures()
    assert supported is not None and {"LlamaForCausalLM", "Qwen2ForCausalLM", "Phi3ForCausalLM"} <= supported
    assert "GPT2LMHeadModel" not in supported


def test_a_model_the_builder_cannot_export_is_refused_with_the_list(unexportable):
    job = optimize("gpt2", {"model": {"uri": str(unexportable)}})
    [finding] = check_optimize(job.spec, locate_job=no_job)
    assert finding.field == "source.model.uri"
    assert "GPT2LMHeadModel is not an architecture" in finding.reason and "LlamaForCausalLM" in finding.reason


def test_every_problem_is_reported_at_once(unexportable, foreign_adapter, tiny_model):
    job = optimize(
        "many",
        {"model": {"uri": str(tiny_model)}, "adapters": [{"name": "other", "uri": str(foreign_adapter)}]},
        evaluation={
            "dataset": {
                "uri": str(TONE_DATA),
                "promptTemplate": "Tone of: {sentence}",
                "completionTemplate": "{tone}",
            }
        },
    )
    findings = check_optimize(job.spec, locate_job=no_job)
    assert [f.field for f in findings] == ["source.adapters[0].uri", "evaluation.dataset.promptTemplate"]
    assert f"trained on {unexportable}" in findings[0].reason
    with pytest.raises(PreflightError) as raised:
        raise_findings(findings)
    error = raised.value
    assert isinstance(error, InputError) and error.field == "source.adapters[0].uri"
    assert "also spec.evaluation.dataset.promptTemplate" in str(error) and "sentence" in str(error)


def test_an_adapters_own_evaluation_data_is_checked_too(tiny_model, tmp_path):
    adapters = []
    for name in ("tone", "sql"):  # adapters of the tiny model, as their configs say
        (tmp_path / name).mkdir()
        config = {"peft_type": "LORA", "base_model_name_or_path": str(tiny_model), "r": 8}
        (tmp_path / name / "adapter_config.json").write_text(json.dumps(config))
        adapters.append({"name": name, "uri": str(tmp_path / name)})
    wrong = {"uri": str(TONE_DATA), "promptTemplate": "{question}", "completionTemplate": "{query}"}
    adapters[1]["evaluation"] = {"dataset": wrong}
    job = optimize(
        "own-data",
        {"model": {"uri": str(tiny_model)}, "adapters": adapters},
        targets=[{**CPU_INT4, "mergeAdapter": False}],
    )
    [finding] = check_optimize(job.spec, locate_job=no_job)
    assert finding.field == "source.adapters[1].evaluation.dataset.promptTemplate"
    assert "question" in finding.reason


def test_an_unreadable_model_is_named(tmp_path):
    job = FineTuneJob.model_validate(finetune_manifest("gone", tmp_path / "nowhere"))
    [finding] = check_finetune_model(job.spec)
    assert finding.field == "model.uri" and "cannot read config.json" in finding.reason


def test_a_good_job_passes(tiny_model):
    assert check_finetune_model(FineTuneJob.model_validate(finetune_manifest("fine", tiny_model)).spec) == []
    assert check_optimize(optimize("fine", {"model": {"uri": str(tiny_model)}}).spec, locate_job=no_job) == []


def test_the_local_engine_fails_before_merging_anything(unexportable, tmp_path):
    job = optimize("early", {"model": {"uri": str(unexportable)}})
    started = time.monotonic()
    with pytest.raises(InputError) as raised:
        run_optimize(job_run(job, str(tmp_path / "out")), locate_job=no_job)
    assert raised.value.field == "source.model.uri"
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out" / "prepared").exists() and not (tmp_path / "out" / "manifest.json").exists()


def test_the_pipelines_inspect_step_runs_it_and_records_the_error(unexportable, tmp_path):
    from slmops_pipelines.stages.outputs import read_error

    job = optimize("kfp", {"model": {"uri": str(unexportable)}})
    out = str(tmp_path / "out")
    with pytest.raises(InputError):
        tasks.inspect_optimize(
            spec=job.spec.to_manifest(),
            job={"name": "kfp", "kind": "OptimizeJob", "apiVersion": "slmops.io/v1alpha1"},
            output_uri=out,
            source_uri="",
        )
    recorded = read_error(out)
    assert recorded is not None and recorded.field == "source.model.uri"


def test_the_finetune_inspect_step_reports_the_model_and_the_dataset_at_once(tmp_path):
    """The model is checked first, the dataset as it is fingerprinted: one error names both."""
    manifest = finetune_manifest(
        "both", tmp_path / "nowhere", dataset={"promptTemplate": "Tone of: {sentence}"}
    )
    job = FineTuneJob.model_validate(manifest)
    with pytest.raises(PreflightError) as raised:
        tasks.inspect_finetune(
            spec=job.spec.to_manifest(),
            job={"name": "both", "kind": "FineTuneJob", "apiVersion": "slmops.io/v1alpha1"},
            output_uri=str(tmp_path / "out"),
        )
    assert raised.value.field == "model.uri"
    assert "also spec.dataset.promptTemplate" in str(raised.value) and "sentence" in str(raised.value)
