"""The input cache: a remote input is used only as its source holds it now, read with the job's keys.

A model, an adapter or a dataset in S3 is downloaded once into ``cache_root()/inputs``, but
an entry is never trusted for what its name says.  Every use starts with one listing of
the source, made with the job's own credentials (keys, sizes and ETags):

* the listing fails (no such bucket, keys that may not read it, an endpoint that is
  down): the job fails naming the spec field, whatever the cache holds -- a job reads only
  what its own credentials can read, even on a cache volume shared with other teams;
* the entry is named by what was listed (endpoint, bucket, prefix and a digest of the
  listing), not by the URI's text: a source replaced in place lists differently and is
  downloaded into a new entry, while a job already running keeps the entry it started with;
* an entry is filled in a private folder, checked against the listed sizes, marked
  complete and renamed into place in one step: two jobs filling one entry at once both
  end with the same complete entry, and a partial download is never used.

The cache is bounded by ``SLMOPS_CACHE_MAX_GB`` (unset: unbounded): after each fill, the
least recently used entries go until it fits, never one in use (a process holds a shared
``flock`` on each entry it uses, for as long as it lives).  ``slmops cache ls`` shows the
entries and ``slmops cache prune`` removes what is not in use.

Inside a run (:func:`one_run`) the first read of an input pins it: a source that lists
differently later in the same run fails the job naming the field ("changed while the job
ran") instead of mixing two versions in one run.  A run in several processes (a pipeline's
pods) carries its pins from step to step (:func:`one_run` takes them, :func:`pins` gives
them back); outside a run nothing is pinned.

Hugging Face inputs (``hf://``) use huggingface_hub's own cache, whose revision check asks
the Hub with the job's token on every use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from slmops_pipelines.errors import InputError
from slmops_pipelines.storage import ArtifactStore

COMPLETE = ".slmops-entry.json"  # written last: its presence is what "complete" means
IN_USE = ".slmops-in-use"  # processes using the entry hold a shared lock on it
_HELD: list[IO[bytes]] = []  # the locks this process holds, for its lifetime

# The remote inputs this process read: spec field -> (URI, digest of the listing it read).
READ: dict[str, tuple[str, str]] = {}
# Inside a run: spec field -> the digest its first read listed; later reads must list the same.
_PINNED: dict[str, str] = {}
_IN_RUN: list[bool] = []


def inputs_root() -> Path:
    from slmops_pipelines.models.resolve import cache_root

    root = cache_root() / "inputs"
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class Listing:
    """What a source holds now, as its store listed it with the job's keys."""

    source: str  # where it was listed: endpoint, bucket and prefix (never a credential)
    uri: str  # as the spec names it
    objects: tuple[tuple[str, int, str], ...]  # (key, size, etag), sorted
    single: bool = False  # the prefix names one object (a dataset file), not a folder

    @property
    def digest(self) -> str:
        text = json.dumps([self.source, list(self.objects)], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(size for _, size, _ in self.objects)


def list_source(store: ArtifactStore, prefix: str, *, field: str) -> Listing:
    """One listing of ``prefix`` in ``store`` (opened with the job's keys); errors name ``field``."""
    uri = store.uri_of(prefix) if prefix else store.uri
    source = store.source_identity(prefix)
    one = store.stat(prefix) if prefix.strip("/") else None
    if one is not None:
        return Listing(source, uri, ((one.key, one.size, one.etag),), single=True)
    infos = [info for info in store.list(prefix) if not info.key.endswith("/")]
    if not infos:
        raise InputError(f"no objects under {uri}", field=field)
    return Listing(source, uri, tuple(sorted((info.key, info.size, info.etag) for info in infos)))


def listed(store: ArtifactStore, prefix: str, *, field: str) -> str:
    """``sha256:...`` of what ``prefix`` of ``store`` holds now, without downloading it (pinned in a run)."""
    listing = list_source(store, prefix, field=field)
    _check_pin(field, listing)
    return f"sha256:{listing.digest}"


def fetch(store: ArtifactStore, prefix: str, *, field: str, kind: str) -> Path:
    """The cache entry holding ``prefix`` of ``store`` as it is now; downloaded when there is none.

    ``kind`` (model, adapter, dataset) names the entry for people (``slmops cache ls``).
    The returned folder mirrors the keys under ``prefix``; a prefix that names one object
    gives a folder holding that object under its own name.
    """
    listing = list_source(store, prefix, field=field)
    _check_pin(field, listing)
    entry = inputs_root() / f"{kind}-{listing.digest[:32]}"
    filled = not _complete(entry, listing)
    if filled:
        _fill(store, prefix, listing, entry, field=field)
    _hold(entry)
    READ[field] = (listing.uri, f"sha256:{listing.digest}")
    if filled:  # only a fill grows the cache
        enforce_limit()
    return entry


@contextlib.contextmanager
def one_run(pinned: dict[str, str] | None = None) -> Iterator[None]:
    """A run's reads: each input is pinned at its first read (or as ``pinned``, spec field ->
    ``sha256:...``, read by the run's earlier steps) and must list the same until the end."""
    saved, was = dict(_PINNED), list(_IN_RUN)
    _PINNED.clear()
    _PINNED.update(pinned or {})
    _IN_RUN[:] = [True]
    try:
        yield
    finally:
        _PINNED.clear()
        _PINNED.update(saved)
        _IN_RUN[:] = was


def pins() -> dict[str, str]:
    """What the current run has read so far (spec field -> ``sha256:...``), to hand to its next step."""
    return dict(_PINNED)


def _check_pin(field: str, listing: Listing) -> None:
    if not _IN_RUN:
        return
    digest = f"sha256:{listing.digest}"
    pinned = _PINNED.setdefault(field, digest)
    if pinned != digest:
        raise InputError(
            f"{listing.uri} changed while the job ran (first read as {pinned[:19]}, now {digest[:19]}): "
            "one run never mixes two versions; run the job again",
            field=field,
        )


def read_digests(spec: Any) -> dict[str, str]:
    """``uri field -> sha256:...`` of each remote input of ``spec`` this process read: the manifest's
    lineage, so that two runs on different weights or data behind one URI can be told apart."""
    from slmops_pipelines.specs.locations import spec_inputs

    found = {}
    for loc in spec_inputs(spec):
        uri, digest = READ.get(loc.uri_field, ("", ""))
        if digest and uri.rstrip("/") == loc.uri.rstrip("/"):
            found[loc.uri_field] = digest
    return found


def _complete(entry: Path, listing: Listing) -> bool:
    try:
        meta = json.loads((entry / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("digest") == listing.digest


def _fill(store: ArtifactStore, prefix: str, listing: Listing, entry: Path, *, field: str) -> None:
    """Download into a private folder, check it against the listing, then rename it into place."""
    private = entry.with_name(f"{entry.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        if listing.single:
            name = prefix.strip("/").rsplit("/", 1)[-1]
            store.download_file(prefix, private / name)
            files, listed = [private / name], [(name, listing.objects[0][1])]
        else:
            files = store.download_dir(prefix, private)
            listed = sorted(
                (key[len(prefix) :].lstrip("/") if prefix else key, size) for key, size, _ in listing.objects
            )
        found = sorted((path.relative_to(private).as_posix(), path.stat().st_size) for path in files)
        if found != listed:
            raise InputError(
                f"{listing.uri} changed while it was downloaded (the listing and the files differ): run the job again",
                field=field,
            )
        meta = {"digest": listing.digest, "uri": listing.uri, "size": listing.size, "filled": time.time()}
        (private / COMPLETE).write_text(json.dumps(meta))
        try:
            os.rename(private, entry)
        except OSError:  # another job filled it meanwhile (a non-empty folder is there): theirs is ours
            if not _complete(entry, listing):
                raise
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _hold(entry: Path) -> None:
    """A shared lock on the entry for this process's life: eviction never takes an entry in use."""
    handle = (entry / IN_USE).open("ab")
    fcntl.flock(handle, fcntl.LOCK_SH)
    _HELD.append(handle)
    os.utime(entry / COMPLETE)  # last used: what eviction orders by


@dataclass(frozen=True)
class Entry:
    path: Path
    uri: str
    size: int
    last_used: float
    in_use: bool


def entries() -> list[Entry]:
    """Every complete entry, least recently used first."""
    found = []
    for path in sorted(inputs_root().iterdir()):
        marker = path / COMPLETE
        if ".partial-" in path.name or not marker.is_file():
            continue
        try:
            meta: dict[str, Any] = json.loads(marker.read_text())
        except ValueError:
            continue
        found.append(
            Entry(path, meta.get("uri", ""), int(meta.get("size", 0)), marker.stat().st_mtime, _in_use(path))
        )
    return sorted(found, key=lambda e: e.last_used)


def _in_use(path: Path) -> bool:
    lock = path / IN_USE
    if not lock.exists():
        return False
    if any(held.name == str(lock) for held in _HELD):
        return True
    with lock.open("ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def limit_bytes() -> int | None:
    """``SLMOPS_CACHE_MAX_GB`` in bytes; None: no limit."""
    raw = os.environ.get("SLMOPS_CACHE_MAX_GB", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"SLMOPS_CACHE_MAX_GB must be a number of GB (got {raw!r})") from None
    return int(value * 1e9)


def prune(*, max_bytes: int = 0) -> list[Entry]:
    """Remove least recently used entries not in use until the rest fit ``max_bytes``; return them.

    ``max_bytes=0`` removes every entry not in use.  Half-written folders of processes
    that are gone go too.
    """
    removed = []
    for path in inputs_root().glob("*.partial-*"):
        pid = path.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)
    present = entries()
    total = sum(entry.size for entry in present)
    for entry in present:
        if total <= max_bytes and max_bytes > 0:
            break
        if entry.in_use:
            continue
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(entry.path)
        removed.append(entry)
        total -= entry.size
    return removed


def enforce_limit() -> None:
    limit = limit_bytes()
    if limit is not None:
        prune(max_bytes=limit)
