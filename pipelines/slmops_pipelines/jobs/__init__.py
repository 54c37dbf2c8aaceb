"""The job kinds, and the one face the operator and the CLI see of the pipelines.

**The registry.**  :data:`KINDS` maps a resource kind to its :class:`JobKind`: the spec
class, how each engine runs it, its pipeline and placement, the artifacts and summary
metrics of its output.  Everything that differs between a FineTuneJob and an OptimizeJob
lives in :mod:`.finetune` and :mod:`.optimize`; the rest of slmops asks the registry.
Adding a kind is one module with a :class:`JobKind` subclass and one line below (see
docs/design.md, "Adding a job kind").

**The face.**  The operator (its backends, handlers and CLI) imports this module and
:mod:`slmops_pipelines.specs` (the API's types), nothing else of the pipelines: how a job
is compiled, run on this machine, or read back from its output location stays behind the
functions here, so the stages, the storage and the KFP tasks can change without the
operator noticing.  ``tests/packaging/test_layers.py`` keeps it so.

Importing it costs pydantic, not torch or kfp: what needs them is imported inside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slmops_pipelines.chat.engines import Sampling
from slmops_pipelines.chat.session import NO_ADAPTER, ChatSession, Reply
from slmops_pipelines.chat.targets import ChatTarget
from slmops_pipelines.credentials import (
    S3Credentials,
    SecretRef,
    s3_credentials_from,
    secret_refs,
    without_ambient_credentials,
)
from slmops_pipelines.errors import InputError, JobError
from slmops_pipelines.jobs.base import (
    API_GROUP,
    API_VERSION,
    JobKind,
    JobMeta,
    JobRun,
    SummaryTable,
    Upstream,
)
from slmops_pipelines.jobs.finetune import FineTuneJobKind
from slmops_pipelines.jobs.optimize import OptimizeJobKind
from slmops_pipelines.local.reporting import NullReporter, Reporter
from slmops_pipelines.specs.locations import Location, spec_inputs, spec_locations, spec_remote_code
from slmops_pipelines.stages.outputs import JobOutcome
from slmops_pipelines.steps.publish import Cleanup

if TYPE_CHECKING:
    from pathlib import Path

    from slmops_pipelines.kubeflow.images import Images


def _registry(*kinds: JobKind[Any]) -> dict[str, JobKind[Any]]:
    return {kind.name: kind for kind in kinds}


# The job kinds: one line each.
KINDS: dict[str, JobKind[Any]] = _registry(
    FineTuneJobKind(),
    OptimizeJobKind(),
)


def register_kind(kind: JobKind[Any]) -> JobKind[Any]:
    """Add a kind at runtime (a plugin, a test): from then on it is served like the built-in ones."""
    for other in KINDS.values():
        if other.name != kind.name and (other.plural == kind.plural or other.run_prefix == kind.run_prefix):
            raise ValueError(f"{kind.name}: plural or run prefix already taken by {other.name}")
    KINDS[kind.name] = kind
    return kind


def job_kind(name: str) -> JobKind[Any]:
    """The kind called ``name``; a KeyError naming the known ones otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown job kind {name!r} (known: {', '.join(KINDS)})") from None


# -- on a cluster ----------------------------------------------------------------------------------


# A job's name and namespace in its pods' labels are compiled as these stand-ins, and each job's
# package is the shared one with its own values put in: compiling is most of what a submission
# costs (bench/operator_load.py), and a package per job name would compile at every job.
NAME_STAND_IN = "slmops-stand-in-job-name"
NAMESPACE_STAND_IN = "slmops-stand-in-job-namespace"


@dataclass(frozen=True)
class JobPipeline:
    """The pipeline a job is submitted as: built with the job's placement, keyed for reuse."""

    name: str
    key: str  # equal keys compile to the same package: the pipeline, the placement, the images
    values: dict[str, str]  # a stand-in of the shared package -> this job's value
    _build: Any

    def compile_shared(self, path: Path) -> Path:
        """Write the package every job with this key shares (the IR YAML with the kfp-kubernetes
        platform spec, the stand-ins in its pods' labels) to ``path``."""
        from slmops_pipelines.kubeflow.pipelines import compile_pipeline

        return compile_pipeline(self._build(), path)

    def for_this_job(self, shared: Path, path: Path) -> Path:
        """This job's package at ``path``: the shared one with the job's own values."""
        from slmops_pipelines.kubeflow.pipelines import with_values

        return with_values(shared, path, self.values)

    def compile(self, path: Path) -> Path:
        """Write this job's package to ``path``."""
        return self.for_this_job(self.compile_shared(path), path)


