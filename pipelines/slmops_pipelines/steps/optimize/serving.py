"""What a target folder carries for whoever serves it alone: how the job rendered its prompts.

A target is often loaded without its job's output around it -- KServe's storage initializer
downloads ``targets/NAME`` alone to ``/mnt/models`` -- so the folder holds
``slmops-prompts.json``: the dataset specs whose templates the job trained and evaluated
with (the job's, and each adapter's own where it has one).  ``slmops serve``, ``generate``
and ``chat`` read it when no job output tells them more.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmops_pipelines.specs import DatasetSpec

PROMPTS_FILE = "slmops-prompts.json"


def write_prompts(folder: Path, dataset: dict[str, Any] | None, adapters: dict[str, dict[str, Any]]) -> None:
    """``dataset`` and ``adapters`` (name -> dataset spec), as manifests spell them (camelCase)."""
    (folder / PROMPTS_FILE).write_text(json.dumps({"dataset": dataset, "adapters": adapters}, indent=2))


def read_prompts(folder: Path) -> tuple[DatasetSpec | None, dict[str, DatasetSpec]]:
    """The job's dataset spec and the adapters' own; (None, {}) for a folder without the file."""
    path = folder / PROMPTS_FILE
    if not path.is_file():
        return None, {}
    doc = json.loads(path.read_text())
    dataset = DatasetSpec.model_validate(doc["dataset"]) if doc.get("dataset") else None
    adapters = {name: DatasetSpec.model_validate(spec) for name, spec in (doc.get("adapters") or {}).items()}
    return dataset, adapters
