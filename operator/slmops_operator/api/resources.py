"""The custom resources: apiVersion, kind, metadata, spec and status.

The spec models themselves live in :mod:`slmops_pipelines.specs` because the steps take
them as their typed configs; this module wraps them into Kubernetes objects.  Both are the
single source of truth for the CRDs (see :mod:`slmops_operator.api.crd`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from slmops_operator.api.status import JobStatus
from slmops_pipelines.specs import FineTuneJobSpec, OptimizeJobSpec, SpecModel

GROUP = "slmops.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
# The spec fields that may change after creation: they change how a job is run, not what it
# produces.  Every other spec field is immutable (the CRD's CEL rules and the webhook).
MUTABLE_SPEC_FIELDS = frozenset({"suspend", "ttlSecondsAfterFinished"})


class ObjectMeta(BaseModel):
    """The parts of Kubernetes object metadata that slmops reads; the rest is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="Job name (a DNS-1123 label: it names pods, runs and output folders).",
    )
    namespace: str | None = Field(default=None, description="Namespace.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Resource(SpecModel):
    """Base of the slmops custom resources."""

    kind_name: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[list[str]]

    api_version: Literal["slmops.io/v1alpha1"] = Field(alias="apiVersion", description="slmops.io/v1alpha1")
    metadata: ObjectMeta
    status: JobStatus | None = Field(default=None, description="Observed state, written by the operator.")

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    def identity(self) -> dict[str, Any]:
        """What makes two objects 'the same job' for output ownership."""
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind_name,
            "name": self.name,
            "namespace": self.namespace,
        }


class FineTuneJob(Resource):
    """Fine-tune a small language model (LoRA, QLoRA, DoRA or full) and store the result."""

    kind_name: ClassVar[str] = "FineTuneJob"
    plural: ClassVar[str] = "finetunejobs"
    short_names: ClassVar[list[str]] = ["ftj", "finetune"]

    kind: Literal["FineTuneJob"] = Field(description="FineTuneJob")
    spec: FineTuneJobSpec


class OptimizeJob(Resource):
    """Convert a model to ONNX, optimize it per execution provider, evaluate and gate it."""

    kind_name: ClassVar[str] = "OptimizeJob"
    plural: ClassVar[str] = "optimizejobs"
    short_names: ClassVar[list[str]] = ["optj", "optimize"]

    kind: Literal["OptimizeJob"] = Field(description="OptimizeJob")
    spec: OptimizeJobSpec


KINDS: dict[str, type[Resource]] = {cls.kind_name: cls for cls in (FineTuneJob, OptimizeJob)}
