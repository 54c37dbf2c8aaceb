"""The ArtifactStore contract, written once and run against every store: local folder, S3, PVC.

Every engine and step writes through this contract, whatever the output location is; what
differs between stores (S3's credentials and endpoints, a local folder's permissions) stays in
their own test files.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from slmops_pipelines.errors import StorageError
from slmops_pipelines.storage import ArtifactStore, ObjectInfo, open_store


@pytest.fixture(params=["local", "s3", "pvc"])
def store(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    """A checked store: a local folder, a prefix in a real SeaweedFS bucket, a folder on a claim."""
    if request.param == "local":
        uri = str(tmp_path / "store")
    elif request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        request.getfixturevalue("s3_env")
        uri = f"s3://{bucket}/contract/{uuid.uuid4().hex[:12]}"
    else:
        monkeypatch.setenv("SLMOPS_PVC_ROOT", str(tmp_path / "pvc"))
        (tmp_path / "pvc" / "outputs").mkdir(parents=True)
        uri = "pvc://outputs/team-a/job"
    opened = open_store(uri, field="output.uri")
    opened.check()
    return opened


def test_bytes_and_text_round_trip(store: ArtifactStore) -> None:
    store.write_bytes("a/b.bin", b"\x00\x01")
    store.write_text("a/c.txt", "héllo")
    assert store.read_bytes("a/b.bin") == b"\x00\x01" and store.read_text("a/c.txt") == "héllo"
    assert store.exists("a/c.txt") and not store.exists("a/missing")
    store.write_text("a/c.txt", "again")  # overwrite
    assert store.read_text("a/c.txt") == "again"


def test_a_missing_key_is_an_error_naming_it(store: ArtifactStore) -> None:
    with pytest.raises(Exception, match=r"nope\.json"):
        store.read_text("nope.json")


def test_listing_is_sorted_relative_and_folder_scoped(store: ArtifactStore) -> None:
    for key in ("ckpt/2", "ckpt/1", "ckpt-old/1", "top"):
        store.write_text(key, key)
    assert [info.key for info in store.list("ckpt")] == ["ckpt/1", "ckpt/2"]
    assert [info.key for info in store.list()] == ["ckpt-old/1", "ckpt/1", "ckpt/2", "top"]
    assert {info.key: info.size for info in store.list("ckpt")} == {"ckpt/1": 6, "ckpt/2": 6}
    assert list(store.list("ckpt/")) == list(store.list("ckpt")) and list(store.list("missing")) == []


def test_folders_upload_and_download_whole(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "model.bin").write_bytes(b"m" * 1000)
    (source / "sub" / "config.json").write_text("{}")
    (source / ".complete").write_text("")
    keys = store.upload_dir(source, "adapter")
    assert sorted(keys) == ["adapter/.complete", "adapter/model.bin", "adapter/sub/config.json"]
    back = tmp_path / "back"
    paths = store.download_dir("adapter", back, last=(".complete",))
    assert paths[-1] == back / ".complete"  # the marker comes last
    assert (back / "model.bin").read_bytes() == b"m" * 1000 and (back / "sub" / "config.json").is_file()


def test_deleting_a_prefix_deletes_that_folder_only(store: ArtifactStore) -> None:
    for key in ("ckpt/1", "ckpt/sub/2", "ckpt-old/1"):
        store.write_text(key, "x")
    assert store.delete_prefix("ckpt") == 2
    assert [info.key for info in store.list()] == ["ckpt-old/1"]
    assert store.delete_prefix("ckpt") == 0


def test_single_files_upload_and_download(store: ArtifactStore, tmp_path: Path) -> None:
    local = tmp_path / "f.txt"
    local.write_text("file")
    store.upload_file(local, "x/f.txt")
    store.download_file("x/f.txt", tmp_path / "out" / "f.txt")
    assert (tmp_path / "out" / "f.txt").read_text() == "file"
    assert store.uri_of("x/f.txt").endswith("x/f.txt")


@pytest.mark.parametrize(
    "key", ["model/../../../escaped", "model/../x", "model/sub/../../../escaped", "model/./x"]
)
def test_a_listed_key_never_chooses_a_file_outside_the_download_folder(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """The store's owner chooses its keys (S3 allows ``..``): the download folder stays the limit."""
    store.write_text("model/config.json", "{}")
    listed = list(store.list("model"))
    monkeypatch.setattr(store, "list", lambda prefix="": [*listed, ObjectInfo(key=key, size=1)])
    with pytest.raises(StorageError, match="refusing"):
        store.download_dir("model", tmp_path / "dl" / "inner")
    assert not list(tmp_path.glob("**/escaped")) and not (tmp_path / "dl" / "x").exists()
