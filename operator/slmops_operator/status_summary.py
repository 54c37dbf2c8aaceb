"""The few numbers a job's ``status.metrics`` carries (the full metrics stay in metrics.json).

Keys are flat and stable so that dashboards and ``kubectl get -o jsonpath`` can rely on
them: ``trainLoss``, ``evalLoss``, ``accuracy``, ``baseAccuracy``, ``tokensPerSecond``,
``wallTimeSeconds`` for a FineTuneJob; per target ``<target>.accuracy``,
``<target>.decodeTokensPerSecond``, ``<target>.sizeMb`` for an OptimizeJob.
"""

from __future__ import annotations

from typing import Any


def _floats(values: dict[str, Any]) -> dict[str, float]:
    return {
        key: round(float(value), 6)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def summary_metrics(kind: str, doc: dict[str, Any]) -> dict[str, float]:
    if kind == "FineTuneJob":
        train = doc.get("train") or {}
        evaluation = doc.get("evaluation") or {}
        tuned = evaluation.get("finetuned") or {}
        return _floats(
            {
                **(tuned.get("metrics") or {}),
                "trainLoss": train.get("train_loss"),
                "evalLoss": train.get("eval_loss"),
                "accuracy": (evaluation.get("finetuned") or {}).get("accuracy"),
                "baseAccuracy": (evaluation.get("base") or {}).get("accuracy"),
                "tokensPerSecond": train.get("tokens_per_second"),
                "wallTimeSeconds": doc.get("wall_time_s"),
            }
        )
    values: dict[str, Any] = {"wallTimeSeconds": doc.get("wall_time_s")}
    for name, target in (doc.get("targets") or {}).items():
        measured = target.get("metrics") or {}
        latency = measured.get("latency") or {}
        values[f"{name}.accuracy"] = measured.get("accuracy")
        values[f"{name}.decodeTokensPerSecond"] = latency.get("decode_tokens_per_s_p50")
        values[f"{name}.sizeMb"] = measured.get("size_mb")
    return _floats(values)
