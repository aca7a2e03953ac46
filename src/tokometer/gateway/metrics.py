"""`/metrics` in Prometheus' text format, counted from each event as it is recorded.

Names follow Prometheus conventions (counters end in _total, durations in seconds); token
kinds are OpenTelemetry GenAI's input/output plus the cache and reasoning parts. Counting is
plain dictionary arithmetic on the event loop (a few microseconds per request, where
prometheus_client's labelled children cost ten times that); prometheus_client renders the
families only when scraped.

With several workers (`tokometer serve`'s `workers`), each one writes its counts to a file
every second, and the worker a scrape reaches adds up its own and the others' (`Peers`); the
files of workers that died stay in the sum, so no counter goes backwards while serve runs.

A model label is always a name the config knows: a model it does not (the provider's dated
name, anything a client made up) counts as `other`, so no client can grow the label sets. An
error type comes from the provider too: past ERROR_TYPES distinct ones, more count as `other`.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from ..events import Event

_KINDS = ("input", "cache_read", "cache_write", "output", "reasoning")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_REFUSALS = frozenset({401, 402, 403, 429})
_OTHER = "other"
ERROR_TYPES = 100  # distinct error_type labels at most
_Labels = TypeVar("_Labels", bound=tuple[str, ...])  # one value per label name


class Metrics:
    def __init__(self, models: Iterable[str]) -> None:
        """`models`: the model names labels may carry (the configured ones and their routes')."""
        self.models = frozenset(models)
        self.requests: Counter[tuple[str, str, str]] = Counter()  # provider, model, status
        self.tokens: Counter[tuple[str, str, str]] = Counter()  # provider, model, kind
        self.cost: defaultdict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
        self.upstream_errors: Counter[tuple[str, str]] = Counter()  # provider, error type
        self.refusals: Counter[str] = Counter()  # reason
        self._error_types: set[str] = set()
        # per provider: a count per bucket (the last one is +Inf), and the sum of seconds
        self.durations: dict[str, list[float]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def observe(self, event: Event) -> None:
        provider, model = event.provider or "", self._model(event)
        self.requests[provider, model, str(event.status)] += 1
        for kind in _KINDS:
            if n := getattr(event, f"{kind}_tokens"):
                self.tokens[provider, model, kind] += n
        if event.cost:
            self.cost[provider, model, event.currency] += event.cost
        seconds = event.duration_ms / 1000
        counts = self.durations.get(provider)
        if counts is None:
            counts = self.durations[provider] = [0.0] * (len(_BUCKETS) + 2)
        counts[bisect_left(_BUCKETS, seconds)] += 1
        counts[-1] += seconds
        if event.provider is None and event.status in _REFUSALS:
            self.refusals[event.error_type or str(event.status)] += 1
        elif event.status >= 500:
            self.upstream_errors[provider, self._error_type(event.error_type or "")] += 1

    def _model(self, event: Event) -> str:
        """What answered if the config knows it, else what was asked if it does, else other."""
        for name in (event.model, event.model_requested):
            if name is not None and name in self.models:
                return name
        return _OTHER

    def _error_type(self, kind: str) -> str:
        """`kind` as a label, unless ERROR_TYPES others already are (then `other`)."""
        if kind in self._error_types or len(self._error_types) < ERROR_TYPES:
            self._error_types.add(kind)
            return kind
        return _OTHER

    def collect(self) -> Iterator[Metric]:
        """The families as prometheus_client renders them (called on each scrape)."""
        yield _counter("tokometer_requests", "Requests by provider, model and status",
                       ["provider", "model", "status"], self.requests)
        yield _counter("tokometer_tokens", "Tokens metered, by kind",
                       ["provider", "model", "kind"], self.tokens)
        yield _counter("tokometer_cost", "Cost metered, in the server currency",
                       ["provider", "model", "currency"], self.cost)
        yield _counter("tokometer_upstream_errors",
                       "Provider failures (5xx, timeouts, broken answers)",
                       ["provider", "error_type"], self.upstream_errors)
        yield _counter("tokometer_refusals", "Requests refused before any provider saw them",
                       ["reason"], {(reason,): n for reason, n in self.refusals.items()})
        histogram = HistogramMetricFamily("tokometer_request_duration_seconds",
                                          "Whole request time through the gateway",
                                          labels=["provider"])
        for provider, counts in self.durations.items():
            cumulative, buckets = 0.0, []
            for bound, n in zip((*map(str, _BUCKETS), "+Inf"), counts[:-1], strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            histogram.add_metric([provider], buckets, counts[-1])
        yield histogram

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def state(self) -> dict[str, Any]:
        """The counts, as JSON can carry them (`add` takes them back)."""
        def rows(values: Mapping[Any, int | Decimal]) -> list[list[Any]]:
            return [[*k, str(v)] if isinstance(k, tuple) else [k, str(v)]
                    for k, v in values.items()]

        return {"requests": rows(self.requests), "tokens": rows(self.tokens),
                "cost": rows(self.cost), "upstream_errors": rows(self.upstream_errors),
                "refusals": rows(self.refusals),
                "durations": {p: list(counts) for p, counts in self.durations.items()}}

    def add(self, state: dict[str, Any]) -> None:
        """Count another worker's `state()` in these."""
        for name in ("requests", "tokens", "upstream_errors"):
            counter = getattr(self, name)
            for *key, value in state[name]:
                counter[tuple(key)] += int(value)
        for *key, value in state["cost"]:
            self.cost[tuple(key)] += Decimal(value)
        for reason, value in state["refusals"]:
            self.refusals[reason] += int(value)
        for provider, counts in state["durations"].items():
            mine = self.durations.setdefault(provider, [0.0] * (len(_BUCKETS) + 2))
            self.durations[provider] = [a + b for a, b in zip(mine, counts, strict=True)]


class Peers:
    """The counts of every worker of one `tokometer serve`, through files in its folder."""

    SECONDS = 1.0

    def __init__(self, folder: Path, own: Metrics):
        self._folder, self._own = folder, own
        self._file = folder / f"{os.getpid()}.json"

    async def run_forever(self) -> None:
        while True:
            await asyncio.to_thread(self._save, orjson.dumps(self._own.state()))
            await asyncio.sleep(self.SECONDS)

    def _save(self, counts: bytes) -> None:
        partial = self._file.with_suffix(".part")
        partial.write_bytes(counts)
        partial.replace(self._file)  # a reader sees the old counts or the new, never half

    async def render(self) -> bytes:
        """Every worker's counts added up: this one's as they are now, the others' as they
        last saved them. (Counts are read on the event loop, files off it.)"""
        return await asyncio.to_thread(self._render, self._own.state())

    def _render(self, own: dict[str, Any]) -> bytes:
        total = Metrics(self._own.models)
        total.add(own)
        for path in self._folder.glob("*.json"):
            if path != self._file:
                try:
                    total.add(orjson.loads(path.read_bytes()))
                except (OSError, orjson.JSONDecodeError):  # gone since the listing
                    continue
        return total.render()


def _counter(name: str, documentation: str, labels: list[str],
             values: Mapping[_Labels, int | Decimal]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), float(value))
    return family
