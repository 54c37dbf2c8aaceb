"""The job settings a pipeline shows as typed, described parameters in the KFP dashboard.

The full spec travels as the ``spec`` parameter (every step reads its view of it); beside it
each pipeline has a few typed parameters -- model, dataset, method, learning rate, steps,
targets -- so that a run's page in the dashboard says what it trains without opening a JSON
blob.  They are filled from the spec (:func:`settings_of`, by the job kind's
``run_arguments``).  The spec is what runs: a parameter changed in the dashboard that no
longer says what the spec says fails the inspect step, naming both
(:func:`check_settings`), instead of being silently ignored; an empty one (``""``, ``0``)
means "as the spec says".

Each setting is written here once: its name, type, the spec field it shows, its
description.  The pipelines' signatures and ``Args:`` are made from them (:func:`sign`), and so
is the docstring of the inspect components, whose shipped source must spell the parameters
(a test keeps those equal).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from slmops_pipelines.errors import InputError

Value = str | int | float


@dataclass(frozen=True)
class Setting:
    name: str  # the pipeline parameter
    field: str  # the spec field it shows (manifest spelling)
    empty: Value  # its default: "as the spec says" (its type is the parameter's)
    description: str
    read: Callable[[Any], Value]


def _targets(spec: Any) -> str:
    return ", ".join(
        f"{t.name}={t.provider.removesuffix('ExecutionProvider')}/{t.precision}" for t in spec.targets
    )


def _source(spec: Any) -> str:
    ref = spec.source.fine_tune_job_ref
    return f"job {ref.name}" if ref is not None else spec.source.model.uri


FINETUNE: tuple[Setting, ...] = (
    Setting(
        "model", "model.uri", "", "The base model: hf://, s3://, pvc:// or a path.", lambda s: s.model.uri
    ),
    Setting(
        "dataset",
        "dataset.uri",
        "",
        "The training data: hf://, s3://, pvc:// or a path.",
        lambda s: s.dataset.uri,
    ),
    Setting("method", "method", "", "Fine-tuning method: lora, qlora, dora or full.", lambda s: s.method),
    Setting(
        "learning_rate",
        "training.learningRate",
        0.0,
        "Peak learning rate.",
        lambda s: s.training.learning_rate,
    ),
    Setting(
        "max_steps",
        "training.maxSteps",
        0,
        "Optimizer steps (0: by epochs).",
        lambda s: s.training.max_steps or 0,
    ),
)
OPTIMIZE: tuple[Setting, ...] = (
    Setting(
        "model",
        "source",
        "",
        "What is optimized: a model URI, or `job <name>` (a fine-tuning job's output).",
        _source,
    ),
    Setting("targets", "targets", "", "The targets: name=provider/precision, comma separated.", _targets),
)


def settings_of(settings: tuple[Setting, ...], spec: Any) -> dict[str, Value]:
    """The parameters' values for ``spec`` (what the dashboard shows)."""
    return {setting.name: setting.read(spec) for setting in settings}


def check_settings(settings: tuple[Setting, ...], spec: Any, given: dict[str, Value]) -> None:
    """Refuse a parameter that says something else than the spec (the spec is what runs)."""
    for setting in settings:
        value = given.get(setting.name, setting.empty)
        if value in (setting.empty, None) or value == setting.read(spec):
            continue
        raise InputError(
            f"the pipeline parameter {setting.name} ({value!r}) differs from spec.{setting.field} "
            f"({setting.read(spec)!r}): the spec is what runs; change it there, or leave the parameter empty",
            field=setting.field,
        )


@dataclass(frozen=True)
class Parameter:
    """A pipeline (or component) parameter as KFP shows it: typed, described, maybe defaulted."""

    name: str
    type: type
    description: str
    default: Any = inspect.Parameter.empty


# What every job pipeline takes before its settings.
JOB_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("spec", dict, "The job's whole spec (JSON, camelCase, as the resource has it): what runs."),
    Parameter("job", dict, "Who the run is for: kind, apiVersion, name, namespace, uid, labels."),
    Parameter("output_uri", str, "Where the job's output goes (s3://, pvc:// or a path)."),
)
SOURCE_URI = Parameter(
    "source_uri",
    str,
    "The output location of the fine-tuning job it optimizes (empty for a model source).",
    "",
)


def parameters(shown: tuple[Setting, ...]) -> tuple[Parameter, ...]:
    """The settings as parameters: typed by their empty value, which is their default."""
    return tuple(
        Parameter(
            s.name, type(s.empty), f"{s.description} Shows spec.{s.field}; empty: as the spec says.", s.empty
        )
        for s in shown
    )


def docstring(summary: str, params: Iterable[Parameter]) -> str:
    """``summary`` and an ``Args:`` section: KFP shows it as the parameters' descriptions."""
    lines = [f"    {p.name}: {p.description}" for p in params]
    return f"{summary}\n\nArgs:\n" + "\n".join(lines) + "\n"


def sign(
    func: Callable[..., Any], summary: str, groups: dict[str, tuple[Parameter, ...]]
) -> Callable[..., str]:
    """``func`` (which takes ``**arguments``) with the typed signature and docstring KFP reads.

    ``groups`` maps a name prefix to its parameters (``""`` for none): the combined pipeline
    takes the fine-tuning job's as ``finetune_*`` and the optimization's as ``optimize_*``.
    Parameters without a default come first, as Python wants; KFP passes them by position.
    """
    named = [replace(p, name=prefix + p.name) for prefix, params in groups.items() for p in params]
    ordered = sorted(named, key=lambda p: p.default is not inspect.Parameter.empty)
    signature = inspect.Signature(
        [
            inspect.Parameter(
                p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default, annotation=p.type
            )
            for p in ordered
        ],
        return_annotation=str,
    )

    @functools.wraps(func)
    def signed(*args: Any, **kwargs: Any) -> str:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return func(**bound.arguments)

    signed.__signature__ = signature  # type: ignore[attr-defined]
    signed.__doc__ = docstring(summary, named)
    return signed


def taken(arguments: dict[str, Any], prefix: str, shown: tuple[Setting, ...]) -> dict[str, Any]:
    """The settings among a pipeline's ``arguments`` (named ``prefix`` + setting), by their own names."""
    return {s.name: arguments[prefix + s.name] for s in shown if prefix + s.name in arguments}
