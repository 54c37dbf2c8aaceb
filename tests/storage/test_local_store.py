"""The local-folder artifact store and the URI dispatch of ``open_store``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slmops_pipelines.errors import StorageError
from slmops_pipelines.storage import open_store
from slmops_pipelines.storage.local import TEMP_PREFIX, LocalStore


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "root")


def test_round_trip_bytes_and_text(store: LocalStore) -> None:
    store.write_bytes("a/b.bin", b"\x00\x01payload")
    store.write_text("notes.txt", "héllo")
    assert store.read_bytes("a/b.bin") == b"\x00\x01payload"
    assert store.read_text("notes.txt") == "héllo"
    assert store.exists("a/b.bin")
    assert not store.exists("a/missing.bin")


def test_uri_is_absolute_and_local_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = LocalStore(Path("rel/out"))
    assert store.uri == str(tmp_path / "rel" / "out")
    assert store.local_root() == tmp_path / "rel" / "out"
    assert store.uri_of("x/y.json") == f"{tmp_path}/rel/out/x/y.json"


def test_missing_key_names_the_path(store: LocalStore) -> None:
    with pytest.raises(StorageError, match=r"root/nope\.json does not exist"):
        store.read_bytes("nope.json")
    with pytest.raises(StorageError, match="does not exist"):
        store.download_file("nope.json", store.root.parent / "x")


def test_overwrite_is_atomic_and_leaves_no_temp_files(store: LocalStore) -> None:
    store.write_bytes("m/weights.bin", b"old")
    store.write_bytes("m/weights.bin", b"new")
    assert store.read_bytes("m/weights.bin") == b"new"
    assert os.listdir(store.root / "m") == ["weights.bin"]


def test_failed_write_keeps_old_file_and_removes_temp(store: LocalStore) -> None:
    store.write_bytes("f.bin", b"old")

    def explode(_out: object) -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        store._atomic_write(store.root / "f.bin", explode)
    assert store.read_bytes("f.bin") == b"old"
    assert os.listdir(store.root) == ["f.bin"]


def test_list_hides_in_flight_temp_files(store: LocalStore) -> None:
    store.write_bytes("a.txt", b"1")
    (store.root / f"{TEMP_PREFIX}b.txt.1234").write_bytes(b"partial")
    assert [info.key for info in store.list()] == ["a.txt"]


def test_upload_file_onto_itself_is_a_noop(store: LocalStore) -> None:
    store.write_bytes("same.bin", b"content")
    path = store.root / "same.bin"
    store.upload_file(path, "same.bin")
    assert path.read_bytes() == b"content"


def test_keys_cannot_escape_the_root(store: LocalStore) -> None:
    with pytest.raises(StorageError, match="outside"):
        store.write_bytes("../escape.txt", b"x")
    with pytest.raises(StorageError, match="empty key"):
        store.read_bytes("")


def test_check_creates_the_root(store: LocalStore) -> None:
    assert not store.root.exists()
    store.check()
    assert store.root.is_dir()
    assert os.listdir(store.root) == []  # the write probe is cleaned up


def test_check_fails_when_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not a folder"):
        LocalStore(tmp_path / "file", field="output.uri").check()


def test_check_fails_when_root_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match=r"^output.uri: cannot write to .*/file/sub: "):
        LocalStore(tmp_path / "file" / "sub", field="output.uri").check()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_check_fails_when_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(StorageError, match="cannot write"):
            LocalStore(locked).check()
    finally:
        locked.chmod(0o700)


# -- open_store dispatch ---------------------------------------------------------------------


def test_open_store_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("runs/out")
    assert isinstance(relative, LocalStore)
    assert relative.local_root() == tmp_path / "runs" / "out"
    absolute = open_store(f"file://{tmp_path}/x")
    assert isinstance(absolute, LocalStore)
    assert absolute.uri == f"{tmp_path}/x"


def test_open_store_s3_does_no_io() -> None:
    from slmops_pipelines.storage.s3 import S3Store

    store = open_store("s3://my-bucket/runs/job-1")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.uri) == ("my-bucket", "runs/job-1", "s3://my-bucket/runs/job-1")
    assert store.local_root() is None


def test_open_store_rejects_hf_with_field() -> None:
    with pytest.raises(StorageError, match="cannot be an artifact store") as info:
        open_store("hf://HuggingFaceTB/SmolLM2-135M", field="output.uri")
    assert info.value.field == "output.uri"
    assert str(info.value).startswith("output.uri: ")


def test_open_store_rejects_bad_uris_with_field() -> None:
    with pytest.raises(StorageError, match="unsupported scheme") as info:
        open_store("gs://bucket/x", field="output.uri")
    assert info.value.field == "output.uri"
    with pytest.raises(StorageError, match="must not be empty"):
        open_store("  ", field="output.uri")
