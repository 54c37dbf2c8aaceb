"""Parsing of the URIs that specs accept for models, datasets and outputs.

Accepted forms:

* ``hf://org/name[@revision]``  -- a Hugging Face Hub repository (models and datasets);
* ``s3://bucket/key``           -- an object or prefix in S3-compatible storage;
* ``file:///abs/path`` or a plain path (absolute, or relative to the working directory);
* ``pvc://claim/path``          -- a path on a PersistentVolumeClaim (KServe's ``storageUri``
  convention): the pipeline's pods mount the claim at ``$SLMOPS_PVC_ROOT/<claim>``
  (``/mnt/pvc/<claim>``), so to the steps it is that local path.

A tenant writes these strings, so an ``s3://`` key or a ``pvc://`` path is a plain list of
names: no ``..`` (it would leave the claim, or the prefix admission checked), no ``.`` and
no empty segment (``a//b`` is another S3 key than ``a/b``, so a prefix check could be
fooled).  A string that looks like a scheme without ``//`` (``file:/etc``, ``s3:bucket``)
is refused rather than taken as a relative folder of that name.

Parsing is pure string work: nothing here touches the network or the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Scheme = Literal["hf", "s3", "file", "pvc"]
PVC_ROOT = "/mnt/pvc"  # where pods mount the claims a job's URIs name

_HF_RE = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.\-]*(?:/[\w.\-]+)?)(?:@(?P<rev>[\w.\-/]+))?$")
_PVC_RE = re.compile(r"^pvc://(?P<claim>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)(?:/(?P<path>.*))?$")
_S3_RE = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(?P<key>.*))?$")
_SCHEME_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


@dataclass(frozen=True)
class ParsedUri:
    scheme: Scheme
    raw: str
    repo: str = ""  # hf
    revision: str | None = None  # hf
    bucket: str = ""  # s3
    key: str = ""  # s3 (no leading or trailing slash)
    path: Path | None = None  # file; pvc: where the claim's path is mounted
    claim: str = ""  # pvc

    def __str__(self) -> str:
        return self.raw

    @property
    def local_path(self) -> Path:
        """The path of a ``file`` URI; UriError for hf:// and s3://, which name no local path."""
        if self.path is None:
            raise UriError(f"{self.raw!r} is not a local path")
        return self.path


class UriError(ValueError):
    pass


def parse_uri(uri: str) -> ParsedUri:
    """Parse ``uri`` or raise :class:`UriError` saying which forms are accepted."""
    uri = uri.strip()
    if not uri:
        raise UriError("must not be empty")
    if uri.startswith("hf://"):
        match = _HF_RE.match(uri)
        if not match:
            raise UriError(f"{uri!r} is not a valid hf:// URI (expected hf://org/name[@revision])")
        return ParsedUri("hf", uri, repo=match["repo"], revision=match["rev"])
    if uri.startswith("s3://"):
        match = _S3_RE.match(uri)
        if not match:
            raise UriError(f"{uri!r} is not a valid s3:// URI (expected s3://bucket[/key])")
        key = (match["key"] or "").strip("/")
        _check_segments(uri, key, "an s3:// key")
        return ParsedUri("s3", uri, bucket=match["bucket"], key=key)
    if uri.startswith("pvc://"):
        match = _PVC_RE.match(uri)
        if not match or len(match["claim"]) > 253:
            raise UriError(f"{uri!r} is not a valid pvc:// URI (expected pvc://claim-name/path)")
        inside = (match["path"] or "").strip("/")
        _check_segments(uri, inside, "a pvc:// path")
        mounted = Path(pvc_root()) / match["claim"] / inside
        return ParsedUri("pvc", uri, claim=match["claim"], key=inside, path=mounted)
    if uri.startswith("file://"):
        path = uri[len("file://") :]
        if not path.startswith("/"):
            # file://runs/x would name the host "runs": a file URI carries an absolute path.
            raise UriError(
                f"{uri!r}: file:// takes an absolute path (file:///abs/path); use a plain path for a relative one"
            )
        return ParsedUri("file", uri, path=Path(path))
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise UriError(
            f"unsupported scheme {scheme!r} in {uri!r} (use hf://, s3://, pvc://, file:// or a path)"
        )
    if _SCHEME_LIKE.match(uri):
        raise UriError(
            f"{uri!r} looks like a URI without '//' (use hf://, s3://, pvc://, file:///abs/path; "
            f"write ./{uri} for a folder of that name)"
        )
    return ParsedUri("file", uri, path=Path(uri))


def _check_segments(uri: str, key: str, what: str) -> None:
    """A key is a list of names: no '..' (leaving the prefix), no '.' or empty segment (aliases)."""
    if not key:
        return
    for segment in key.split("/"):
        if segment == "..":
            raise UriError(f"{uri!r}: {what} may not contain '..' (it would leave its prefix)")
        if segment in ("", "."):
            raise UriError(f"{uri!r}: {what} may not contain '//' or '/./' (write each folder once)")


def pvc_root() -> str:
    """Where PersistentVolumeClaims are mounted: ``$SLMOPS_PVC_ROOT`` (tests, a laptop) or ``/mnt/pvc``."""
    import os

    return os.environ.get("SLMOPS_PVC_ROOT") or PVC_ROOT


def pvc_claims(uris: list[str]) -> list[str]:
    """Every claim the ``pvc://`` URIs among ``uris`` name, once each, in order."""
    found: list[str] = []
    for uri in uris:
        match = _PVC_RE.match(uri) if uri.startswith("pvc://") else None
        if match and match["claim"] not in found:
            found.append(match["claim"])
    return found
