"""``spec.serve`` of an OptimizeJob: put a target that passed its gates behind KServe.

The operator creates an InferenceService (``serving.kserve.io/v1beta1``) owned by the job,
for the chart's ClusterServingRuntime ``slmops-onnxruntime-genai`` (``slmops serve`` in the
server image, CPU only), once the job succeeded -- that is, once every gate passed.  The
model KServe downloads is the job's own output (its ``targets/<name>`` folder), resolved by
the operator, never a location written in status.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from slmops_pipelines.specs.base import SpecModel
from slmops_pipelines.specs.resources import QUANTITY

# KServe names Services and Deployments after an InferenceService: a DNS-1035 label, with
# room for the suffixes it adds (``-predictor``, ``-default``).
SERVICE_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
SERVING_RUNTIME = "slmops-onnxruntime-genai"  # the chart's ClusterServingRuntime
SERVED_PROVIDER = "CPUExecutionProvider"  # what that runtime's image runs


class ServeResources(SpecModel):
    """Compute for each replica of the server."""

    cpu: Annotated[str, Field(pattern=QUANTITY)] | None = Field(
        default=None, description="CPU request, e.g. 2 (the server sizes its threads from the limit)."
    )
    memory: Annotated[str, Field(pattern=QUANTITY)] | None = Field(
        default=None, description="Memory request, e.g. 2Gi."
    )
    cpu_limit: Annotated[str, Field(pattern=QUANTITY)] | None = Field(default=None, description="CPU limit.")
    memory_limit: Annotated[str, Field(pattern=QUANTITY)] | None = Field(
        default=None, description="Memory limit."
    )

    def requirements(self) -> dict[str, dict[str, str]]:
        """As a container's ``resources``: requests and limits, the ones given."""
        requests = {"cpu": self.cpu, "memory": self.memory}
        limits = {"cpu": self.cpu_limit, "memory": self.memory_limit}
        out = {
            "requests": {k: v for k, v in requests.items() if v},
            "limits": {k: v for k, v in limits.items() if v},
        }
        return {k: v for k, v in out.items() if v}


class ServeSpec(SpecModel):
    """Serve a target with KServe once the job succeeded (every gate passed)."""

    target: str | None = Field(
        default=None,
        description=f"The target to serve (a {SERVED_PROVIDER} one); default: the first such target "
        "that keeps its adapters separate (mergeAdapter: false), else the first.",
    )
    name: str | None = Field(
        default=None,
        pattern=SERVICE_NAME,
        max_length=45,
        description="The InferenceService's name (default: the job's); also the base model's id in the API.",
    )
    replicas: int = Field(default=1, ge=1, le=100, description="Server replicas.")
    resources: ServeResources = Field(default_factory=ServeResources, description="Per replica.")
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        description="The predictor's service account: the one whose Secret gives KServe's storage "
        "initializer the keys to the output (docs/install.md).",
    )
