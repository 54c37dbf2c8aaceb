"""Checkpoints that are safe to resume from.

The Trainer writes ``checkpoint-N/`` file by file; a process killed mid-save leaves a partial
folder that ``get_last_checkpoint`` would happily pick.  We mark a checkpoint complete with a
marker file written after the Trainer has finished saving it (``on_save``), and resume only
from marked ones.
"""

from __future__ import annotations

import re
from pathlib import Path

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
