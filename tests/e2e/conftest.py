"""End-to-end tests against a real cluster (kind or k3d with the chart installed).

They run only when ``KUBECONFIG`` is set, and drive the cluster the way a user does: the
Kubernetes API, nothing in-process.  What the cluster must have:

* the slmops CRDs, the operator (``helm install slmops charts/slmops``) and its webhook;
* for the job itself: a model and a dataset the operator's backend can read, given by
  ``SLMOPS_E2E_MODEL`` (default ``hf://HuggingFaceTB/SmolLM2-135M-Instruct``),
  ``SLMOPS_E2E_DATASET`` (a JSONL with ``phrase`` and ``tone``) and ``SLMOPS_E2E_OUTPUT``
  (``s3://bucket/prefix``, with ``SLMOPS_E2E_SECRET`` naming the credentials Secret);
* ``SLMOPS_E2E_NAMESPACE`` (default ``default``) and ``SLMOPS_E2E_TIMEOUT`` seconds (default 1800).
"""

from __future__ import annotations

import os
import uuid

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("KUBECONFIG"):
        return
    skip = pytest.mark.skip(reason="e2e: set KUBECONFIG to a cluster with the slmops chart installed")
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def api():
    from kubernetes import client, config

    config.load_kube_config()
    return client.CustomObjectsApi()


@pytest.fixture(scope="session")
def namespace() -> str:
    return os.environ.get("SLMOPS_E2E_NAMESPACE", "default")


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:6]
