"""OptimizeJob end to end on a tiny model: chained to a FineTuneJob, gates, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops_operator.api import FineTuneJob, OptimizeJob
from slmops_pipelines.errors import InputError
from slmops_pipelines.local import run_finetune
from slmops_pipelines.local.optimize import GateError, run_optimize
from tests.conftest import finetune_manifest, job_run


def optimize_job(name: str, source: dict, targets: list[dict], **evaluation) -> OptimizeJob:
    spec = {
        "source": source,
        "targets": targets,
        "evaluation": {"maxNewTokens": 4, "maxSamples": 6, **evaluation},
    }
    return OptimizeJob.model_validate(
        {"apiVersion": "slmops.io/v1alpha1", "kind": "OptimizeJob", "metadata": {"name": name}, "spec": spec}
    )


CPU_INT4 = {"name": "cpu-int4", "provider": "CPUExecutionProvider", "precision": "int4"}
CPU_INT8 = {"name": "cpu-int8", "provider": "CPUExecutionProvider", "precision": "int8"}
CUDA_FP16 = {"name": "cuda-fp16", "provider": "CUDAExecutionProvider", "precision": "fp16"}
CPU_INT8_STATIC = {
    **CPU_INT8,
    "name": "cpu-int8-static",
    "quantization": {"int8Mode": "static", "calibrationSamples": 8},
}


@pytest.fixture(scope="module")
def runs(tiny_model: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    job = FineTuneJob.model_validate(finetune_manifest("ft", tiny_model))
    run_finetune(job_run(job, str(root / "ft")))
    return root


def run(job: OptimizeJob, runs: Path):
    return run_optimize(job_run(job, str(runs / job.name)), locate_job=lambda n: str(runs / n))


@pytest.fixture(scope="module")
def optimized(runs: Path):
    job = optimize_job(
        "opt",
        {"fineTuneJobRef": {"name": "ft"}},
        [CPU_INT4, CPU_INT8, CPU_INT8_STATIC, CUDA_FP16],
        metrics=["accuracy", "perplexity", "latency", "size", "rouge", "bleu"],
        gates={"maxSizeMb": 100},
    )
    return run(job, runs), runs / "opt"


def test_every_target_is_built_evaluated_and_compared(optimized):
    outcome, out = optimized
    doc = json.loads((out / "metrics.json").read_text())
    from slmops_pipelines.steps.cpus import usable_cpus

    reference = doc["reference"]["finetuned_pytorch"]
    assert reference["latency"]["decode_tokens_per_s_p50"] > 0 and reference["total"] == 6
    assert doc["reference"]["base_pytorch"]["accuracy"] is not None  # the base model, for deltas
    for name in ("cpu-int4", "cpu-int8", "cpu-int8-static"):
        metrics = doc["targets"][name]["metrics"]
        assert metrics["skipped"] is None
        assert metrics["total"] == 6 and metrics["perplexity"] > 1 and metrics["rouge_l"] is not None
        assert metrics["latency"]["prefill_ms_p50"] > 0 and metrics["size_mb"] > 0
        assert metrics["latency"]["threads"] == usable_cpus()  # sized here, and said
        assert {"accuracy", "perplexity", "decode_speedup"} <= doc["targets"][name]["vsFinetuned"].keys()
        assert "accuracy" in doc["targets"][name]["vsBase"]
    skipped = doc["targets"]["cuda-fp16"]["metrics"]
    assert (
        skipped["skipped"] == "provider not available"
        and skipped["accuracy"] is None
        and skipped["size_mb"] > 0
    )
    assert all(g["passed"] for g in doc["gates"] if g["target"] != "cuda-fp16")
    manifest = json.loads((out / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert {
        "targets/cpu-int4/model.onnx",
        "targets/cpu-int8/model.onnx",
        "report.html",
        "metrics.json",
    } <= paths
    assert not any(p.startswith("merged/") for p in paths)
    assert manifest["inputs"]["source"]["fineTuneJob"] == "ft"
    assert '<rect class="bar"' in (out / "report.html").read_text()
    assert outcome.artifacts["cpu-int4"].endswith("targets/cpu-int4")


def test_onnx_fp32_matches_pytorch(runs):
    job = optimize_job(
        "fp32",
        {"fineTuneJobRef": {"name": "ft"}},
        [{**CPU_INT4, "name": "fp32", "precision": "fp32"}],
        metrics=["perplexity"],
    )
    doc = run(job, runs).metrics
    ours = doc["targets"]["fp32"]["metrics"]["perplexity"]
    theirs = doc["reference"]["finetuned_pytorch"]["perplexity"]
    assert ours == pytest.approx(theirs, rel=1e-3)


def test_a_violated_gate_fails_naming_target_and_metric(runs):
    job = optimize_job(
        "gated",
        {"fineTuneJobRef": {"name": "ft"}},
        [CPU_INT4],
        metrics=["size"],
        # A size no model has: deterministic, where a speed-up gate depends on the machine's load
        # (a tiny model's int4/PyTorch ratio went past 1000x on a busy machine).
        gates={"maxSizeMb": 0.001},
    )
    with pytest.raises(GateError) as info:
        run(job, runs)
    assert "target 'cpu-int4': sizeMb" in str(info.value) and "VIOLATED" in str(info.value)
    assert (runs / "gated" / "metrics.json").exists() and not (runs / "gated" / "manifest.json").exists()


def test_source_job_that_has_not_succeeded(runs):
    job = optimize_job("orphan", {"fineTuneJobRef": {"name": "never-ran"}}, [CPU_INT4])
    with pytest.raises(InputError) as info:
        run(job, runs)
    assert (
        info.value.field == "source.fineTuneJobRef" and "'never-ran' has not succeeded" in info.value.message
    )


def test_adapter_of_another_base_model(runs, tmp_path):
    from tests.conftest import tone_texts
    from tests.tiny import build_tiny_llama

    other = build_tiny_llama(tmp_path / "other", tone_texts(), hidden=32)
    job = optimize_job(
        "mismatch",
        {"model": {"uri": str(other)}, "adapter": {"name": "a", "uri": str(runs / "ft" / "adapter")}},
        [CPU_INT4],
    )
    with pytest.raises(InputError) as info:
        run(job, runs)
    # Pre-flight reads the adapter's config before anything is merged.
    assert info.value.field == "source.adapter.uri" and "does not fit the base model" in info.value.message


def test_evaluation_dataset_without_the_template_fields(runs, tone_data):
    dataset = {
        "uri": str(tone_data),
        "evalSplit": "eval",
        "promptTemplate": "{text}",
        "completionTemplate": "{tone}",
    }
    job = optimize_job("badeval", {"fineTuneJobRef": {"name": "ft"}}, [CPU_INT4], dataset=dataset)
    with pytest.raises(InputError) as info:
        run(job, runs)
    assert (
        info.value.field == "evaluation.dataset.promptTemplate"
        and "field 'text' is not in the data" in info.value.message
    )


def test_truncated_model_file(runs, tiny_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    job = optimize_job("truncated", {"model": {"uri": str(broken)}}, [CPU_INT4])
    with pytest.raises(InputError) as info:
        run(job, runs)
    assert info.value.field == "source.model.uri" and "corrupt or truncated" in info.value.message


def test_separate_adapters_end_to_end(runs, tiny_model, tmp_path):
    from tests.optimize.test_adapters import make_adapter

    second = make_adapter(tiny_model, tmp_path / "second", 5, ["q_proj", "v_proj"])
    source = {
        "model": {"uri": str(tiny_model)},
        "adapters": [
            {"name": "tone", "uri": str(runs / "ft" / "adapter")},
            {"name": "second", "uri": str(second)},
        ],
    }
    dataset = finetune_manifest("x", tiny_model)["spec"]["dataset"]
    job = optimize_job(
        "multi",
        source,
        [{**CPU_INT4, "mergeAdapter": False}],
        metrics=["accuracy", "latency", "size"],
        dataset=dataset,
    )
    doc = run(job, runs).metrics
    target = doc["targets"]["cpu-int4"]
    assert target["adapters"] == ["second", "tone"] and target["metrics"]["accuracy"] is not None
    folder = runs / "multi" / "targets" / "cpu-int4"
    assert (folder / "tone.onnx_adapter").exists() and (folder / "second.onnx_adapter").exists()


def test_several_adapters_cannot_be_merged():
    from pydantic import ValidationError

    source = {"model": {"uri": "/m"}, "adapters": [{"name": "a", "uri": "/a"}, {"name": "b", "uri": "/b"}]}
    with pytest.raises(ValidationError) as info:
        optimize_job("x", source, [CPU_INT4])
    assert "target 'cpu-int4': several adapters cannot be merged" in str(info.value)


def test_static_int8_needs_calibration_data_before_anything_is_built(runs, tiny_model):
    job = optimize_job("nocal", {"model": {"uri": str(tiny_model)}}, [CPU_INT8_STATIC])
    with pytest.raises(InputError) as info:
        run(job, runs)
    assert "int8Mode static needs calibration rows" in info.value.message
    assert not (runs / "nocal" / "targets").exists()
