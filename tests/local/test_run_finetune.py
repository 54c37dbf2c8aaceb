"""The local engine end to end: outputs, manifest, idempotence, ownership, S3, failures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from slmops_operator.api import FineTuneJob
from slmops_pipelines.errors import InputError, StorageError
from slmops_pipelines.local import run_finetune
from tests.conftest import finetune_manifest, job_run


def job(name: str, model: Path, **overrides) -> FineTuneJob:
    return FineTuneJob.model_validate(finetune_manifest(name, model, **overrides))


def run(j: FineTuneJob, output: str):
    return run_finetune(job_run(j, output))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tiny_model: Path, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    outcome = run(job("tiny", tiny_model, output={"mergedModel": True}), str(out))
    return out, outcome


def test_output_is_complete_and_described_by_the_manifest(finished):
    out, outcome = finished
    for rel in (
        "adapter/adapter_model.safetensors",
        "merged/config.json",
        "metrics.json",
        "report.html",
        "loss_curve.png",
        "data/stats.json",
    ):
        assert (out / rel).is_file(), rel
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (out / "checkpoints").exists()  # resume state is dropped once the job is done
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {entry["path"]: entry for entry in manifest["files"]}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    on_disk = {rel for rel in on_disk if not rel.startswith(".slmops/")}  # the job's own records
    assert set(listed) == on_disk
    for rel, entry in listed.items():
        assert entry["sha256"] == sha256(out / rel) and entry["size"] == (out / rel).stat().st_size
    assert manifest["job"]["name"] == "tiny" and manifest["spec"]["method"] == "lora"
    assert manifest["inputs"]["dataset"]["fingerprint"].startswith("sha256:")
    assert {"torch", "transformers", "peft"} <= manifest["libraries"].keys()
    # The manifest is written last.
    assert (out / "manifest.json").stat().st_mtime_ns >= max((out / rel).stat().st_mtime_ns for rel in listed)
    assert outcome.artifacts["adapter"] == str(out / "adapter")


def test_metrics_and_report(finished):
    out, _ = finished
    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["train"]
    for key in ("train_loss", "eval_loss", "tokens_per_second", "seconds_per_step", "peak_memory_mb"):
        assert isinstance(train[key], float), key
    evaluation = metrics["evaluation"]
    assert evaluation["finetuned"]["total"] == 8 and evaluation["base"]["total"] == 8
    assert metrics["data"]["train"]["rows"] == 64
    html = (out / "report.html").read_text()
    assert 'data-series="train loss"' in html and "accuracy, fine-tuned" in html
    # What it cost, per stage: no GPU here, so no GPU-seconds; CPU time includes the trainers'.
    usage = metrics["usage"]
    assert set(usage["stages"]) == {"data", "train", "evaluate"}
    assert usage["gpu_seconds"] == 0 and all(s["gpus"] == 0 for s in usage["stages"].values())
    assert usage["stages"]["train"]["cpu_s"] >= 0.5 * metrics["train"]["train_runtime_s"]
    assert usage["wall_seconds"] == pytest.approx(sum(s["wall_s"] for s in usage["stages"].values()), abs=0.5)
    assert 'id="usage"' in html and "GPU-seconds" in html


def test_merged_model_matches_base_plus_adapter(finished, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = finished
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out / "adapter")
        merged = AutoModelForCausalLM.from_pretrained(out / "merged")
        torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)


def test_a_finished_job_is_not_retrained(finished, tiny_model):
    out, _ = finished
    before = (out / "manifest.json").stat().st_mtime_ns
    outcome = run(job("tiny", tiny_model, output={"mergedModel": True}), str(out))
    assert outcome.already_complete
    assert (out / "manifest.json").stat().st_mtime_ns == before
    assert outcome.metrics["train"]["global_step"] == 4


def test_another_jobs_output_is_refused_and_left_alone(finished, tiny_model):
    out, _ = finished
    before = sha256(out / "manifest.json")
    with pytest.raises(InputError) as info:
        run(job("other", tiny_model), str(out))
    assert info.value.field == "output.uri"
    assert "already holds the output of FineTuneJob default/tiny" in info.value.message
    assert sha256(out / "manifest.json") == before
    # The same name with a changed spec is a different job too.
    with pytest.raises(InputError):
        run(job("tiny", tiny_model, training={"maxSteps": 5}), str(out))


def test_failed_training_keeps_earlier_artifacts_and_writes_no_manifest(tiny_model, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(InputError) as info:
        run(job("bad", tiny_model, lora={"targetModules": ["nope"]}), str(out))
    assert info.value.field == "lora.targetModules"
    assert (out / "data" / "stats.json").exists()  # data prep's output stays
    assert not (out / "manifest.json").exists()


def test_bad_dataset_fails_before_the_model_is_touched(tmp_path):
    spec = finetune_manifest(
        "nodata", tmp_path / "no-model", dataset={"uri": str(tmp_path / "missing.jsonl")}
    )
    j = FineTuneJob.model_validate(spec)
    with pytest.raises(InputError) as info:
        run(j, str(tmp_path / "out"))
    assert info.value.field == "dataset.uri" and "file not found" in info.value.message


def test_s3_output_end_to_end(tiny_model, s3_env, s3_bucket):
    client = s3_env.client()
    uri = f"s3://{s3_bucket}/jobs/tiny-s3"
    outcome = run(job("tiny-s3", tiny_model), uri)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="jobs/tiny-s3/")["Contents"]}
    assert "jobs/tiny-s3/manifest.json" in keys
    assert "jobs/tiny-s3/adapter/adapter_model.safetensors" in keys
    assert not any("/checkpoints/" in k for k in keys)
    manifest = json.loads(
        client.get_object(Bucket=s3_bucket, Key="jobs/tiny-s3/manifest.json")["Body"].read()
    )
    for entry in manifest["files"]:
        body = client.get_object(Bucket=s3_bucket, Key=f"jobs/tiny-s3/{entry['path']}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
    assert outcome.artifacts["adapter"] == f"{uri}/adapter"
    again = run(job("tiny-s3", tiny_model), uri)
    assert again.already_complete


def test_wrong_s3_credentials_fail_fast_and_write_nothing(tiny_model, s3_env, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StorageError) as info:
        run(job("denied", tiny_model), f"s3://{s3_bucket}/jobs/denied")
    assert "rejected the credentials" in str(info.value) and "wrong-secret" not in str(info.value)
    assert info.value.field == "output.uri"
    assert "Contents" not in s3_env.client().list_objects_v2(Bucket=s3_bucket)
