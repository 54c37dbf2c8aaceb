"""An artifact store backed by a local folder.

Keys map onto paths under ``root``.  Every write goes to a temporary file in the
destination's own folder and is then moved into place with :func:`os.replace`, which is
atomic on POSIX within one file system: a reader sees the old file or the complete new
one, never a partial write, even if the writer is killed mid-copy.  Temporary files carry
a fixed prefix so that :meth:`LocalStore.list` can hide writes still in flight, like S3
hides multipart uploads that have not completed.

Keys are confined to the root: an absolute key or one that climbs out with ``..`` is
refused, so a bad key in a spec cannot overwrite files elsewhere on the machine.
"""

from __future__ import annotations

import builtins  # `list` is a method of the stores: annotations in the class spell the type builtins.list
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from slmops_pipelines.errors import StorageError
from slmops_pipelines.storage.base import ArtifactStore, ObjectInfo

TEMP_PREFIX = ".slmops-tmp-"


def links_out_of(path: Path, root: Path) -> bool:
    """True when ``path`` is a symbolic link whose target lies outside ``root``."""
    return path.is_symlink() and not path.resolve().is_relative_to(root.resolve())


class LocalStore(ArtifactStore):
    """Artifacts under a local folder; ``uri`` is the folder's absolute path."""

    def __init__(self, root: Path, *, field: str | None = None, confined: bool = False) -> None:
        # normpath, not resolve(): keep the user's symlinks in the path they see in messages.
        self.root = Path(os.path.normpath(Path(root).expanduser().absolute()))
        self.uri = str(self.root)
        self.field = field
        # A claim's content is a tenant's, read in a pod beside its service-account token: a
        # symbolic link in it must not lead a copy out of the claim.  A folder of one's own
        # machine (an HF cache snapshot links to ../../blobs) is not confined.
        self.confined = confined

    def __repr__(self) -> str:
        return f"LocalStore({self.uri!r})"

    # -- primitives ------------------------------------------------------------------------

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise self._error(f"{self.root} exists and is not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # os.access() lies for root and on some network file systems: really write.
            with tempfile.TemporaryFile(dir=self.root, prefix=TEMP_PREFIX):
                pass
        except OSError as exc:
            raise self._error(f"cannot write to {self.root}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        if self.confined:
            self._refuse_escaping_link(self._path(key))
        path = self._path(key)
        if not path.is_file():
            raise self._error(f"{path} does not exist")
        with self._os_errors("read", path):
            return path.read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._atomic_write(path, lambda out: out.write(data))

    def upload_file(self, local: Path, key: str) -> None:
        self._copy(Path(local), self._path(key))

    def download_file(self, key: str, local: Path) -> None:
        if self.confined:
            self._refuse_escaping_link(self._path(key))
        source = self._path(key)
        if not source.is_file():
            raise self._error(f"{source} does not exist")
        self._copy(source, Path(local))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # A prefix names a folder: "ckpt" lists ckpt/..., never ckpt-old/...
        base = self._path(prefix) if prefix.strip("/") else self.root
        if not base.is_dir():
            return iter(())
        with self._os_errors("list", base):
            files = [p for p in base.rglob("*") if p.is_file() and not p.name.startswith(TEMP_PREFIX)]
            if self.confined:
                for path in files:
                    self._refuse_escaping_link(path)
            infos = [
                ObjectInfo(path.relative_to(self.root).as_posix(), path.stat().st_size) for path in files
            ]
        return iter(sorted(infos, key=lambda info: info.key))

    def _refuse_escaping_link(self, path: Path) -> None:
        if links_out_of(path, self.root):
            raise self._error(
                f"{path.relative_to(self.root).as_posix()!r} in {self.root} is a link to a file outside it: "
                "refusing to read it"
            )

    def delete_prefix(self, prefix: str) -> int:
        base = self._path(prefix) if prefix.strip("/") else self.root
        if base.is_file():  # a prefix that names one object: that object
            return self.delete_keys([prefix])
        infos = list(self.list(prefix))
        with self._os_errors("delete", base):
            for info in infos:
                (self.root / info.key).unlink(missing_ok=True)
            self._prune_empty_dirs(base)
        return len(infos)

    def delete_keys(self, keys: builtins.list[str]) -> int:
        paths = [self._path(key) for key in keys]
        with self._os_errors("delete", self.root):
            for path in paths:
                path.unlink(missing_ok=True)
            for folder in sorted({p.parent for p in paths}, key=lambda p: len(p.parts), reverse=True):
                while folder != self.root and self.root in folder.parents:  # empty folders go too
                    try:
                        folder.rmdir()
                    except OSError:  # not empty (or gone): its parents are not empty either
                        break
                    folder = folder.parent
        return len(paths)

    def local_root(self) -> Path | None:
        return self.root

    # -- internals -------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The path for ``key``, refusing keys that would escape the root."""
        rel = key.strip("/")
        if not rel:
            raise self._error("an empty key does not name a file")
        path = Path(os.path.normpath(self.root / rel))
        if path != self.root and self.root not in path.parents:
            raise self._error(f"key {key!r} points outside {self.root}")
        return path

    def _copy(self, source: Path, target: Path) -> None:
        if not source.is_file():
            raise self._error(f"{source} does not exist or is not a file")
        # Copying a file onto itself would truncate it through the temp file + replace.
        if target.exists() and os.path.samefile(source, target):
            return
        with self._os_errors("read", source), source.open("rb") as src:
            self._atomic_write(target, lambda out: shutil.copyfileobj(src, out, 1 << 20))

    def _atomic_write(self, path: Path, fill: Callable[[BinaryIO], object]) -> None:
        """Write through ``fill`` into a temp file next to ``path``, then rename it into place."""
        with self._os_errors("write", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f"{TEMP_PREFIX}{path.name[:100]}.{secrets.token_hex(6)}"
            # os.open with 0o666 lets the umask set the mode, as a plain open() would
            # (mkstemp would leave the artifact readable by its owner only).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with os.fdopen(fd, "wb") as out:
                    fill(out)
                    out.flush()
                    # Durable before visible: a crash after the rename must not leave an empty file.
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def _prune_empty_dirs(self, base: Path) -> None:
        """Remove folders left empty under ``base`` (and ``base`` itself, never the root)."""
        if not base.is_dir():
            return
        for folder in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):  # not empty: keep it
                folder.rmdir()
        if base != self.root:
            with contextlib.suppress(OSError):
                base.rmdir()

    @contextlib.contextmanager
    def _os_errors(self, action: str, path: Path) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise self._error(f"cannot {action} {path}: {exc.strerror or exc}") from exc

    def _error(self, message: str) -> StorageError:
        return StorageError(message, field=self.field)
