"""The S3 artifact store against a real SeaweedFS server (tests/fixtures/seaweedfs.py)."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time
from pathlib import Path

import pytest

from slmops_pipelines.errors import StorageError
from slmops_pipelines.storage import ObjectInfo, open_store
from slmops_pipelines.storage import s3 as s3_module
from slmops_pipelines.storage.s3 import MiB, S3Store
from tests.fixtures.seaweedfs import S3Server, free_ports


def make_store(server: S3Server, bucket: str, prefix: str = "runs/job-1", **kwargs: object) -> S3Store:
    options: dict[str, object] = {
        "endpoint_url": server.endpoint_url,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "region": server.region,
    }
    options.update(kwargs)
    return S3Store(bucket, prefix, **options)  # type: ignore[arg-type]


@pytest.fixture
def store(s3_server: S3Server, s3_bucket: str) -> S3Store:
    return make_store(s3_server, s3_bucket)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the happy path ---------------------------------------------------------------------------


def test_check_and_round_trip(store: S3Store) -> None:
    store.check()
    store.write_bytes("a/b.bin", b"\x00\x01payload")
    store.write_text("manifest.json", '{"ok": true}')
    assert store.read_bytes("a/b.bin") == b"\x00\x01payload"
    assert store.read_text("manifest.json") == '{"ok": true}'
    assert store.exists("a/b.bin")
    assert not store.exists("a/missing.bin")
    assert store.local_root() is None
    assert store.uri_of("a/b.bin") == f"s3://{store.bucket}/runs/job-1/a/b.bin"


def test_objects_live_under_the_prefix(store: S3Store, s3_server: S3Server) -> None:
    store.write_text("x.txt", "x")
    keys = [obj["Key"] for obj in s3_server.client().list_objects_v2(Bucket=store.bucket)["Contents"]]
    assert keys == ["runs/job-1/x.txt"]


def test_missing_key_names_the_uri(store: S3Store, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=rf"^s3://{store.bucket}/runs/job-1/nope\.json does not exist$"):
        store.read_bytes("nope.json")
    with pytest.raises(StorageError, match=r"runs/job-1/nope\.json does not exist"):
        store.download_file("nope.json", tmp_path / "nope.json")
    assert not (tmp_path / "nope.json").exists()


def test_list_is_sorted_relative_and_folder_scoped(store: S3Store, s3_server: S3Server) -> None:
    for key in ["b/2.txt", "a/1.txt", "b/1.txt", "b-old/x.txt", "c.txt"]:
        store.write_text(key, key)
    # Outside the store's prefix: never listed.
    s3_server.client().put_object(Bucket=store.bucket, Key="runs/job-10/other.txt", Body=b"x")

    assert [info.key for info in store.list()] == ["a/1.txt", "b-old/x.txt", "b/1.txt", "b/2.txt", "c.txt"]
    assert list(store.list("b")) == [ObjectInfo("b/1.txt", 7), ObjectInfo("b/2.txt", 7)]
    assert list(store.list("/b/")) == list(store.list("b"))
    assert list(store.list("missing")) == []


def test_store_at_bucket_root(s3_server: S3Server, s3_bucket: str) -> None:
    store = make_store(s3_server, s3_bucket, prefix="")
    assert store.uri == f"s3://{s3_bucket}"
    store.write_text("top.txt", "t")
    store.write_text("d/x.txt", "x")
    assert [info.key for info in store.list()] == ["d/x.txt", "top.txt"]


def test_delete_prefix_in_batches(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        store.write_text(f"ckpt/{i}.bin", "x")
    store.write_text("ckpt-keep/a", "x")
    store.write_text("keep.txt", "x")
    # Small batches exercise the batching without creating a thousand objects.
    monkeypatch.setattr(s3_module, "DELETE_BATCH", 2)

    assert store.delete_prefix("ckpt") == 5
    assert [info.key for info in store.list()] == ["ckpt-keep/a", "keep.txt"]
    assert store.delete_prefix("ckpt") == 0


def test_multipart_upload_round_trip(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    store = make_store(s3_server, s3_bucket, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * MiB + 12345))

    store.upload_file(source, "model/big.bin")
    head = s3_server.client().head_object(Bucket=s3_bucket, Key="runs/job-1/model/big.bin")
    assert head["ContentLength"] == source.stat().st_size
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag: 3 parts of 5 MiB

    store.download_file("model/big.bin", tmp_path / "out" / "big.bin")
    assert sha256(tmp_path / "out" / "big.bin") == sha256(source)
    assert os.listdir(tmp_path / "out") == ["big.bin"]  # no temp file left behind


def test_open_store_reads_the_environment(s3_env: S3Server, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/from-env", field="output.uri")
    assert isinstance(store, S3Store)
    store.check()
    store.write_text("hello.txt", "hi")
    assert store.read_text("hello.txt") == "hi"


def test_s3_endpoint_url_alias(s3_env: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_env.endpoint_url)
    store = open_store(f"s3://{s3_bucket}")
    assert isinstance(store, S3Store)
    assert store.endpoint_url == s3_env.endpoint_url
    store.check()


# -- failures: one clear message each ------------------------------------------------------------


def test_wrong_secret_key(s3_server: S3Server, s3_bucket: str) -> None:
    secret = "definitely-not-the-secret"
    store = make_store(s3_server, s3_bucket, secret_key=secret, field="output.uri")
    with pytest.raises(StorageError) as info:
        store.check()
    message = str(info.value)
    assert message.startswith(f"output.uri: S3 rejected the credentials for s3://{s3_bucket} (")
    assert "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or output.credentialsSecret" in message
    assert secret not in message

    with pytest.raises(StorageError, match="S3 rejected the credentials") as info:
        store.read_bytes("x.txt")
    assert "SignatureDoesNotMatch" in str(info.value)
    assert secret not in str(info.value)
    assert secret not in repr(store)


def test_unknown_access_key(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    store = make_store(s3_server, s3_bucket, access_key="nobody", secret_key="nothing")
    with pytest.raises(StorageError, match="S3 rejected the credentials"):
        store.check()
    (tmp_path / "f.bin").write_bytes(b"x")
    # boto3 wraps upload errors in S3UploadFailedError: still the same clear message.
    with pytest.raises(StorageError, match=r"S3 rejected the credentials .*InvalidAccessKeyId"):
        store.upload_file(tmp_path / "f.bin", "f.bin")


def test_unreachable_endpoint_fails_fast(s3_server: S3Server) -> None:
    port = free_ports(1)[0]  # nobody listens there
    store = make_store(s3_server, "some-bucket", endpoint_url=f"http://127.0.0.1:{port}", field="output.uri")
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.check()
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"check() took {elapsed:.1f}s"
    assert str(info.value).startswith(
        "output.uri: cannot reach the S3 endpoint in AWS_ENDPOINT_URL for s3://some-bucket/runs/job-1: "
    )
    assert f"127.0.0.1:{port}" not in str(info.value)  # the endpoint may come from a Secret


def test_missing_bucket(s3_server: S3Server) -> None:
    store = make_store(s3_server, "no-such-bucket-here")
    with pytest.raises(
        StorageError,
        match=r"^bucket 'no-such-bucket-here' does not exist at the S3 endpoint in AWS_ENDPOINT_URL",
    ):
        store.check()
    with pytest.raises(StorageError, match=r"^bucket 'no-such-bucket-here' does not exist"):
        store.read_bytes("x.txt")
    with pytest.raises(StorageError, match=r"^bucket 'no-such-bucket-here' does not exist"):
        store.write_bytes("x.txt", b"x")
    with pytest.raises(StorageError, match=r"^bucket 'no-such-bucket-here' does not exist"):
        list(store.list())


def test_bad_endpoint_and_keys_are_refused() -> None:
    with pytest.raises(StorageError, match="must be a URL starting with http"):
        S3Store("bucket", endpoint_url="minio:9000")
    store = S3Store("bucket", endpoint_url="http://127.0.0.1:1")
    with pytest.raises(StorageError, match="empty key"):
        store.read_bytes("/")


def test_upload_of_missing_local_file(store: S3Store, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist or is not a file"):
        store.upload_file(tmp_path / "absent.bin", "absent.bin")


def test_endpoint_that_is_not_s3(tmp_path: Path) -> None:
    """A web server at the wrong port answers 404 without S3 headers: say so, not "no bucket"."""

    class NotS3(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotS3) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            endpoint = f"http://127.0.0.1:{server.server_address[1]}"
            store = S3Store("bucket", endpoint_url=endpoint, access_key="a", secret_key="b")
            with pytest.raises(StorageError, match="does not look like an S3 API"):
                store.check()
        finally:
            server.shutdown()
