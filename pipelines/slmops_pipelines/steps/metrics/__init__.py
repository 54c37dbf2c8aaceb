"""Metrics of generated answers, by name: built in, or plug-ins from other packages.

A metric is a callable ``metric(predictions: list[str], references: list[str]) -> float``
over the generated answers and the expected ones.  The spec names them
(``evaluation.metrics: [f1, my_metric]``); they are computed, for the fine-tuned and the
base model, from the same answers the accuracy is computed from.

Built in: ``f1`` (macro F1 over the expected labels, for label-style answers).  Plug-ins
register under the entry point group ``slmops.metrics``::

    [project.entry-points."slmops.metrics"]
    my_metric = "my_package.metrics:my_metric"

An unknown name fails the job before training, naming the field and the known metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

from slmops_pipelines.errors import InputError
from slmops_pipelines.steps.metrics.builtin import BUILTIN

ENTRY_POINT_GROUP = "slmops.metrics"
Metric = Callable[[list[str], list[str]], float]


def _plugins() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_metrics() -> list[str]:
    return sorted(set(BUILTIN) | set(_plugins()))


def get_metric(name: str, *, field: str = "evaluation.metrics") -> Metric:
    if name in BUILTIN:
        return BUILTIN[name]
    plugin = _plugins().get(name)
    if plugin is None:
        raise InputError(
            f"unknown metric {name!r}; known: {', '.join(available_metrics())} "
            f"(plug-ins register under the entry point group {ENTRY_POINT_GROUP!r})",
            field=field,
        )
    try:
        metric = plugin.load()
    except Exception as exc:
        raise InputError(f"metric {name!r} ({plugin.value}) cannot be loaded: {exc}", field=field) from exc
    if not callable(metric):
        raise InputError(f"metric {name!r} ({plugin.value}) is not callable", field=field)
    return metric


def check_metrics(names: list[str], *, field: str = "evaluation.metrics") -> None:
    """Resolve every name now: a typo fails before training, not after."""
    for name in names:
        get_metric(name, field=field)


def compute_metrics(names: list[str], predictions: list[str], references: list[str]) -> dict[str, float]:
    return {name: float(get_metric(name)(predictions, references)) for name in names}


__all__ = ["ENTRY_POINT_GROUP", "available_metrics", "check_metrics", "compute_metrics", "get_metric"]
