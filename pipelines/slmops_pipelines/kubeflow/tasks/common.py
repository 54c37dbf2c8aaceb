"""What every KFP task shares: the job context, metrics for the dashboard, errors, folders.

The task modules (:mod:`.finetune`, :mod:`.search`, :mod:`.optimize`) build on these; a
task that fails with a JobError records it in the output location
(:func:`slmops_pipelines.stages.outputs.record_error`), where the engines and the operator
read it back.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from slmops_pipelines.errors import JobError
from slmops_pipelines.models import input_cache
from slmops_pipelines.stages.outputs import JobRun, clear_error, record_error, record_inputs, recorded_inputs

F = TypeVar("F", bound=Callable[..., Any])


class MetricsArtifact(Protocol):
    path: str
    metadata: dict

    def log_metric(self, metric: str, value: float) -> None: ...


class JobContext(BaseModel):
    """Who the run is for: identity, labels to pass on, and how to train on many nodes.

    The pipelines' ``job`` parameter, in camelCase (``distributedEngine``) like the API.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    kind: str  # the job kind and its API version (filled in by the kind's run_arguments)
    api_version: str
    name: str
    namespace: str = "default"
    uid: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    distributed_engine: Literal["pytorchjob", "trainjob"] = "pytorchjob"
    trainjob_runtime: str = "torch-distributed"  # the ClusterTrainingRuntime of a TrainJob
    trainer_image: str = ""  # the image of the distributed workers (default: the trainer image)
    # The Secrets the run's pods mount ({name, keyToEnv}; names, never values): workers get them too.
    secrets: list[dict[str, Any]] = Field(default_factory=list)

    def run(self, spec: Any, output_uri: str, source_uri: str = "") -> JobRun:
        """The JobRun the stages take, for this context (the output location comes resolved)."""
        identity = self.model_dump(include={"api_version", "kind", "name", "namespace", "uid"})
        return JobRun(spec=spec, output_uri=output_uri, source_uri=source_uri, **identity)


def paths(arguments: dict[str, Any]) -> dict[str, Any]:
    """A component's arguments as its task takes them: each artifact (or list of them) as its path.

    ``Metrics`` artifacts stay objects (the task logs scalars to them); an optional input
    artifact that was not given (``None``) is left as is.
    """

    def local(value: Any) -> Any:
        if isinstance(value, list):
            return [local(item) for item in value]
        if hasattr(value, "path") and not hasattr(value, "log_metric"):
            return value.path
        return value

    return {name: local(value) for name, value in arguments.items()}


def log_metrics(metrics: MetricsArtifact, values: dict[str, Any]) -> None:
    """Log scalars for the dashboard; also write them to the artifact's file.

    The file matters: kfp.local's cache treats an output artifact whose file does not
    exist as gone, so a step with only-logged metrics would never be reused.
    """
    for key, value in values.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            metrics.log_metric(key, round(float(value), 6))
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(dict(metrics.metadata), indent=2, sort_keys=True))


def say(stage: str, message: str) -> None:
    print(f"[slmops] {stage}: {message}", flush=True)


def print_event(event: dict) -> None:
    kind = event.get("event")
    if kind in ("log", "evaluate", "train_end", "save"):
        fields = {k: v for k, v in event.items() if k != "event"}
        print(f"[slmops] train {kind}: {json.dumps(fields, default=str)}", flush=True)


def reports_errors(func):
    """A task that fails with a JobError records it in the output location, then fails."""

    @functools.wraps(func)
    def wrapper(**kwargs):
        try:
            return func(**kwargs)
        except JobError as exc:
            print(f"[slmops] {func.__name__} failed: {exc}", flush=True)
            record_error(kwargs["output_uri"], func.__name__, exc)
            raise

    return wrapper


def metered_task(stage: str) -> Callable[[F], F]:
    """The task's wall time, CPU time and GPUs go to the output's usage records as ``stage``
    (:mod:`slmops_pipelines.stages.usage`), whether it succeeds or fails.  Only for tasks that
    run after the first step claimed the output: a record never lands in another job's."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            from slmops_pipelines.stages.usage import metered
            from slmops_pipelines.storage import open_store

            with metered(open_store(kwargs["output_uri"], field="output.uri"), stage):
                return func(**kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def pinned_inputs(*, first_step: bool = False) -> Callable[[F], F]:
    """The task reads each remote input as the run's earlier steps did, in whatever pod it runs.

    What a step reads first is added to the run's record in the output location
    (:func:`~slmops_pipelines.stages.outputs.record_inputs`); every later step reads pinned
    to it, so a model or dataset replaced at its URI mid-run fails the step naming the field
    instead of training on one version and evaluating another.  The run's first step
    (inspect) starts the record afresh; it is written once the step has claimed the output.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            output_uri = kwargs["output_uri"]
            with input_cache.one_run({} if first_step else recorded_inputs(output_uri)):
                result = func(**kwargs)
                record_inputs(output_uri, input_cache.pins(), first_step=first_step)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def copy_into(src: Path, dst: Path) -> None:
    """Copy the contents of ``src`` into ``dst`` (merging folders)."""
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)


def markdown_links(title: str, artifacts: dict[str, str]) -> str:
    rows = "\n".join(f"| {name} | `{uri}` |" for name, uri in artifacts.items())
    return f"### {title}\n\n| artifact | URI |\n|---|---|\n{rows}\n"


__all__ = [
    "JobContext",
    "MetricsArtifact",
    "clear_error",
    "copy_into",
    "log_metrics",
    "markdown_links",
    "metered_task",
    "paths",
    "pinned_inputs",
    "print_event",
    "reports_errors",
    "say",
]
