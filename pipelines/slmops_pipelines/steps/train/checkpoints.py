"""Checkpoints that are safe to resume from.

The Trainer writes ``checkpoint-N/`` file by file; a process killed mid-save leaves a partial
folder that ``get_last_checkpoint`` would happily pick.  We mark a checkpoint complete with a
marker file written after the Trainer has finished saving it (``on_save``), and resume only
from marked ones.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from slmops_pipelines.errors import StorageError

if TYPE_CHECKING:
    from slmops_pipelines.storage import ArtifactStore

CHECKPOINTS = "checkpoints"
COMPLETE_MARKER = ".slmops-complete"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT_RE.match(path.name)
    return int(match[1]) if match else None


def complete_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints under ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if checkpoint_step(p) is not None and (p / COMPLETE_MARKER).exists()]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def latest_complete_checkpoint(folder: Path) -> Path | None:
    done = complete_checkpoints(folder)
    return done[-1] if done else None


# -- mirrored to a store, for pods that come and go ------------------------------------------


def restore_checkpoint(store: ArtifactStore, work: Path) -> int | None:
    """Download the latest complete checkpoint from ``store``; return its step."""
    steps = sorted(
        {
            found
            for info in store.list(CHECKPOINTS)
            if info.key.endswith("/" + COMPLETE_MARKER)
            and (found := checkpoint_step(Path(info.key).parent)) is not None
        }
    )
    if not steps:
        return None
    name = f"checkpoint-{steps[-1]}"
    target = work / CHECKPOINTS / name
    if not (target / COMPLETE_MARKER).exists():
        shutil.rmtree(target, ignore_errors=True)
        store.download_dir(f"{CHECKPOINTS}/{name}", target, last=(COMPLETE_MARKER,))  # the marker last
    return steps[-1]


def sync_checkpoint(store: ArtifactStore, work: Path, step: int) -> None:
    """Upload checkpoint-N if complete (its marker last), and drop stored ones gone locally."""
    folder = work / CHECKPOINTS / f"checkpoint-{step}"
    marker = folder / COMPLETE_MARKER
    for _ in range(20):  # the marker follows the Trainer's save by a moment
        if marker.exists():
            break
        time.sleep(0.1)
    if marker.exists():
        _upload_checkpoint(store, folder, f"{CHECKPOINTS}/checkpoint-{step}")
    # The Trainer rotates old checkpoints away (saveTotalLimit): mirror that in the store.
    local_dir = work / CHECKPOINTS
    local_names = {p.name for p in local_dir.iterdir()} if local_dir.is_dir() else set()
    stored_names = {info.key.split("/")[1] for info in store.list(CHECKPOINTS) if info.key.count("/") >= 2}
    for stale in sorted(stored_names - local_names):
        store.delete_prefix(f"{CHECKPOINTS}/{stale}")


def _upload_checkpoint(store: ArtifactStore, folder: Path, prefix: str) -> None:
    """Upload a complete checkpoint, its marker last; drop the copy if the Trainer rotated it."""
    marker = folder / COMPLETE_MARKER
    files: list[Path] = []
    try:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p != marker)
        for path in files:
            store.upload_file(path, f"{prefix}/{path.relative_to(folder).as_posix()}")
        store.upload_file(marker, f"{prefix}/{COMPLETE_MARKER}")
    except (StorageError, OSError):
        # A complete checkpoint only loses files when the Trainer rotates it away
        # (saveTotalLimit) while it is being uploaded: a newer one exists.  rmtree removes the
        # files before the folder, so ask whether any file went, not whether the folder did.
        # Without its marker the partial copy never counts; drop it.
        if marker.exists() and all(path.exists() for path in files):
            raise
        store.delete_prefix(prefix)
