"""The manifest: the last file written, and the definition of a complete output.

``manifest.json`` records what was produced and from what: the job's identity and full spec,
the base model, the dataset fingerprint, library versions, and the sha256 and size of every
file.  It is written only after every other file is in place, so an output location without
a manifest is incomplete by definition -- every reader (``slmops run``, OptimizeJob, the
operator) treats it so.

Ownership: at start a job writes ``.slmops/job.json`` (its identity).  A location holding
another job's claim or manifest is refused rather than overwritten.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from slmops_pipelines.errors import InputError
from slmops_pipelines.storage import ArtifactStore

MANIFEST = "manifest.json"
CLAIM = ".slmops/job.json"
_LIBRARIES = [
    "slmops",
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "bitsandbytes",
    "tokenizers",
]


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(root: Path, *, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST or rel.startswith(exclude):
            continue
        entries.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
    return entries


def read_json(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    if not store.exists(key):
        return None
    return json.loads(store.read_text(key))


def claim_output(
    store: ArtifactStore, identity: dict[str, Any], *, field: str = "output.uri"
) -> dict[str, Any] | None:
    """Make sure ``store`` is free or ours; return our finished manifest if the job is already done."""
    for key in (MANIFEST, CLAIM):
        existing = read_json(store, key)
        if existing is None:
            continue
        owner = existing.get("job") or existing
        if _same_job(owner, identity):
            if key == MANIFEST:
                return existing
            break
        raise InputError(
            f"{store.uri} already holds the output of {owner.get('kind')} {owner.get('namespace')}/{owner.get('name')} "
            f"(spec {str(owner.get('specHash', ''))[:12]}); choose another output.uri or delete that output",
            field=field,
        )
    else:
        store.write_text(CLAIM, json.dumps(identity, indent=2))
    return None


def _same_job(owner: dict[str, Any], identity: dict[str, Any]) -> bool:
    keys = ("kind", "namespace", "name", "specHash")
    return all(owner.get(k) == identity.get(k) for k in keys)


def write_manifest(
    store: ArtifactStore,
    local_dir: Path,
    *,
    identity: dict[str, Any],
    spec: dict[str, Any],
    inputs: dict[str, Any],
    exclude: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Upload ``local_dir`` (if the store is remote), then write the manifest -- last."""
    files = file_entries(local_dir, exclude=exclude)
    if store.local_root() is None or store.local_root().resolve() != local_dir.resolve():
        for entry in files:
            store.upload_file(local_dir / entry["path"], entry["path"])
    manifest = {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "Manifest",
        "job": identity,
        "spec": spec,
        "inputs": inputs,
        "libraries": library_versions(),
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    store.write_text(MANIFEST, json.dumps(manifest, indent=2))
    return manifest
