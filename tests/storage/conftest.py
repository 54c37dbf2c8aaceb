"""Fixtures of the storage tests: one root, in both kinds of store."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """A store root URI: a local folder, then a prefix in a real SeaweedFS bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    request.getfixturevalue("s3_env")
    return f"s3://{bucket}/store"
