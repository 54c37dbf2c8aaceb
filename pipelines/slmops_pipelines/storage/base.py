"""The artifact-store interface.

A store is rooted at a URI (a local folder or ``s3://bucket/prefix``); every key is a
relative, ``/``-separated path under that root.  Writes are atomic per object: a reader
sees either the old object or the whole new one, never a partial file (local: write to a
temporary name, then ``os.replace``; S3: a PUT or completed multipart upload is atomic).

Completeness of a *set* of objects is not the store's business: the job manifest
(``manifest.json``, written last) marks an output complete.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store root
    size: int


class ArtifactStore(abc.ABC):
    """Read and write artifacts under one root URI."""

    uri: str  # the root, e.g. "s3://bucket/prefix" or "/abs/path"

    @abc.abstractmethod
    def check(self) -> None:
        """Fail fast (StorageError with a clear message) if the store is unreachable or unauthorized."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """Raise StorageError naming the URI when the key does not exist."""

    @abc.abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def upload_file(self, local: Path, key: str) -> None:
        """Copy a local file to ``key`` (multipart for large files on S3)."""

    @abc.abstractmethod
    def download_file(self, key: str, local: Path) -> None: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` (recursive), keys relative to the store root, sorted."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many were deleted."""

    @abc.abstractmethod
    def delete_keys(self, keys: list[str]) -> int:
        """Delete exactly these objects (missing ones are fine); return how many were asked for."""

    @abc.abstractmethod
    def local_root(self) -> Path | None:
        """The local folder behind the store, or None for remote stores."""

    # -- helpers built on the primitives ---------------------------------------------------

    def uri_of(self, key: str) -> str:
        return self.uri.rstrip("/") + "/" + key.lstrip("/") if key else self.uri

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def upload_dir(self, local: Path, prefix: str) -> list[str]:
        """Upload every file under ``local`` to ``prefix``; return the keys written."""
        keys = []
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(local).as_posix()}".lstrip("/")
            self.upload_file(path, key)
            keys.append(key)
        return keys

    def download_dir(self, prefix: str, local: Path) -> list[Path]:
        """Download every object under ``prefix`` into ``local``; return the local paths."""
        prefix = prefix.strip("/")
        paths = []
        for info in self.list(prefix):
            rel = info.key[len(prefix) :].lstrip("/") if prefix else info.key
            target = local / rel
            self.download_file(info.key, target)
            paths.append(target)
        return paths
