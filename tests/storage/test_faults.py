"""Storage under faults: deleting one object, a download killed midway, a previous attempt's error record.

The same rules for a local folder and for S3 (a real SeaweedFS).
"""

from __future__ import annotations

import pytest

from slmops_pipelines.errors import InputError, StorageError
from slmops_pipelines.stages.outputs import clear_error, read_error, record_error
from slmops_pipelines.steps.train.checkpoints import COMPLETE_MARKER, restore_checkpoint
from slmops_pipelines.storage import open_store


def keys(store) -> list[str]:
    return [info.key for info in store.list("")]


def test_delete_prefix_of_one_object_deletes_it(root):
    store = open_store(root)
    for key in (".slmops/error.json", ".slmops/error.json.bak", ".slmops/job.json"):
        store.write_text(key, "x")
    assert store.delete_prefix(".slmops/error.json") == 1
    assert keys(store) == [".slmops/error.json.bak", ".slmops/job.json"]


def test_an_earlier_attempts_error_is_cleared(root):
    """A later failure with no record of its own (an OOM kill) must not show the earlier reason."""
    record_error(root, "prepare_data", InputError("no column 'text'", field="dataset.textTemplate"))
    assert read_error(root) is not None
    clear_error(root)
    assert read_error(root) is None


class KilledMidway(Exception):
    pass


def test_a_download_killed_midway_is_never_trusted_as_a_checkpoint(root, tmp_path, monkeypatch):
    store = open_store(root)
    folder = "checkpoints/checkpoint-4"
    for name, size in (
        ("adapter_model.safetensors", 4096),
        ("optimizer.pt", 2048),
        ("trainer_state.json", 64),
    ):
        store.write_bytes(f"{folder}/{name}", b"w" * size)
    store.write_text(f"{folder}/{COMPLETE_MARKER}", "4")
    work = tmp_path / "work"

    real = type(store).download_file
    calls = []

    def dies_on_the_second_file(self, key, local):
        calls.append(key)
        if len(calls) == 2:
            raise KilledMidway(key)
        real(self, key, local)

    monkeypatch.setattr(type(store), "download_file", dies_on_the_second_file)
    with pytest.raises(KilledMidway):
        restore_checkpoint(store, work)
    assert not calls[0].endswith(COMPLETE_MARKER), "the marker came first"
    assert not (work / folder / COMPLETE_MARKER).exists()
    monkeypatch.setattr(type(store), "download_file", real)
    assert restore_checkpoint(store, work) == 4  # downloaded again, whole
    assert (work / folder / "optimizer.pt").stat().st_size == 2048
    assert (work / folder / COMPLETE_MARKER).exists()


def test_the_marker_waits_for_every_file_to_have_its_size(root, tmp_path, monkeypatch):
    store = open_store(root)
    store.write_bytes("ckpt/weights.bin", b"w" * 1000)
    store.write_text(f"ckpt/{COMPLETE_MARKER}", "1")
    real = type(store).download_file

    def truncates(self, key, local):
        real(self, key, local)
        if key.endswith("weights.bin"):
            local.write_bytes(b"w" * 10)

    monkeypatch.setattr(type(store), "download_file", truncates)
    with pytest.raises(StorageError, match="downloaded 10 bytes of 1000"):
        store.download_dir("ckpt", tmp_path / "out", last=(COMPLETE_MARKER,))
    assert not (tmp_path / "out" / COMPLETE_MARKER).exists()
