"""Prometheus metrics of the operator (served on ``SLMOPS_METRICS_PORT``, path ``/metrics``).

* ``slmops_jobs{kind, phase}`` -- jobs this operator sees, by phase;
* ``slmops_reconcile_seconds{kind}`` -- time of one reconciliation of one job;
* ``slmops_backend_errors_total{backend, operation}`` -- failed submit/state/cancel calls;
* ``slmops_transitions_total{kind, phase}`` -- phase transitions written.

Each operator instance has its own registry, so that tests (and several operators in one
process) do not share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from slmops_operator.api.status import PHASES


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Gauge("slmops_jobs", "Jobs by kind and phase.", ["kind", "phase"], registry=self.registry)
        self.reconcile_seconds = Histogram(
            "slmops_reconcile_seconds",
            "Time of one reconciliation of one job.",
            ["kind"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.backend_errors = Counter(
            "slmops_backend_errors_total",
            "Failed backend calls.",
            ["backend", "operation"],
            registry=self.registry,
        )
        self.transitions = Counter(
            "slmops_transitions_total",
            "Phase transitions written.",
            ["kind", "phase"],
            registry=self.registry,
        )

    def set_phase_counts(self, kind: str, counts: dict[str, int]) -> None:
        for phase in PHASES:
            self.jobs.labels(kind=kind, phase=phase).set(counts.get(phase, 0))

    def serve(self, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, registry=self.registry)
