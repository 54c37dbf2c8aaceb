"""Build the right :class:`ArtifactStore` for a URI.

``s3://bucket/prefix`` opens an :class:`S3Store` (endpoint and credentials from the
environment); ``file:///abs/path`` or a plain path opens a :class:`LocalStore`, relative
paths being taken against the current working directory; ``pvc://claim/path`` opens a
:class:`LocalStore` where the pod mounts the claim (same claim, manifest-last and ownership
rules as any local output).  ``hf://`` names a model or
dataset on the Hugging Face Hub: readable, but not a place to write artifacts.

Opening a store does no I/O; call :meth:`ArtifactStore.check` to fail fast.  Every error
carries ``field`` (e.g. ``output.uri``) so the user sees which spec field to fix.
"""

from __future__ import annotations

from pathlib import Path

from slmops_pipelines.credentials import S3Credentials
from slmops_pipelines.errors import StorageError
from slmops_pipelines.storage.base import ArtifactStore
from slmops_pipelines.uris import UriError, parse_uri


def open_store(
    uri: str, *, field: str | None = None, credentials: S3Credentials | None = None
) -> ArtifactStore:
    """The store rooted at ``uri``; raise StorageError (with ``field``) if it cannot be one.

    ``credentials`` (S3Store keyword arguments, see :func:`slmops_pipelines.credentials.s3_credentials`)
    replace the default ``AWS_*`` environment for this store only.
    """
    try:
        parsed = parse_uri(uri)
    except UriError as exc:
        raise StorageError(str(exc), field=field) from exc

    if parsed.scheme == "s3":
        # Imported here so that local-only runs never import the S3 module.
        from slmops_pipelines.storage.s3 import S3Store

        return S3Store(parsed.bucket, parsed.key, field=field, **(credentials or {}))
    if parsed.scheme in ("file", "pvc"):  # a claim is a mounted folder to the steps
        from slmops_pipelines.storage.local import LocalStore

        assert parsed.path is not None  # parse_uri sets it for every file and pvc URI
        return LocalStore(Path.cwd() / parsed.path.expanduser(), field=field, confined=parsed.scheme == "pvc")
    raise StorageError(
        f"{uri!r} is a Hugging Face Hub repository and cannot be an artifact store; "
        "use s3://bucket/prefix or a local path",
        field=field,
    )
