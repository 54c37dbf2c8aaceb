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

import dataclasses
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
    """Make sure ``store`` is free or ours; return our finished manifest if the job is already done.

    The claim records the job's ``uid`` when it has one (a cluster's job): deleting the job
    deletes only an output whose claim names that uid.  A job recreated under the same name
    with the same spec is the same job: it takes the claim over.
    """
    manifest, claim = read_json(store, MANIFEST), read_json(store, CLAIM)
    for existing in (manifest, claim):
        if existing is None:
            continue
        owner = existing.get("job") or existing
        if not _same_job(owner, identity):
            raise InputError(
                f"{store.uri} already holds the output of {owner.get('kind')} {owner.get('namespace')}/{owner.get('name')} "
                f"(spec {str(owner.get('specHash', ''))[:12]}); choose another output.uri or delete that output",
                field=field,
            )
    if claim is None or (identity.get("uid") and claim.get("uid") != identity.get("uid")):
        store.write_text(CLAIM, json.dumps(identity, indent=2))
    return manifest


def _same_job(owner: dict[str, Any], identity: dict[str, Any]) -> bool:
    keys = ("kind", "namespace", "name", "specHash")
    return all(owner.get(k) == identity.get(k) for k in keys)


# -- deleting what a job owns --------------------------------------------------------------------


@dataclasses.dataclass
class Cleanup:
    """What deleting a job's output did: objects deleted, and what was left behind and why."""

    deleted: int = 0
    kept: list[str] = dataclasses.field(default_factory=list)


def _owner_of(store: ArtifactStore, prefix: str) -> dict[str, Any] | None:
    """The job that claimed (or published) the output at ``prefix``, if any."""
    for key in (CLAIM, MANIFEST):
        document = read_json(store, f"{prefix}/{key}" if prefix else key)
        if document is not None:
            return document.get("job") or document
    return None


def _describe(owner: dict[str, Any]) -> str:
    return f"{owner.get('kind')} {owner.get('namespace')}/{owner.get('name')} (uid {owner.get('uid') or 'unknown'})"


def delete_owned_output(store: ArtifactStore, *, uid: str) -> Cleanup:
    """Delete the output at ``store`` only if its claim names job ``uid``; never another job's.

    * no claim (the job never started, or never got this far): nothing is deleted;
    * a claim of another job (a job that pointed its output at someone else's and was refused):
      nothing is deleted;
    * outputs of other jobs nested under this one (their claim or manifest below the root)
      are left as they are;
    * the claim goes last, so that an interrupted delete can be done again.
    """
    owner = _owner_of(store, "")
    if not uid or owner is None:
        return Cleanup(kept=[f"{store.uri}: never claimed by this job, nothing deleted"])
    if owner.get("uid") != uid:
        return Cleanup(kept=[f"{store.uri}: claimed by {_describe(owner)}, not this job: nothing deleted"])
    keys = [info.key for info in store.list("")]
    foreign: list[str] = []
    for key in keys:
        for marker in (CLAIM, MANIFEST):
            if key.endswith("/" + marker):
                prefix = key[: -len(marker) - 1]
                nested = _owner_of(store, prefix)
                if nested is not None and nested.get("uid") != uid and not _same_job(nested, owner):
                    foreign.append(prefix)
    foreign = sorted(set(foreign))
    doomed = [k for k in keys if k != CLAIM and not any(k.startswith(f + "/") for f in foreign)]
    deleted = store.delete_keys(doomed)
    deleted += store.delete_keys([CLAIM])
    kept = [f"{store.uri_of(f)}: the output of {_describe(_owner_of(store, f) or {})}, kept" for f in foreign]
    return Cleanup(deleted=deleted, kept=kept)


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
    root = store.local_root()
    if root is None or root.resolve() != local_dir.resolve():
        for entry in files:
            store.upload_file(local_dir / entry["path"], entry["path"])
    manifest = {
        "apiVersion": identity["apiVersion"],  # the job's API: the manifest's format goes with it
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


def verify_manifest(store: ArtifactStore, manifest: dict[str, Any]) -> list[str]:
    """Every file the manifest lists, checked: present, of its size, of its sha256 (``path: problem``)."""
    import tempfile

    sizes = {info.key: info.size for info in store.list("")}
    problems = []
    local = store.local_root()
    with tempfile.TemporaryDirectory(prefix="slmops-verify-") as tmp:
        for entry in manifest.get("files", []):
            path, size = entry["path"], entry["size"]
            if path not in sizes:
                problems.append(f"{path}: missing")
                continue
            if sizes[path] != size:
                problems.append(f"{path}: {sizes[path]} bytes, the manifest says {size}")
                continue
            if local is None:  # remote: hash a downloaded copy, one file at a time
                store.download_file(path, Path(tmp) / "file")
            copy = local / path if local is not None else Path(tmp) / "file"
            if sha256_file(copy) != entry["sha256"]:
                problems.append(f"{path}: sha256 differs from the manifest's")
    return problems
