"""What each cached step depends on: the part of the spec it reads, and nothing else.

KFP reuses a step's outputs when its inputs are unchanged.  Handing every step the whole
spec would make any edit -- a new evaluation setting, another output location, one more
optimize target -- rerun everything, training included.  So the inspect step (never
cached) derives a *view* of the spec for each cached step, with only the sections that
step reads; a step's cache key is then its view, the fingerprint of its data, and the
artifacts of the step before it.

Views are still valid specs (the models' defaults fill what a view leaves out), so the
steps validate them like any spec.
"""

from __future__ import annotations

from typing import Any

from slmops_pipelines.specs import FineTuneJobSpec, OptimizeJobSpec


def _dump(spec: FineTuneJobSpec | OptimizeJobSpec) -> dict[str, Any]:
    # suspend and ttlSecondsAfterFinished say how the job is operated: no step reads them.
    return spec.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"suspend", "ttl_seconds_after_finished"}
    )


def finetune_views(spec: FineTuneJobSpec) -> dict[str, dict[str, Any]]:
    """``data``, ``train`` and ``evaluate`` views of a FineTuneJob spec."""
    full = _dump(spec)
    return {
        # Rendering and tokenizing: the tokenizer, the data and the split seed.
        "data": {
            "model": full["model"],
            "dataset": full["dataset"],
            "training": {"seed": spec.training.seed},
        },
        # Training: everything but evaluation and where the results go (multi-node workers get
        # the run's Secrets from the job context, not from the spec).
        "train": {k: v for k, v in full.items() if k not in ("evaluation", "output")},
        # Evaluation: the model, the method, the evaluation settings, whether to merge.
        "evaluate": {
            **{k: v for k, v in full.items() if k not in ("resources", "output")},
            "output": {"mergedModel": spec.output.merged_model},
        },
    }


# Stands in for the targets in the source view when no target needs calibration rows.
_PLACEHOLDER_TARGET = {
    "name": "reference",
    "provider": "CPUExecutionProvider",
    "precision": "fp32",
    "mergeAdapter": False,
}


def optimize_source_view(spec: OptimizeJobSpec) -> dict[str, Any]:
    """The source step: the source, the evaluation rows and metrics, calibration needs; no gates."""
    full = _dump(spec)
    evaluation = {k: v for k, v in full["evaluation"].items() if k != "gates"}
    calibrated = [
        target for target, model in zip(full["targets"], spec.targets, strict=True) if model.calibrated
    ]
    return {
        "source": full["source"],
        "evaluation": evaluation,
        "targets": calibrated or [_PLACEHOLDER_TARGET],
    }


def optimize_target_views(spec: OptimizeJobSpec) -> list[dict[str, Any]]:
    """One view per target: the spec with that target alone (adding a target rebuilds no other)."""
    full = _dump(spec)
    common = {k: v for k, v in full.items() if k not in ("targets", "resources", "output")}
    return [{**common, "targets": [target]} for target in full["targets"]]
