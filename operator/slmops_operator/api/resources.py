"""The custom resources: apiVersion, kind, metadata, spec and status.

The spec models themselves live in :mod:`slmops_pipelines.specs` because the steps take
them as their typed configs, and each job kind of the registry (:mod:`slmops_pipelines.jobs`)
names its spec class; this module wraps them into Kubernetes objects, one resource class
per registered kind.  Both are the
single source of truth for the CRDs (see :mod:`slmops_operator.api.crd`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from slmops_operator.api.status import JobStatus
from slmops_pipelines import jobs
from slmops_pipelines.jobs import JobKind
from slmops_pipelines.specs import JobSpec, SpecModel

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
    """Base of the slmops custom resources: one subclass per job kind, made by :func:`resource_class`."""

    job_kind: ClassVar[JobKind]
    kind_name: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[list[str]]

    api_version: Literal["slmops.io/v1alpha1"] = Field(alias="apiVersion", description="slmops.io/v1alpha1")
    metadata: ObjectMeta
    if TYPE_CHECKING:  # each kind's resource class declares its own spec class
        spec: JobSpec
    else:
        spec: SpecModel
    status: JobStatus | None = Field(default=None, description="Observed state, written by the operator.")

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"


def resource_class(kind: JobKind) -> type[Resource]:
    """The resource of a job kind: its ``kind`` and its spec class; names and docs from the registry."""
    cls = create_model(
        kind.name,
        __base__=Resource,
        __doc__=kind.description,
        __module__=__name__,
        kind=(Literal[kind.name], Field(description=kind.name)),  # type: ignore[arg-type]
        spec=(kind.spec_class, ...),
    )
    cls.job_kind = kind
    cls.kind_name = kind.name
    cls.plural = kind.plural
    cls.short_names = list(kind.short_names)
    return cls


# One resource class per registered job kind (slmops_pipelines.jobs.KINDS).
KINDS: dict[str, type[Resource]] = {name: resource_class(kind) for name, kind in jobs.KINDS.items()}
FineTuneJob = KINDS["FineTuneJob"]
OptimizeJob = KINDS["OptimizeJob"]
