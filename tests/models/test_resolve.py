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
    assert resolve_model(ModelSpec(uri=f"s3://{s3_bucket}/models/tiny")) == first  # listed, not downloaded
    store.delete_prefix("")  # the source is gone: the cache does not answer for it
    with pytest.raises(InputError) as gone:
        resolve_model(ModelSpec(uri=f"s3://{s3_bucket}/models/tiny"))
    assert gone.value.field == "model.uri" and "no objects under" in gone.value.message


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


def test_a_finetunejob_whose_model_bucket_holds_a_dot_dot_key_fails_naming_it(
    tiny_model: Path, s3_env, s3_bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """S3 allows the key ``model/../../../../escaped`` (SeaweedFS refuses to store one, so the listing
    here adds it, as a real S3 bucket would return it): the job fails naming the key, before
    any file is written, and nothing appears outside the download folder."""
    from slmops_pipelines.local import run_finetune
    from slmops_pipelines.storage import ObjectInfo, open_store
    from slmops_pipelines.storage.s3 import S3Store
    from tests.conftest import finetune_manifest, job_run

    uri = f"s3://{s3_bucket}/models/tiny-dotdot"
    open_store(uri).upload_dir(tiny_model, "")
    listed = S3Store.list

    def with_an_escaping_key(self, prefix: str = ""):
        yield from listed(self, prefix)
        yield ObjectInfo(key="../../../../escaped", size=1)

    monkeypatch.setattr(S3Store, "list", with_an_escaping_key)
    monkeypatch.setenv("SLMOPS_CACHE_DIR", str(tmp_path / "cache"))
    from slmops_operator.api import FineTuneJob

    manifest = finetune_manifest("dotdot", tiny_model, output={"uri": str(tmp_path / "out")})
    manifest["spec"]["model"]["uri"] = uri
    job = FineTuneJob.model_validate(manifest)
    with pytest.raises(Exception) as refused:
        run_finetune(job_run(job))
    assert "refusing to download a key that leaves" in str(refused.value) and "../../../../escaped" in str(
        refused.value
    )
    assert getattr(refused.value, "field", None) == "model.uri"
    assert not list(tmp_path.rglob("escaped")) and not Path("/escaped").exists()
