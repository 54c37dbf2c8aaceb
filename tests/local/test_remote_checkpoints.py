"""Checkpoints on S3: uploaded complete (marker last), restored from the latest complete one."""

from __future__ import annotations

from pathlib import Path

from slmops_pipelines.steps.train.checkpoints import COMPLETE_MARKER
from slmops_pipelines.steps.train.checkpoints import restore_checkpoint as _restore_remote_checkpoint
from slmops_pipelines.steps.train.checkpoints import sync_checkpoint as _sync_checkpoint
from slmops_pipelines.storage import open_store


def make_checkpoint(work: Path, step: int, complete: bool) -> None:
    folder = work / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"w" * (100 + step))
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    if complete:
        (folder / COMPLETE_MARKER).write_text("{}")


def test_sync_and_restore(tmp_path: Path, s3_env, s3_bucket):
    store = open_store(f"s3://{s3_bucket}/jobs/ckpt")
    work = tmp_path / "work"
    make_checkpoint(work, 2, complete=True)
    _sync_checkpoint(store, work, 2)
    make_checkpoint(work, 4, complete=True)
    _sync_checkpoint(store, work, 4)
    # The Trainer rotated checkpoint-2 away locally: the remote copy goes too.
    import shutil

    shutil.rmtree(work / "checkpoints" / "checkpoint-2")
    make_checkpoint(work, 6, complete=False)  # a save cut short: never uploaded
    _sync_checkpoint(store, work, 6)
    keys = sorted(info.key for info in store.list("checkpoints"))
    assert keys == [
        f"checkpoints/checkpoint-4/{COMPLETE_MARKER}",
        "checkpoints/checkpoint-4/adapter_model.safetensors",
        "checkpoints/checkpoint-4/trainer_state.json",
    ]

    fresh = tmp_path / "fresh"  # a new pod: nothing local
    assert _restore_remote_checkpoint(store, fresh) == 4
    restored = fresh / "checkpoints" / "checkpoint-4"
    assert (restored / "adapter_model.safetensors").read_bytes() == b"w" * 104
    assert (restored / COMPLETE_MARKER).exists()


def test_restore_without_checkpoints(tmp_path: Path, s3_env, s3_bucket):
    assert _restore_remote_checkpoint(open_store(f"s3://{s3_bucket}/jobs/none"), tmp_path) is None


def test_a_checkpoint_rotated_away_during_upload_is_dropped(tmp_path: Path):
    """The Trainer deletes old checkpoints (saveTotalLimit) while the parent still uploads them."""
    import shutil

    class RotatingStore(type(open_store(str(tmp_path / "out")))):
        def upload_file(self, local: Path, key: str) -> None:
            shutil.rmtree(tmp_path / "work" / "checkpoints" / "checkpoint-2", ignore_errors=True)
            super().upload_file(local, key)

    store = RotatingStore(tmp_path / "out")
    work = tmp_path / "work"
    make_checkpoint(work, 2, complete=True)
    _sync_checkpoint(store, work, 2)  # no error: a newer checkpoint exists
    assert not [info.key for info in store.list("checkpoints")]


def test_a_checkpoint_rotated_mid_upload_is_dropped_while_its_folder_remains(tmp_path: Path):
    """rmtree removes the files first: the upload fails on a missing file while the folder is there."""
    work = tmp_path / "work"

    class HalfRotatingStore(type(open_store(str(tmp_path / "out")))):
        def upload_file(self, local: Path, key: str) -> None:
            (work / "checkpoints" / "checkpoint-2" / "trainer_state.json").unlink(missing_ok=True)
            super().upload_file(local, key)

    store = HalfRotatingStore(tmp_path / "out")
    make_checkpoint(work, 2, complete=True)
    _sync_checkpoint(store, work, 2)  # no error: the Trainer is rotating it away
    assert not [info.key for info in store.list("checkpoints")]


def test_a_checkpoint_that_fails_to_upload_while_complete_fails_the_sync(tmp_path: Path):
    """A store that refuses a write while every file is there is a real error, not a rotation."""
    import pytest

    from slmops_pipelines.errors import StorageError

    class FullStore(type(open_store(str(tmp_path / "out")))):
        def upload_file(self, local: Path, key: str) -> None:
            raise StorageError(f"cannot upload {local}: no space left")

    work = tmp_path / "work"
    make_checkpoint(work, 2, complete=True)
    with pytest.raises(StorageError, match="no space left"):
        _sync_checkpoint(FullStore(tmp_path / "out"), work, 2)