def pipeline_for(
    kind: str,
    spec: Any,
    *,
    registry: str | None = None,
    cache_pvc: str | None = None,
    cache_max_gb: float | None = None,
    secrets: list[dict[str, Any]] | None = None,
    meta: JobMeta | None = None,
) -> JobPipeline:
    """The pipeline that runs ``spec`` on a cluster, placed from its ``resources``.

    ``secrets`` are the mounts (``{name, keyToEnv}``) every pod of the run gets; ``meta`` the
    resource's name, namespace and labels (its pods' cost labels, Kueue's queue).
    """
    from slmops_pipelines.kubeflow.placement import SecretMount

    job = job_kind(kind)
    images = job.images(spec, registry=registry)
    mounts = [SecretMount.model_validate(m) for m in secrets or []]
    stand_in = JobMeta(NAME_STAND_IN, NAMESPACE_STAND_IN, meta.labels) if meta else None
    placement = job.placement(
        spec, cache_pvc=cache_pvc, cache_max_gb=cache_max_gb, secrets=mounts, job=stand_in
    )
    name, factory = job.pipeline(spec)
    return JobPipeline(
        name=name,
        key=job.compiled_key(spec, placement, images),
        values=_label_values(meta),
        _build=lambda: factory(placement=placement, images=images),
    )


def _label_values(meta: JobMeta | None) -> dict[str, str]:
    from slmops_pipelines.kubeflow.placement import label_value

    if meta is None:
        return {}
    return {NAME_STAND_IN: label_value(meta.name), NAMESPACE_STAND_IN: label_value(meta.namespace)}


def compile_job(
    kind: str, spec: Any, path: Path, *, registry: str | None = None, meta: JobMeta | None = None
) -> Path:
    """The pipeline the operator would submit for this job, with its placement, written to ``path``.

    The job's Secrets are mounted by name with the keys they must hold (the operator, which
    reads them, mounts exactly the keys they do hold).
    """
    from slmops_pipelines.credentials import assumed_mounts

    pipeline = pipeline_for(kind, spec, registry=registry, secrets=assumed_mounts(spec), meta=meta)
    return pipeline.compile(path)


def queued_steps(path: Path) -> dict[str, str]:
    """Step -> Kueue queue, for the steps of a compiled job pipeline whose pods Kueue admits."""
    from slmops_pipelines.kubeflow.pipelines import queued_steps as found

    return found(path)


def job_images(kind: str, spec: Any, *, registry: str | None = None) -> Images:
    """The images of the job's pods (``spec.image``, or slmops' own from ``registry``)."""
    return job_kind(kind).images(spec, registry=registry)


def run_arguments(
    kind: str, spec: Any, *, job: dict[str, Any], output_uri: str, source_uri: str = ""
) -> dict[str, Any]:
    """The arguments of the job's pipeline run (the spec, the job context, where things are)."""
    return job_kind(kind).run_arguments(spec=spec, job=job, output_uri=output_uri, source_uri=source_uri)


def compile_all(out_dir: Path | None = None, *, registry: str | None = None) -> list[Path]:
    """Every pipeline with the general-purpose placement (``slmops compile``)."""
    from slmops_pipelines.kubeflow.images import Images
    from slmops_pipelines.kubeflow.pipelines import COMPILED_DIR
    from slmops_pipelines.kubeflow.pipelines import compile_all as compile_every_pipeline

    return compile_every_pipeline(out_dir or COMPILED_DIR, images=Images.default(registry=registry))


# -- on this machine -------------------------------------------------------------------------------

ENGINES = ("local", "kfp-local")


