"""``--engine kfp-local``: the compiled pipelines, run by kfp.local, produce what the local engine does.

Each component runs as its own process (``SubprocessRunner(use_venv=False)``), artifacts pass
through kfp.local's pipeline root, and its cache decides what is rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from slmops_operator.api import FineTuneJob, OptimizeJob
from slmops_pipelines import jobs
from slmops_pipelines.errors import InputError
from slmops_pipelines.local import run_finetune
from slmops_pipelines.local.optimize import run_optimize
from slmops_pipelines.models import cache_root
from tests.conftest import finetune_manifest, job_run


def run_finetune_kfp_local(*, name: str, spec, output_uri: str):
    run = jobs.job_kind("FineTuneJob").new_run(name, spec, default_output=output_uri)
    return jobs.run_job("FineTuneJob", run, engine="kfp-local")


def run_optimize_kfp_local(*, name: str, spec, output_uri: str, source_uri: str):
    run = jobs.job_kind("OptimizeJob").new_run(name, spec, default_output=output_uri, source_uri=source_uri)
    return jobs.run_job("OptimizeJob", run, engine="kfp-local")


CPU_INT4 = {"name": "cpu-int4", "provider": "CPUExecutionProvider", "precision": "int4"}
CPU_INT8 = {"name": "cpu-int8", "provider": "CPUExecutionProvider", "precision": "int8"}


def job(name: str, model: Path, **overrides) -> FineTuneJob:
    return FineTuneJob.model_validate(finetune_manifest(name, model, **overrides))


def optimize_job(name: str, *targets: dict[str, str]) -> OptimizeJob:
    spec = {
        "source": {"fineTuneJobRef": {"name": "tiny-kfp"}},
        "targets": list(targets or (CPU_INT4, CPU_INT8)),
        "evaluation": {"maxNewTokens": 4, "maxSamples": 4, "metrics": ["accuracy", "latency", "size"]},
    }
    return OptimizeJob.model_validate(
        {"apiVersion": "slmops.io/v1alpha1", "kind": "OptimizeJob", "metadata": {"name": name}, "spec": spec}
    )


def manifest_paths(out: Path) -> set[str]:
    """Files listed by the manifest; TensorBoard names carry a time and a pid, so only their count."""
    paths = {entry["path"] for entry in json.loads((out / "manifest.json").read_text())["files"]}
    return {re.sub(r"events\.out\.tfevents\..*\.(\d+)$", r"events.\1", p) for p in paths}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def latest_task_dir(pipeline: str, task: str) -> Path:
    runs = sorted((cache_root() / "kfp-local" / "outputs").glob(f"{pipeline}-*"))
    return runs[-1] / task


@pytest.fixture(scope="module")
def kfp_finished(tiny_model: Path, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("kfp") / "tiny-kfp"
    j = job("tiny-kfp", tiny_model, output={"mergedModel": True})
    return out, run_finetune_kfp_local(name=j.name, spec=j.spec, output_uri=str(out))


def test_finetune_pipeline_produces_the_local_engines_artifacts(kfp_finished, tiny_model, tmp_path):
    out, outcome = kfp_finished
    local_out = tmp_path / "tiny-local"
    j = job("tiny-kfp", tiny_model, output={"mergedModel": True})
    run_finetune(job_run(j, str(local_out)))
    assert manifest_paths(out) == manifest_paths(local_out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 4
    assert metrics["evaluation"]["finetuned"]["total"] == 8
    # Each task, in its own process, recorded its usage; the publish step summed them.
    assert {"data", "train", "evaluate"} <= set(metrics["usage"]["stages"])
    assert metrics["usage"]["stages"]["train"]["cpu_s"] > 0 and metrics["usage"]["gpu_seconds"] == 0
    assert outcome.artifacts["adapter"] == str(out / "adapter")
    assert not (out / "checkpoints").exists() and not (out / ".slmops" / "error.json").exists()


def test_dashboard_artifacts_metrics_html_and_links(kfp_finished):
    out, _ = kfp_finished
    publish = latest_task_dir("slmops-finetune", "publish-finetune")
    assert "<html" in (publish / "report").read_text().lower()
    links = (publish / "artifacts").read_text()
    assert f"`{out / 'adapter'}`" in links and f"`{out / 'manifest.json'}`" in links
    executor_output = json.loads((publish / "executor_output.json").read_text())
    summary = executor_output["artifacts"]["summary"]["artifacts"][0]["metadata"]
    assert {"train_loss", "eval_loss", "accuracy", "wall_time_s"} <= summary.keys()
    train_output = json.loads(
        (latest_task_dir("slmops-finetune", "train") / "executor_output.json").read_text()
    )
    train_metrics = train_output["artifacts"]["train_metrics"]["artifacts"][0]["metadata"]
    assert train_metrics["steps"] == 4 and train_metrics["tokens_per_second"] > 0


def test_unchanged_inputs_are_not_recomputed(kfp_finished, tiny_model, caplog):
    out, _ = kfp_finished
    adapter = sha256(out / "adapter" / "adapter_model.safetensors")
    shutil.rmtree(out)  # the output is gone; the pipeline's cached steps are not
    j = job("tiny-kfp", tiny_model, output={"mergedModel": True})
    with caplog.at_level(logging.INFO):
        run_finetune_kfp_local(name=j.name, spec=j.spec, output_uri=str(out))
    hits = set(re.findall(r"Task (\S+) cache hit", caplog.text))
    assert hits == {"prepare-data", "train", "evaluate-finetune"}  # inspect and publish always run
    assert sha256(out / "adapter" / "adapter_model.safetensors") == adapter
    assert (out / "manifest.json").exists()


def test_a_changed_spec_trains_again(kfp_finished, tiny_model, tmp_path, caplog):
    j = job("tiny-kfp-2", tiny_model, training={"learningRate": 2e-3})
    with caplog.at_level(logging.INFO):
        run_finetune_kfp_local(name=j.name, spec=j.spec, output_uri=str(tmp_path / "out"))
    assert "train cache hit" not in caplog.text


def test_a_bad_dataset_fails_with_the_field(tiny_model, tmp_path):
    j = job("tiny-bad", tiny_model, dataset={"promptTemplate": "Tone of: {sentence}"})
    with pytest.raises(InputError) as raised:
        run_finetune_kfp_local(name=j.name, spec=j.spec, output_uri=str(tmp_path / "bad"))
    assert raised.value.field == "dataset.promptTemplate" and "sentence" in raised.value.message


def test_optimize_pipeline_builds_targets_in_parallel_for(kfp_finished, tmp_path):
    out, _ = kfp_finished
    opt = optimize_job("opt-kfp")
    outcome = run_optimize_kfp_local(
        name=opt.name, spec=opt.spec, output_uri=str(tmp_path / "opt-kfp"), source_uri=str(out)
    )
    doc = outcome.metrics
    assert list(doc["targets"]) == ["cpu-int4", "cpu-int8"]  # spec order, whatever order they finished in
    for target in doc["targets"].values():
        assert target["metrics"]["accuracy"] is not None and target["metrics"]["size_mb"] > 0
    assert doc["usage"]["stages"]["target"]["runs"] == 2 and "prepare" in doc["usage"]["stages"]
    local = run_optimize(job_run(opt, str(tmp_path / "opt-local")), locate_job=lambda _n: str(out))
    assert manifest_paths(tmp_path / "opt-kfp") == manifest_paths(tmp_path / "opt-local")
    assert set(local.artifacts) == set(outcome.artifacts)


def test_cuda_targets_run_in_a_loop_of_their_own_and_publish_with_the_others(kfp_finished, tmp_path):
    """Two image families, two ParallelFors, one publish: the CUDA target is built (skipped here: no GPU)."""
    out, _ = kfp_finished
    cuda = {"name": "cuda-fp16", "provider": "CUDAExecutionProvider", "precision": "fp16"}
    opt = optimize_job("opt-cuda", cuda, CPU_INT4)
    outcome = run_optimize_kfp_local(
        name=opt.name, spec=opt.spec, output_uri=str(tmp_path / "opt-cuda"), source_uri=str(out)
    )
    doc = outcome.metrics
    assert list(doc["targets"]) == ["cuda-fp16", "cpu-int4"]  # spec order across both loops
    assert doc["targets"]["cuda-fp16"]["metrics"]["skipped"] == "provider not available"
    assert doc["targets"]["cpu-int4"]["metrics"]["accuracy"] is not None
    assert (tmp_path / "opt-cuda" / "targets" / "cuda-fp16").is_dir()


def test_cli_engine_kfp_local_names_the_field(tiny_model, tmp_path):
    import yaml
    from click.testing import CliRunner

    from slmops_operator.cli.main import cli

    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            finetune_manifest("cli-bad", tiny_model, dataset={"promptTemplate": "Tone of: {sentence}"})
        )
    )
    result = CliRunner().invoke(
        cli, ["run", str(path), "--engine", "kfp-local", "--runs-dir", str(tmp_path / "runs")]
    )
    assert result.exit_code == 2, result.output
    assert "FineTuneJob cli-bad: spec.dataset.promptTemplate" in " ".join(result.output.split())


def test_an_evaluation_change_reuses_data_and_training(kfp_finished, tiny_model, caplog):
    out, _ = kfp_finished
    shutil.rmtree(out)  # the job's new spec may take over its location once the old output is gone
    j = job("tiny-kfp", tiny_model, output={"mergedModel": True}, evaluation={"maxSamples": 4})
    with caplog.at_level(logging.INFO):
        outcome = run_finetune_kfp_local(name=j.name, spec=j.spec, output_uri=str(out))
    hits = set(re.findall(r"Task (\S+) cache hit", caplog.text))
    assert hits == {"prepare-data", "train"}
    assert outcome.metrics["evaluation"]["finetuned"]["total"] == 4


def test_a_search_fans_trials_out_and_publishes_the_best(tiny_model, tmp_path):
    j = job(
        "tiny-search",
        tiny_model,
        training={"maxSteps": 2, "evalSteps": 2, "saveSteps": 2},
        search={
            "strategy": "random",
            "trials": 3,
            "parallelism": 2,
            "seed": 5,
            "space": {"training.learningRate": {"low": 1e-5, "high": 5e-2, "log": True}},
        },
    )
    out = tmp_path / "out"
    outcome = run_finetune_kfp_local(name=j.name, spec=j.spec, output_uri=str(out))
    search = outcome.metrics["search"]
    assert [t["trial"] for t in sorted(search["trials"], key=lambda t: t["trial"])] == [0, 1, 2]
    done = [t for t in search["trials"] if t["state"] == "COMPLETE"]
    assert search["best_value"] == min(t["value"] for t in done)
    best = out / "trials" / f"trial-{search['best_trial']:03d}"
    assert sha256(out / "adapter" / "adapter_model.safetensors") == sha256(
        best / "adapter" / "adapter_model.safetensors"
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["search"]["bestTrial"] == search["best_trial"]
    assert "best trial" in (out / "report.html").read_text()
