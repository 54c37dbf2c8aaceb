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
import builtins  # `list` is a method of the stores: annotations in the class spell the type builtins.list
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from slmops_pipelines.errors import StorageError


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store root
    size: int
    # What the store says of the content (S3's ETag); "" where it says nothing.  Not part of
    # equality: two listings of the same objects are equal whoever computed the tag.
    etag: str = field(default="", compare=False)


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
        """Delete every object under ``prefix`` (or the object ``prefix`` names); return how many."""

    @abc.abstractmethod
    def delete_keys(self, keys: builtins.list[str]) -> int:
        """Delete exactly these objects (missing ones are fine); return how many were asked for."""

    @abc.abstractmethod
    def local_root(self) -> Path | None:
        """The local folder behind the store, or None for remote stores."""

    # -- helpers built on the primitives ---------------------------------------------------

    def stat(self, key: str) -> ObjectInfo | None:
        """The object ``key`` (size, ETag), or None when there is none."""
        path = self.local_root()
        if path is None:
            raise NotImplementedError
        target = path / key.strip("/")
        if not target.is_file():
            return None
        stat = target.stat()
        return ObjectInfo(key.strip("/"), stat.st_size, f"{stat.st_mtime_ns}")

    def source_identity(self, prefix: str = "") -> str:
        """Where ``prefix`` lives, for cache keys: two stores that could hold different bytes under
        the same URI text (two S3 endpoints) never share one."""
        return self.uri_of(prefix) if prefix else self.uri

    def uri_of(self, key: str) -> str:
        return self.uri.rstrip("/") + "/" + key.lstrip("/") if key else self.uri

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def upload_dir(self, local: Path, prefix: str) -> builtins.list[str]:
        """Upload every file under ``local`` to ``prefix``; return the keys written."""
        keys = []
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(local).as_posix()}".lstrip("/")
            self.upload_file(path, key)
            keys.append(key)
        return keys

    def download_dir(self, prefix: str, local: Path, *, last: tuple[str, ...] = ()) -> builtins.list[Path]:
        """Download every object under ``prefix`` into ``local``; return the local paths.

        Objects named in ``last`` (file names, e.g. a completion marker) come after all the
        others, and only once every file has the size the store listed: a download killed
        midway never leaves a marker beside partial files.
        """
        prefix = prefix.strip("/")
        infos = [info for info in self.list(prefix) if not info.key.endswith("/")]  # folder markers
        infos.sort(key=lambda info: info.key.rsplit("/", 1)[-1] in last)  # stable: markers at the end
        # Every key's local path first: one key that would leave ``local`` refuses the whole download.
        targets = {
            info.key: self._inside(local, info.key[len(prefix) :].lstrip("/") if prefix else info.key)
            for info in infos
        }
        for info in infos:
            if last and info.key.rsplit("/", 1)[-1] in last:
                self._verify_sizes(infos, targets, exclude=last)
            self.download_file(info.key, targets[info.key])
        return list(targets.values())

    def _inside(self, local: Path, rel: str) -> Path:
        """``local / rel``, refusing a key that would land outside ``local`` (``..``, absolute, empty).

        Object keys are the store owner's text: an S3 key ``model/../../etc/x`` is legal there,
        and must never choose a file outside the folder it is downloaded into.
        """
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise StorageError(
                f"{self.uri_of(rel)}: refusing to download a key that leaves {local} ({rel!r})",
                field=getattr(self, "field", None),
            )
        target = local / rel
        root = local.resolve()
        if not target.resolve().is_relative_to(root):  # a symlink inside local pointing out of it
            raise StorageError(
                f"{self.uri_of(rel)}: refusing to download outside {local}",
                field=getattr(self, "field", None),
            )
        return target

    def _verify_sizes(
        self, infos: builtins.list[ObjectInfo], targets: dict[str, Path], *, exclude: tuple[str, ...]
    ) -> None:
        for info in infos:
            if info.key.rsplit("/", 1)[-1] in exclude:
                continue
            path = targets[info.key]
            size = path.stat().st_size if path.is_file() else None
            if size != info.size:
                raise StorageError(
                    f"{self.uri_of(info.key)}: downloaded {size} bytes of {info.size}; not marking it complete"
                )
