"""The contract of a job kind, and what every kind shares.

A :class:`JobKind` is everything slmops knows about one kind of job, in one place (as peft
keeps a method's config and model under one registered name): the spec class that types
its resource, how each engine runs it (the embedded local engine, the compiled pipeline
under ``kfp.local``, a KFP cluster), where its pods go, what its output location holds
when it succeeded, and the few numbers its ``status.metrics`` carries.  The operator, the
CLI and the API models ask the registry (:mod:`slmops_pipelines.jobs`) instead of asking
``if kind == ...``.

Methods that need heavy libraries import them inside: the registry imports with pydantic
alone, so that the operator image (no torch) and the pipeline definitions load it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from slmops_pipelines.specs import SpecModel
from slmops_pipelines.stages.outputs import JobRun

# The API every kind belongs to: the CRDs' group and version, the resources' apiVersion.
API_GROUP = "slmops.io"
API_VERSION = "v1alpha1"

if TYPE_CHECKING:
    from slmops_pipelines.chat.targets import ChatTarget, JobOutput, TargetChoice
    from slmops_pipelines.kubeflow.images import Images
    from slmops_pipelines.kubeflow.placement import Placement, SecretMount
    from slmops_pipelines.local.reporting import Reporter
    from slmops_pipelines.stages.outputs import JobOutcome
    from slmops_pipelines.storage import ArtifactStore


@dataclass(frozen=True)
class Upstream:
    """The job another job reads its input from (an OptimizeJob's ``fineTuneJobRef``)."""

    kind: str  # its kind
    name: str  # its name, in the same namespace
    field: str  # the spec field that names it, for errors


SpecT = TypeVar("SpecT", bound=SpecModel)


@dataclass
class SummaryTable:
    """A table for people (``slmops run``): plain cells, rendered by the CLI."""

    title: str
    columns: list[str] = field(default_factory=list)  # empty: a key/value table without header
    rows: list[list[str]] = field(default_factory=list)
    highlight: int | None = None  # the row to stand out (a search's best trial)
    # "lines": one ``key: value`` line a row, for long values people copy (artifact URIs).
    layout: Literal["table", "lines"] = "table"


def float_values(values: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``values``, rounded; None, bools and text are left out (status wants numbers)."""
    return {
        key: round(float(value), 6)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


@dataclass(frozen=True)
class JobMeta:
    """The resource's own metadata, as far as its pods carry it."""

    name: str
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)


def run_facts(metrics_doc: dict[str, Any]) -> list[list[str]]:
    """What ``slmops run`` says of any job beyond its figures: what it cost, where MLflow has it."""
    rows = []
    usage = metrics_doc.get("usage") or {}
    if usage.get("stages"):
        rows.append(["cost", f"{usage['gpu_seconds']:g} GPU-s, {usage['cpu_seconds']:g} CPU-s"])
    mlflow = (metrics_doc.get("tracking") or {}).get("mlflow") or {}
    if mlflow:
        rows.append(["MLflow", mlflow.get("url") or f"not logged: {mlflow.get('error')}"])
    return rows


class JobKind(ABC, Generic[SpecT]):
    """One kind of job.  A new kind is a subclass in its own module and one line in the registry.

    Its name, plural, short names, run prefix and API version are written here and nowhere
    else: the resource classes and CRDs, the RBAC and webhook rules (the chart reads the CRDs),
    run names, output identities and messages all take them from the kind.
    """

    name: ClassVar[str]  # the resource kind, e.g. "EvaluateJob"
    plural: ClassVar[str]  # its lower-case plural, as in RBAC rules and URLs
    short_names: ClassVar[tuple[str, ...]]  # `kubectl get` short names
    run_prefix: ClassVar[str]  # the start of its run names: <prefix>-<namespace>-<name>-<digest>
    spec_class: type[SpecT]
    description: ClassVar[str]  # one sentence: the resource's description in the CRD
    group: ClassVar[str] = API_GROUP
    version: ClassVar[str] = API_VERSION
    # Extra `kubectl get` columns, between Phase/Progress and Message/Age.
    printer_columns: ClassVar[tuple[dict[str, Any], ...]] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def new_run(self, name: str, spec: SpecT, *, default_output: str, **identity: str) -> JobRun:
        """A run of this kind; its output location resolved here, once: ``spec.output.uri``, else ``default_output``.

        ``identity``: the rest of :class:`JobRun`'s identity (``namespace``, ``uid``, ``source_uri``).
        """
        output_uri = spec.output.uri or default_output  # type: ignore[attr-defined]
        return JobRun(
            api_version=self.api_version,
            kind=self.name,
            name=name,
            spec=spec,
            output_uri=output_uri,
            **identity,
        )

    def job_context(self) -> dict[str, str]:
        """The kind's part of the pipelines' ``job`` parameter (the tasks rebuild the JobRun from it)."""
        return {"kind": self.name, "apiVersion": self.api_version}

    # -- what it needs ---------------------------------------------------------------------------

    def upstream(self, spec: Any) -> Upstream | None:
        """The job whose output this one reads (it waits for that job to succeed); None by default."""
        return None

    # -- running it --------------------------------------------------------------------------------

    @abstractmethod
    def run_local(self, run: JobRun, *, reporter: Reporter | None = None) -> JobOutcome:
        """Run the whole job in this process with the embedded engine (``slmops run``, the local backend)."""

    def run_kfp_local(self, run: JobRun) -> JobOutcome:
        """Run the job's compiled pipeline on this machine with ``kfp.local``."""
        from slmops_pipelines.kubeflow.kfp_local import run_compiled

        store, finished = self.claim_output(run)
        if finished is None:
            pipeline_name, factory = self.pipeline(run.spec)
            job = {"name": run.name, "namespace": run.namespace}
            run_compiled(
                factory(placement=self.placement(run.spec).for_local()),
                name=pipeline_name,
                output_uri=run.output_uri,
                arguments=self.run_arguments(
                    spec=run.spec, job=job, output_uri=run.output_uri, source_uri=run.source_uri
                ),
            )
        return self.read_outcome(store, already_complete=finished is not None)

    @abstractmethod
    def claim_output(self, run: JobRun) -> tuple[ArtifactStore, dict[str, Any] | None]:
        """Check the inputs, claim the output location; return it and this job's manifest if finished."""

    # -- on a cluster --------------------------------------------------------------------------------

    @abstractmethod
    def pipeline(self, spec: Any) -> tuple[str, Callable[..., Callable]]:
        """The name and the factory (``placement=``, ``images=``) of the KFP pipeline that runs ``spec``."""

    def placement(
        self,
        spec: SpecT,
        *,
        cache_pvc: str | None = None,
        cache_max_gb: float | None = None,
        secrets: list[SecretMount] | None = None,
        job: JobMeta | None = None,
    ) -> Placement:
        """Where the pipeline's pods go and what they get: ``spec.resources``, then the kind's own needs.

        ``job``: the resource's name, namespace and labels -- its pods' cost labels and Kueue's.
        """
        from slmops_pipelines.kubeflow.placement import Placement, job_pod_labels

        labels = job_pod_labels(self.name, job.name, job.namespace, job.labels) if job else {}
        return Placement.for_resources(
            spec.resources,  # type: ignore[attr-defined]
            secrets=list(secrets or []),
            cache_pvc=cache_pvc,
            cache_max_gb=cache_max_gb,
            **labels,
            **self.pod_settings(spec),
            **self.placement_settings(spec),
        )

    def placement_settings(self, spec: SpecT) -> dict[str, Any]:
        """What this kind's pipeline needs beyond the spec's resources (GPUs per step, parallelism)."""
        return {}

    def images(self, spec: Any, *, registry: str | None = None) -> Images:
        """The images of the job's pods: ``spec.image`` for all of them, else slmops' own (from ``registry``)."""
        from slmops_pipelines.kubeflow.images import Images

        return Images.only(spec.image) if spec.image else Images.default(registry=registry)

    @staticmethod
    def pod_settings(spec: Any) -> dict[str, Any]:
        """What every kind's placement takes from the spec beyond ``resources``."""
        from slmops_pipelines.specs.locations import spec_claims

        return {
            "image_pull_secrets": [ref.name for ref in spec.image_pull_secrets],
            "claims": spec_claims(spec),
        }

    def run_arguments(
        self, *, spec: Any, job: dict[str, Any], output_uri: str, source_uri: str
    ) -> dict[str, Any]:
        """The pipeline's arguments: the spec (JSON, camelCase, no nulls), the job context, the output."""
        return {
            "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
            "job": {**job, **self.job_context()},
            "output_uri": output_uri,
            **self.pipeline_settings(spec),
        }

    def pipeline_settings(self, spec: Any) -> dict[str, Any]:
        """The typed, described parameters the KFP dashboard shows beside the spec (kubeflow/settings.py)."""
        return {}

    def compiled_key(self, spec: Any, placement: Placement, images: Images) -> str:
        """What a compiled package depends on: the pipeline and the placement, never the spec's values."""
        import json

        pipeline_name, _ = self.pipeline(spec)
        return json.dumps([pipeline_name, placement.model_dump(mode="json"), repr(images)], sort_keys=True)

    # -- what it leaves ------------------------------------------------------------------------------

    @abstractmethod
    def output_artifacts(self, store: ArtifactStore) -> dict[str, str]:
        """Artifact name -> URI, read from a succeeded output location (manifest, metrics)."""

    @abstractmethod
    def summary_metrics(self, metrics_doc: dict[str, Any]) -> dict[str, float]:
        """The few numbers ``status.metrics`` carries, from ``metrics.json`` (flat, stable keys)."""

    def status_details(self, spec: Any, artifacts: dict[str, str]) -> dict[str, Any]:
        """What a succeeded job's status shows beyond artifacts and metrics (none by default)."""
        return {}

    def progress(self, spec: Any, store: ArtifactStore) -> dict[str, Any]:
        """What a running job's output location says beyond the stage and the step (none by default)."""
        return {}

    @abstractmethod
    def summary_tables(self, name: str, outcome: JobOutcome, *, wall_time_s: float) -> list[SummaryTable]:
        """The tables ``slmops run`` prints when the job finished."""

    def chat_loader(self) -> Callable[[JobOutput, TargetChoice], ChatTarget] | None:
        """What loads a succeeded output of this kind for generate/chat/serve (``output, choice``).

        None (the default): its output holds no model to talk to.
        """
        return None

    def chat_target(self, output: JobOutput, choice: TargetChoice) -> ChatTarget:
        """The model in a succeeded output that ``slmops generate``/``chat``/``serve`` load, and how to render for it."""
        from slmops_pipelines.errors import InputError

        loader = self.chat_loader()
        if loader is None:
            raise InputError(f"a {self.name}'s output holds no model to generate with", field="target")
        return loader(output, choice)

    def read_outcome(self, store: ArtifactStore, *, already_complete: bool = False) -> JobOutcome:
        """The outcome of a succeeded job, from its output location alone."""
        from slmops_pipelines.errors import JobError
        from slmops_pipelines.stages.outputs import JobOutcome
        from slmops_pipelines.steps import publish

        if not store.exists(publish.MANIFEST):
            raise JobError(
                f"the pipeline finished without a manifest at {store.uri}", reason="PipelineFailed"
            )
        return JobOutcome(
            output_uri=store.uri,
            metrics=publish.read_json(store, "metrics.json") or {},
            artifacts=self.output_artifacts(store),
            already_complete=already_complete,
        )
