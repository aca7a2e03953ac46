"""`/metrics` in Prometheus' text format, counted from each event as it is recorded.

Names follow Prometheus conventions (counters end in _total, durations in seconds); token
kinds are OpenTelemetry GenAI's input/output plus the cache and reasoning parts.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from ..events import Event

_KINDS = ("input", "cache_read", "cache_write", "output", "reasoning")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_REFUSALS = frozenset({401, 402, 403, 429})
disable_created_metrics()  # no *_created series: scrapes stay small


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter("tokometer_requests", "Requests by provider, model and status",
                                ["provider", "model", "status"], registry=r)
        self.tokens = Counter("tokometer_tokens", "Tokens metered, by kind",
                              ["provider", "model", "kind"], registry=r)
        self.cost = Counter("tokometer_cost", "Cost metered, in the server currency",
                            ["provider", "model", "currency"], registry=r)
        self.duration = Histogram("tokometer_request_duration_seconds",
                                  "Whole request time through the gateway", ["provider"],
                                  buckets=_BUCKETS, registry=r)
        self.upstream_errors = Counter("tokometer_upstream_errors",
                                       "Provider failures (5xx, timeouts, broken answers)",
                                       ["provider", "error_type"], registry=r)
        self.refusals = Counter("tokometer_refusals", "Requests refused before any provider "
                                "saw them", ["reason"], registry=r)

    def observe(self, event: Event) -> None:
        provider, model = event.provider or "", event.model or event.model_requested or ""
        self.requests.labels(provider, model, str(event.status)).inc()
        for kind in _KINDS:
            if n := getattr(event, f"{kind}_tokens"):
                self.tokens.labels(provider, model, kind).inc(n)
        if event.cost:
            self.cost.labels(provider, model, event.currency).inc(float(event.cost))
        self.duration.labels(provider).observe(event.duration_ms / 1000)
        if event.provider is None and event.status in _REFUSALS:
            self.refusals.labels(event.error_type or str(event.status)).inc()
        elif event.status >= 500:
            self.upstream_errors.labels(provider, event.error_type or "").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
