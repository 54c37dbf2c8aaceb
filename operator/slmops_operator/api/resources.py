"""The custom resources: apiVersion, kind, metadata, spec and status.

The spec models themselves live in :mod:`slmops_pipelines.specs` because the steps take
them as their typed configs, and each job kind of the registry (:mod:`slmops_pipelines.jobs`)
names its spec class; this module wraps them into Kubernetes objects, one resource class
per registered kind.  Both are the
single source of truth for the CRDs (see :mod:`slmops_operator.api.crd`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from slmops_operator.api.status import JobStatus
from slmops_pipelines import jobs
from slmops_pipelines.jobs import JobKind
from slmops_pipelines.specs import JobSpec, SpecModel

# The API's group and version are the registry's (slmops_pipelines.jobs.base).
GROUP = jobs.API_GROUP
VERSION = jobs.API_VERSION
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

    job_kind: ClassVar[JobKind[Any]]
    kind_name: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[list[str]]

    api_version: str = Field(alias="apiVersion", description=API_VERSION)  # each kind's class: a Literal
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


def resource_class(kind: JobKind[Any]) -> type[Resource]:
    """The resource of a job kind: its ``kind`` and its spec class; names and docs from the registry."""
    cls = create_model(
        kind.name,
        __base__=Resource,
        __doc__=kind.description,
        __module__=__name__,
        kind=(Literal[kind.name], Field(description=kind.name)),  # type: ignore[arg-type]
        api_version=(  # type: ignore[arg-type]
            Literal[kind.api_version],
            Field(alias="apiVersion", description=kind.api_version),
        ),
        spec=(kind.spec_class, ...),
    )
    cls.job_kind = kind
    cls.kind_name = kind.name
    cls.plural = kind.plural
    cls.short_names = list(kind.short_names)
    return cls


_MADE: dict[str, type[Resource]] = {}


def resource_of(kind: str) -> type[Resource]:
    """The resource class of a registered kind (made once; a KeyError names the known kinds)."""
    job = jobs.job_kind(kind)
    made = _MADE.get(kind)
    if made is None or made.job_kind is not job:
        made = _MADE[kind] = resource_class(job)
    return made


def resources() -> dict[str, type[Resource]]:
    """One resource class per kind of the registry (slmops_pipelines.jobs.KINDS), in its order."""
    return {name: resource_of(name) for name in jobs.KINDS}