def run_job(kind: str, run: JobRun, *, engine: str = "local", reporter: Reporter | None = None) -> JobOutcome:
    """Run a job to the end on this machine: the embedded engine, or its compiled pipeline on kfp.local."""
    if engine == "kfp-local":
        return job_kind(kind).run_kfp_local(run)
    if engine != "local":
        raise ValueError(f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    return job_kind(kind).run_local(run, reporter=reporter)


def progress_tracker() -> Any:
    """A tracker turning training events into ``status.progress`` (step, losses, ETA, percent)."""
    from slmops_pipelines.stages.progress import ProgressTracker

    return ProgressTracker()


# -- reading an output location ------------------------------------------------------------------


def read_outcome(kind: str, output_uri: str, *, credentials: S3Credentials | None = None) -> JobOutcome:
    """What a succeeded job left: artifacts and metrics, from its output location.

    ``credentials``: the keys to read it with (the job's own, on a cluster); None: the
    environment's.
    """
    from slmops_pipelines.storage import open_store

    return job_kind(kind).read_outcome(open_store(output_uri, credentials=credentials))


def summary_metrics(kind: str, metrics_doc: dict[str, Any]) -> dict[str, float]:
    """The few numbers of ``status.metrics`` (flat keys), from the job's ``metrics.json``."""
    return job_kind(kind).summary_metrics(metrics_doc)


def tracking_status(metrics_doc: dict[str, Any]) -> dict[str, Any] | None:
    """``status.tracking`` from ``metrics.json``'s ``tracking`` (what MLflow said); None: not asked."""
    mlflow = (metrics_doc.get("tracking") or {}).get("mlflow")
    return {"mlflow": dict(mlflow)} if mlflow else None


def usage_status(metrics_doc: dict[str, Any]) -> dict[str, Any] | None:
    """``status.usage`` (camelCase) from ``metrics.json``'s ``usage``; None where it was not measured."""
    usage = metrics_doc.get("usage") or {}
    if not usage.get("stages"):
        return None

    def row(stage: dict[str, Any]) -> dict[str, Any]:
        return {
            "runs": stage["runs"],
            "gpus": stage["gpus"],
            "wallSeconds": stage["wall_s"],
            "cpuSeconds": stage["cpu_s"],
            "gpuSeconds": stage["gpu_s"],
        }

    return {
        "gpuSeconds": usage["gpu_seconds"],
        "cpuSeconds": usage["cpu_seconds"],
        "wallSeconds": usage["wall_seconds"],
        "stages": {name: row(stage) for name, stage in usage["stages"].items()},
    }


def read_failure(output_uri: str, *, credentials: S3Credentials | None = None) -> JobError | None:
    """The error a failing step recorded in the output location (with its spec field), if any."""
    from slmops_pipelines.stages.outputs import recorded_error
    from slmops_pipelines.storage import open_store

    return recorded_error(open_store(output_uri, credentials=credentials))


def read_progress(
    kind: str, spec: Any, output_uri: str, *, credentials: S3Credentials | None = None
) -> dict[str, Any]:
    """A running job's progress as its steps record it in the output location (best effort)."""
    from slmops_pipelines.stages.progress import PROGRESS_KEY
    from slmops_pipelines.storage import open_store

    progress: dict[str, Any] = {}
    try:
        store = open_store(output_uri, credentials=credentials)
        if store.exists(PROGRESS_KEY):
            progress = json.loads(store.read_text(PROGRESS_KEY))
        progress.update(job_kind(kind).progress(spec, store))
    except Exception:  # progress is best effort: an unreadable store shows no progress
        pass
    return progress


def claim_output(run: JobRun, *, credentials: S3Credentials | None = None) -> None:
    """Claim ``run``'s output location for it before anything runs (the operator does, on a cluster).

    InputError naming ``output.uri`` when another job holds it.  The job's own first step
    claims it again (the same job takes its own claim over): this one is what a custom image
    cannot skip.
    """
    from slmops_pipelines.steps import publish
    from slmops_pipelines.storage import open_store

    store = open_store(run.output_uri, field="output.uri", credentials=credentials)
    publish.claim_output(store, run.identity())


def cache_entries() -> list[Any]:
    """The input cache's entries (path, uri, size, last_used, in_use), least recently used first."""
    from slmops_pipelines.models import input_cache

    return input_cache.entries()


def prune_cache(*, max_bytes: int = 0) -> list[Any]:
    """Remove input cache entries not in use, least recently used first, until the rest fit ``max_bytes``."""
    from slmops_pipelines.models import input_cache

    return input_cache.prune(max_bytes=max_bytes)


def import_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file into a plain transformers model folder (``slmops models import-gguf``)."""
    from slmops_pipelines.models.gguf_import import import_gguf as dequantize

    return dequantize(gguf, out_dir)


def describe_output(output_uri: str, *, verify: bool = True) -> dict[str, Any]:
    """What a job's output location holds: identity, phase, summary metrics, artifacts, checksums.

    ``phase``: Succeeded (the manifest is there), Failed (a step recorded its error), or
    Incomplete (claimed, no manifest: running, interrupted, or failed where nothing recorded
    why).  ``checksums`` verifies every file the manifest lists (size and sha256).
    """
    from slmops_pipelines.stages.outputs import read_error
    from slmops_pipelines.steps import publish
    from slmops_pipelines.storage import open_store

    store = open_store(output_uri, field="output")
    store.check()
    claim = publish.read_json(store, publish.CLAIM)
    manifest = publish.read_json(store, publish.MANIFEST)
    identity = (manifest or {}).get("job") or claim
    if identity is None:
        raise InputError(f"{store.uri} holds no slmops job output (no manifest.json, no .slmops/job.json)")
    kind = KINDS.get(identity.get("kind", ""))
    described: dict[str, Any] = {
        "uri": store.uri,
        "job": identity,
        "createdAt": (manifest or {}).get("createdAt"),
    }
    failure = read_error(output_uri)
    described["phase"] = "Succeeded" if manifest else ("Failed" if failure else "Incomplete")
    if failure is not None and not manifest:
        described["error"] = failure.to_dict()
    metrics_doc = publish.read_json(store, "metrics.json") or {}
    described["metrics"] = kind.summary_metrics(metrics_doc) if kind else {}
    described["artifacts"] = kind.output_artifacts(store) if kind and manifest else {}
    if manifest is not None:
        problems = publish.verify_manifest(store, manifest) if verify else []
        described["checksums"] = {
            "verified": verify,
            "files": len(manifest.get("files", [])),
            "ok": not problems,
            "problems": problems,
        }
    return described


# -- talking to what a job made (slmops generate, slmops chat) --------------------------------------


def chat_target(
    target: str, *, target_name: str | None = None, model: str | None = None, prefer_adapters: bool = False
) -> ChatTarget:
    """What TARGET names, ready to load: a job's output (its kind decides what), or a model folder.

    ``target_name`` picks an OptimizeJob's target; ``model`` is a PEFT adapter's base model;
    ``prefer_adapters`` picks, by default, a target with separate adapters (``slmops serve``).
    """
    from slmops_pipelines.chat.targets import TargetChoice, find_job_output, plain_target

    output = find_job_output(target)
    if output is None:
        if target_name is not None:
            raise InputError(
                f"--target picks a target of an OptimizeJob's output; {target} is none", field="target"
            )
        return plain_target(target, model=model)
    kind = KINDS.get(output.kind)
    if kind is None:
        raise InputError(f"{target}: a {output.kind or 'job of unknown kind'}'s output", field="target")
    return kind.chat_target(output, TargetChoice(target_name, model, prefer_adapters))


def open_chat(
    target: ChatTarget, *, sampling: Sampling | None = None, raw: bool = False, adapter: str | None = None
) -> ChatSession:
    """Load the target's model once (``adapter`` active, default its first) for requests and chats."""
    from slmops_pipelines.chat.session import open_session

    return open_session(target, sampling=sampling or Sampling(), raw=raw, adapter=adapter)


def serve_target(target: str, **options: Any) -> None:
    """Serve TARGET with OpenAI's HTTP API until SIGTERM (``slmops serve``; see :mod:`slmops_pipelines.serve`).

    ``options``: :func:`slmops_pipelines.serve.run_server`'s (host, port, target_name, name,
    threads, settings, access_log).
    """
    from slmops_pipelines.serve import run_server

    run_server(target, **options)


def serve_settings(**values: Any) -> Any:
    """The server's :class:`~slmops_pipelines.serve.Settings` (max_batch, max_queue, max_tokens, drain_seconds)."""
    from slmops_pipelines.serve import Settings

    return Settings(**values)


def delete_owned_output(output_uri: str, *, uid: str, credentials: S3Credentials | None = None) -> Cleanup:
    """Delete what the job ``uid`` owns at ``output_uri`` (its claim says so); keep everything else."""
    from slmops_pipelines.steps.publish import delete_owned_output as delete
    from slmops_pipelines.storage import open_store

    return delete(open_store(output_uri, credentials=credentials), uid=uid)


__all__ = [
    "API_GROUP",
    "API_VERSION",
    "ENGINES",
    "KINDS",
    "NO_ADAPTER",
    "ChatSession",
    "ChatTarget",
    "Cleanup",
    "InputError",
    "JobError",
    "JobKind",
    "JobMeta",
    "JobOutcome",
    "JobPipeline",
    "JobRun",
    "Location",
    "NullReporter",
    "Reply",
    "Reporter",
    "S3Credentials",
    "Sampling",
    "SecretRef",
    "SummaryTable",
    "Upstream",
    "cache_entries",
    "chat_target",
    "claim_output",
    "compile_all",
    "compile_job",
    "delete_owned_output",
    "describe_output",
    "import_gguf",
    "job_images",
    "job_kind",
    "open_chat",
    "pipeline_for",
    "progress_tracker",
    "prune_cache",
    "queued_steps",
    "read_failure",
    "read_outcome",
    "read_progress",
    "register_kind",
    "run_arguments",
    "run_job",
    "s3_credentials_from",
    "secret_refs",
    "serve_settings",
    "serve_target",
    "spec_inputs",
    "spec_locations",
    "spec_remote_code",
    "summary_metrics",
    "tracking_status",
    "usage_status",
    "without_ambient_credentials",
]
