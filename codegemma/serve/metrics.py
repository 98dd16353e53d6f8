"""Prometheus metrics of one server (its own registry, so several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("codegemma_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("codegemma_request_seconds", "time to the response headers, by endpoint",
                                 ["endpoint"], registry=r,
                                 buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60))
        self.queue_depth = Gauge("codegemma_queue_depth", "requests waiting for the model", registry=r)
        self.rejected = Counter("codegemma_rejected", "requests refused because the queue was full", registry=r)
        self.cancelled = Counter("codegemma_cancelled", "generations cancelled by a client disconnect", registry=r)
        self.prompt_tokens = Counter("codegemma_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.cached_tokens = Counter("codegemma_cached_prompt_tokens", "prompt tokens reused from the KV cache",
                                     registry=r)
        self.generated_tokens = Counter("codegemma_generated_tokens", "tokens generated", registry=r)
        self.batch_size = Histogram("codegemma_batch_size", "requests per batched generation", registry=r,
                                    buckets=(2, 3, 4, 6, 8, 12, 16))
