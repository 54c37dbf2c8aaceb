"""Resolving model URIs: local folders, GGUF files, S3 prefixes, the Hub (offline here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops_pipelines.errors import InputError
from slmops_pipelines.models import resolve_model
from slmops_pipelines.specs import ModelSpec


def test_local_folder_and_file_uri(tiny_model: Path):
    assert resolve_model(ModelSpec(uri=str(tiny_model))) == tiny_model
    assert resolve_model(ModelSpec(uri=f"file://{tiny_model}")) == tiny_model


def test_folder_without_config_is_refused(tmp_path: Path):
    with pytest.raises(InputError) as info:
        resolve_model(ModelSpec(uri=str(tmp_path)))
    assert info.value.field == "model.uri" and "no config.json" in info.value.message


def test_missing_path(tmp_path: Path):
    with pytest.raises(InputError) as info:
        resolve_model(ModelSpec(uri=str(tmp_path / "absent")))
    assert "model not found" in info.value.message


def test_corrupt_gguf_file(tmp_path: Path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    with pytest.raises(InputError) as info:
        resolve_model(ModelSpec(uri=str(bad)))
    assert info.value.field == "model.uri" and "cannot read GGUF file" in info.value.message


def test_hub_models_fail_clearly_when_offline():
    with pytest.raises(InputError) as info:
        resolve_model(ModelSpec(uri="hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"))
    assert (
        info.value.field == "model.uri"
        and "cannot download hf://HuggingFaceTB/SmolLM2-135M-Instruct" in info.value.message
    )


def test_s3_model_is_downloaded_once(tiny_model: Path, s3_env, s3_bucket):
    from slmops_pipelines.storage import open_store

    store = open_store(f"s3://{s3_bucket}/models/tiny")
    store.upload_dir(tiny_model, "")
    first = resolve_model(ModelSpec(uri=f"s3://{s3_bucket}/models/tiny"))
    assert (first / "config.json").read_bytes() == (tiny_model / "config.json").read_bytes()
    store.delete_prefix("")  # the cache answers now
    assert resolve_model(ModelSpec(uri=f"s3://{s3_bucket}/models/tiny")) == first


def test_a_private_s3_model_is_read_with_the_models_own_keys(
    tiny_model: Path, s3_env, s3_bucket, monkeypatch
):
    """model.accessSecret reaches the pod as SLMOPS_MODEL_AWS_*; the output's AWS_* keys are not used for it."""
    from slmops_pipelines.storage import open_store

    open_store(f"s3://{s3_bucket}/private/tiny").upload_dir(tiny_model, "")
    for key, value in {
        "AWS_ACCESS_KEY_ID": s3_env.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_env.secret_key,
        "AWS_ENDPOINT_URL": s3_env.endpoint_url,
    }.items():
        monkeypatch.setenv(f"SLMOPS_MODEL_{key}", value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "the-outputs-key")  # wrong for the model's bucket
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-outputs-secret")
    found = resolve_model(ModelSpec(uri=f"s3://{s3_bucket}/private/tiny"))
    assert (found / "config.json").read_bytes() == (tiny_model / "config.json").read_bytes()
