"""Quality gates: each target (each adapter of a multi-adapter target) against the fine-tuned PyTorch model.

A gate whose metric was not measured (a target this machine cannot run) is not passed
silently: it is reported as ``unchecked``; only measured violations fail the job.
"""

from __future__ import annotations

from dataclasses import dataclass

from slmops_pipelines.specs.optimize import Gates
from slmops_pipelines.steps.optimize.measure import ModelMetrics


@dataclass
class GateResult:
    target: str
    gate: str
    limit: float
    value: float | None
    passed: bool | None  # None: not measured on this machine
    adapter: str | None = None  # the adapter measured, on a target with several

    @property
    def subject(self) -> str:
        return f"target {self.target!r}" + (f", adapter {self.adapter!r}" if self.adapter else "")

    def describe(self) -> str:
        if self.passed is None:
            return f"{self.subject}: {self.gate} unchecked (not measured here)"
        verdict = "ok" if self.passed else "VIOLATED"
        return f"{self.subject}: {self.gate} = {self.value:.4g} (limit {self.limit:g}) {verdict}"


def _decode_rate(metrics: ModelMetrics) -> float | None:
    return metrics.latency.decode_tokens_per_s_p50 if metrics.latency else None


def check_gates(
    target: str, gates: Gates, metrics: ModelMetrics, reference: ModelMetrics, *, adapter: str | None = None
) -> list[GateResult]:
    results = []

    def add(gate: str, limit: float | None, value: float | None, ok) -> None:
        if limit is None:
            return
        passed = None if value is None else ok(value, limit)
        results.append(GateResult(target, gate, limit, value, passed, adapter))

    accuracy_drop = None
    if metrics.accuracy is not None and reference.accuracy is not None:
        accuracy_drop = reference.accuracy - metrics.accuracy
    add("accuracyDrop", gates.max_accuracy_drop, accuracy_drop, lambda v, lim: v <= lim + 1e-9)

    ppl_increase = None
    if metrics.perplexity is not None and reference.perplexity:
        ppl_increase = metrics.perplexity / reference.perplexity - 1
    add("perplexityIncrease", gates.max_perplexity_increase, ppl_increase, lambda v, lim: v <= lim)

    speedup = None
    rate, reference_rate = _decode_rate(metrics), _decode_rate(reference)
    if rate and reference_rate:
        speedup = rate / reference_rate
    add("decodeSpeedup", gates.min_decode_speedup, speedup, lambda v, lim: v >= lim)

    add("sizeMb", gates.max_size_mb, metrics.size_mb, lambda v, lim: v <= lim)
    return results
