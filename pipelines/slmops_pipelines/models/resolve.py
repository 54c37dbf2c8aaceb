"""Resolve a model URI to a local folder.

* a local folder or ``file://`` folder -- used in place;
* a local ``.gguf`` file -- dequantized once into the cache (see :mod:`.gguf_import`);
* ``s3://bucket/prefix`` -- listed with the model's own keys on every use, downloaded once per
  content into the input cache (a folder saved with save_pretrained; see :mod:`.input_cache`);
* ``hf://org/name[@revision]`` -- ``huggingface_hub.snapshot_download`` into the HF cache.

The cache root is ``$SLMOPS_CACHE_DIR`` or ``~/.cache/slmops``.  Cache entries are written
to a temporary name and renamed, so an interrupted download is never mistaken for a model.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from slmops_pipelines.credentials import hf_token, s3_credentials
from slmops_pipelines.errors import InputError
from slmops_pipelines.specs import ModelSpec
from slmops_pipelines.uris import parse_uri


def cache_root() -> Path:
    root = Path(os.environ.get("SLMOPS_CACHE_DIR") or Path.home() / ".cache" / "slmops")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_model_folder(path: Path, uri: str) -> Path:
    if not (path / "config.json").is_file():
        raise InputError(f"{uri} is not a model folder (no config.json in {path})", field="model.uri")
    return path


def _from_gguf(path: Path) -> Path:
    from slmops_pipelines.models.gguf_import import import_gguf

    stat = path.stat()
    target = (
        cache_root() / "models" / f"{path.stem}-{_key(f'{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}')}"
    )
    if (target / "config.json").is_file():
        return target
    return import_gguf(path, target)


def _from_s3(uri: str, field: str) -> Path:
    """The model as the bucket holds it now, listed with the model's own keys (see input_cache)."""
    from slmops_pipelines.models import input_cache
    from slmops_pipelines.storage import open_store

    store = open_store(uri, field=field, credentials=s3_credentials("model"))
    return _check_model_folder(input_cache.fetch(store, "", field=field, kind="model"), uri)


def _from_hub(repo: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=None, token=hf_token("model")))
    except Exception as exc:  # offline, gated, missing repo: all end up here
        raise InputError(f"cannot download hf://{repo}: {exc}", field="model.uri") from exc


def model_digest(spec: ModelSpec, *, field: str = "model.uri") -> str:
    """What an ``s3://`` model holds now (``sha256:`` of its listing, with the job's keys; pinned in a
    run); its URI for any other scheme (a path or a PVC is read where it is; the Hub checks revisions)."""
    from slmops_pipelines.models import input_cache
    from slmops_pipelines.storage import open_store

    if not spec.uri.startswith("s3://"):
        return spec.uri
    store = open_store(spec.uri, field=field, credentials=s3_credentials("model"))
    return input_cache.listed(store, "", field=field)


def model_bytes(spec: ModelSpec) -> int | None:
    """The model's size as its source lists it (S3 with the model's keys, the Hub, a folder);
    None when it cannot be told cheaply (no download is made for it)."""
    parsed = parse_uri(spec.uri)
    try:
        if parsed.scheme == "s3":
            from slmops_pipelines.models import input_cache
            from slmops_pipelines.storage import open_store

            store = open_store(spec.uri, field="model.uri", credentials=s3_credentials("model"))
            return input_cache.list_source(store, "", field="model.uri").size
        if parsed.scheme == "hf":
            from huggingface_hub import HfApi

            info = HfApi().model_info(
                parsed.repo, revision=parsed.revision, files_metadata=True, token=hf_token("model")
            )
            return sum(s.size or 0 for s in info.siblings or []) or None
        path = parsed.local_path.expanduser()
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        return sum(p.stat().st_size for p in files) or None
    except Exception:  # offline, gated, not there yet: the caller falls back on a default
        return None


def resolve_model(spec: ModelSpec, *, field: str = "model.uri") -> Path:
    """A local folder holding the model named by ``spec.uri``."""
    parsed = parse_uri(spec.uri)
    if parsed.scheme == "hf":
        return _from_hub(parsed.repo, parsed.revision)
    if parsed.scheme == "s3":
        return _from_s3(spec.uri, field)
    path = parsed.local_path.expanduser().resolve()  # hf and s3 returned above
    if not path.exists():
        raise InputError(f"model not found: {path}", field="model.uri")
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path)
    return _check_model_folder(path, spec.uri)
