"""One artifact-store interface for local folders and S3-compatible storage.

Use :func:`open_store` with a URI; every step reads and writes artifacts through the
returned :class:`ArtifactStore`, so the same code serves a laptop folder and a bucket.
"""

from slmops_pipelines.storage.base import ArtifactStore, ObjectInfo
from slmops_pipelines.storage.factory import open_store

__all__ = ["ArtifactStore", "ObjectInfo", "open_store"]
