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
