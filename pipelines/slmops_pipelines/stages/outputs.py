"""What every job does with its output location: identity, claim, work folder, recorded failure.

A step that fails with a :class:`~slmops_pipelines.errors.JobError` leaves it at
:data:`ERROR_KEY` (``.slmops/error.json``) in the output location, where every engine and the
operator read it back with its spec field and reason; a new run clears it first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmops_pipelines.errors import JobError
from slmops_pipelines.models import cache_root
from slmops_pipelines.specs import SpecModel
from slmops_pipelines.steps import publish
from slmops_pipelines.storage import ArtifactStore, open_store


@dataclass
class JobOutcome:
    """What a finished (or already complete) local job returns."""

    output_uri: str
    metrics: dict[str, Any]
    artifacts: dict[str, str] = field(default_factory=dict)
    already_complete: bool = False


# Fields that say how the job is operated, not what it produces: changing them keeps its output.
OPERATIONAL_FIELDS = {"suspend", "ttl_seconds_after_finished"}


def spec_hash(spec: SpecModel) -> str:
    fields = {name for name in OPERATIONAL_FIELDS if name in type(spec).model_fields}
    canonical = json.dumps(spec.model_dump(mode="json", by_alias=True, exclude=fields), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class JobRun:
    """One run of a job, as every engine and stage takes it: who it is, its spec, where its output goes.

    The job kind makes it (:meth:`slmops_pipelines.jobs.JobKind.new_run`), which resolves
    ``output_uri`` once (``spec.output.uri``, else the engine's default); everything below
    receives it resolved.  ``source_uri`` is the output of its upstream job (empty without
    one); ``uid`` is a cluster object's, recorded in the output's claim (empty for ``slmops run``).
    """

    api_version: str
    kind: str
    name: str
    spec: Any
    output_uri: str
    namespace: str = "default"
    source_uri: str = ""
    uid: str = ""

    @property
    def title(self) -> str:
        """``<kind> <namespace>/<name>``: how messages and pages name the job."""
        return f"{self.kind} {self.namespace}/{self.name}"

    def identity(self) -> dict[str, Any]:
        """What makes two runs 'the same job' for output ownership (see steps/publish.py).

        ``uid`` is recorded, not compared: deleting a job deletes only the output whose claim
        names its uid.
        """
        identity = {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "specHash": spec_hash(self.spec),
        }
        if self.uid:
            identity["uid"] = self.uid
        return identity


def open_output(uri: str, identity: dict[str, Any]) -> tuple[ArtifactStore, dict[str, Any] | None]:
    """Check the store, claim it for this job; return it and this job's manifest if already finished."""
    store = open_store(uri, field="output.uri")
    store.check()
    return store, publish.claim_output(store, identity)


def work_dir(store: ArtifactStore) -> Path:
    """The output folder itself for local stores, a staging folder in the cache for remote ones."""
    local = store.local_root()
    if local is not None:
        return local
    # Keyed by where the bytes are (endpoint included), not the URI text: two endpoints never share one.
    work = cache_root() / "work" / hashlib.sha256(store.source_identity().encode()).hexdigest()[:16]
    work.mkdir(parents=True, exist_ok=True)
    return work


ERROR_KEY = ".slmops/error.json"


def record_error(output_uri: str, step: str, exc: JobError) -> None:
    """Leave the failure, with its spec field, where every engine and the operator can read it."""
    try:
        open_store(output_uri).write_text(ERROR_KEY, json.dumps({"step": step, **exc.to_dict()}))
    except Exception as store_error:  # the output itself may be what failed: say so, keep the cause
        print(f"[slmops] could not record the error at {output_uri}: {store_error}", flush=True)


def read_error(output_uri: str) -> JobError | None:
    """The error a step recorded in this output location, if any."""
    return recorded_error(open_store(output_uri))


def recorded_error(store: ArtifactStore) -> JobError | None:
    """The error a step recorded in ``store`` (opened with whoever's keys may read it), if any."""
    if not store.exists(ERROR_KEY):
        return None
    return JobError.from_dict(json.loads(store.read_text(ERROR_KEY)))


INPUTS_KEY = ".slmops/inputs.json"


def record_inputs(output_uri: str, read: dict[str, str], *, first_step: bool = False) -> None:
    """Add what a step read first (spec field -> ``sha256:...``) to its run's record.

    The first step of a run starts the record afresh; later steps add the inputs they were
    the first to read.  Each step of a pipeline reads its inputs pinned to the record
    (:func:`recorded_inputs`, :func:`slmops_pipelines.models.input_cache.one_run`).
    """
    store = open_store(output_uri)
    known = {} if first_step else recorded_inputs(output_uri)
    merged = {**read, **known}  # what an earlier step read stays what the run reads
    if first_step or merged != known:
        store.write_text(INPUTS_KEY, json.dumps(merged, indent=2, sort_keys=True))


def recorded_inputs(output_uri: str) -> dict[str, str]:
    """What the run's steps so far read of its remote inputs (empty before its first step)."""
    store = open_store(output_uri)
    return json.loads(store.read_text(INPUTS_KEY)) if store.exists(INPUTS_KEY) else {}


def clear_error(output_uri: str) -> None:
    """A previous run's failure is not this run's."""
    store = open_store(output_uri)
    if store.exists(ERROR_KEY):
        store.delete_prefix(ERROR_KEY)
