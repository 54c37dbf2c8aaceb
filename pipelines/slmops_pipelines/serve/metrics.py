"""What ``/metrics`` shows Prometheus: requests, tokens, latencies, the queue and the batches.

Names follow Prometheus' conventions (``_total`` counters, ``_seconds`` histograms) under
``slmops_serve_``; ``model`` is the model id a request named (the base or an adapter).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latencies of a small model on CPU: from a few milliseconds per token (and to a short prompt's
# first token) to a minute per request.
_TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    def __init__(self, *, queue_depth: Callable[[], int], running: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "slmops_serve_requests",
            "Requests answered, by model and HTTP status.",
            ["model", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "slmops_serve_prompt_tokens", "Prompt tokens read.", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "slmops_serve_completion_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.time_to_first_token = Histogram(
            "slmops_serve_time_to_first_token_seconds",
            "From the request to its first token (queue and prefill).",
            ["model"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.time_per_token = Histogram(
            "slmops_serve_time_per_output_token_seconds",
            "Between two tokens of one answer.",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "slmops_serve_request_duration_seconds",
            "From the request to its last token.",
            ["model"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "slmops_serve_batch_size",
            "Sequences per batch, as each batch starts.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
            registry=r,
        )
        queue = Gauge("slmops_serve_queue_depth", "Requests waiting for a slot.", registry=r)
        queue.set_function(lambda: float(queue_depth()))
        decoding = Gauge("slmops_serve_running_sequences", "Sequences being decoded.", registry=r)
        decoding.set_function(lambda: float(running()))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
