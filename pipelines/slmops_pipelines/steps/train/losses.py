"""Training losses by name: cross-entropy built in, plug-ins from other packages.

A loss is a callable ``loss(logits, targets) -> Tensor`` over the labelled positions of a
batch -- ``logits`` of shape (positions, vocabulary), ``targets`` of shape (positions,) --
returning the **summed** loss (the trainer divides by the number of labelled tokens across
the batch and its processes, as for the built-in loss).  ``training.loss`` names it;
plug-ins register under the entry point group ``slmops.losses``::

    [project.entry-points."slmops.losses"]
    focal = "my_package.losses:focal_loss"
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from slmops_pipelines.errors import InputError

ENTRY_POINT_GROUP = "slmops.losses"
DEFAULT = "cross_entropy"


def cross_entropy(logits: Any, targets: Any) -> Any:
    """Summed token cross-entropy: the built-in loss, and the default of the sparse-logits trainer."""
    # Imported here so that naming/listing losses (spec validation) does not load torch.
    import torch.nn.functional as F

    return F.cross_entropy(logits, targets, reduction="sum")


BUILTIN: dict[str, Callable[[Any, Any], Any]] = {DEFAULT: cross_entropy}


def available_losses() -> list[str]:
    return sorted(set(BUILTIN) | {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})


def get_loss(name: str, *, field: str = "training.loss") -> Callable[[Any, Any], Any]:
    if name in BUILTIN:
        return BUILTIN[name]
    plugins = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if name not in plugins:
        raise InputError(
            f"unknown loss {name!r}; known: {', '.join(available_losses())} "
            f"(plug-ins register under the entry point group {ENTRY_POINT_GROUP!r})",
            field=field,
        )
    try:
        loss = plugins[name].load()
    except Exception as exc:
        raise InputError(
            f"loss {name!r} ({plugins[name].value}) cannot be loaded: {exc}", field=field
        ) from exc
    if not callable(loss):
        raise InputError(f"loss {name!r} ({plugins[name].value}) is not callable", field=field)
    return loss
