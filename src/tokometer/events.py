"""The meter reading: Usage (what was consumed) and Event (one request's full record).

Field names are DESIGN.md's and are stable: exports, receipts and tests rely on them.
Token fields follow OpenTelemetry GenAI: input includes cache reads and writes, output
includes reasoning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import uuid_utils

if TYPE_CHECKING:  # config imports this module
    from .config import Route

REPORTED = "reported"
COUNTED = "counted"
ESTIMATED = "estimated"
CORRECTION = "correction"  # usage_source of an event that adjusts an earlier one
GATEWAY = "gateway"  # an event's source: a request metered here...
INGEST = "ingest"  # ...or a reading an app reported through the ingest API


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0  # the part of cache_write_tokens kept for an hour
    web_search_requests: int = 0  # server-side web searches, billed per request

    @property
    def uncached_input_tokens(self) -> int:
        return self.input_tokens - self.cache_read_tokens - self.cache_write_tokens


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    time: str
    duration_ms: float
    ttft_ms: float | None
    key_id: str | None
    tenant: str | None
    app: str | None
    agent: str | None
    task: str | None
    end_user: str | None
    consumer_region: str | None
    api: str
    operation: str
    stream: bool
    provider: str | None
    provider_region: str | None
    model_requested: str | None
    model: str | None
    model_origin: str | None
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    usage_source: str
    counted_input_tokens: int | None
    counted_output_tokens: int | None
    cost: Decimal | None
    currency: str
    price_ref: str | None
    status: int
    error_type: str | None
    finish_reason: str | None
    energy_wh: Decimal | None = None
    co2e_g: Decimal | None = None
    output_sha256: str | None = None
    corrects: str | None = None  # a correction: the id of the event it adjusts, by deltas
    cache_write_1h_tokens: int | None = None
    web_search_requests: int | None = None
    service_tier: str | None = None
    # energy_wh and co2e_g (the figures) with their range, how they were worked out
    # (impact.REF) and whether modelled or measured (impact.ESTIMATED / MEASURED)
    energy_wh_low: Decimal | None = None
    energy_wh_high: Decimal | None = None
    co2e_g_low: Decimal | None = None
    co2e_g_high: Decimal | None = None
    energy_ref: str | None = None
    energy_source: str | None = None
    # SHA-256 of the answer's provenance fingerprints (provenance/registry.py keeps them)
    fingerprint_sha256: str | None = None
    source: str | None = GATEWAY  # GATEWAY (metered here) or INGEST (reported by an app)
    reported_cost: Decimal | None = None  # the cost an ingesting app said, in `currency`
    charge: Decimal | None = None  # what the consumer is charged, under its price plan
    leaf_index: int | None = None


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Event))
# Fields holding a Decimal (a decimal string once stored).
DECIMAL_FIELDS = ("cost", "energy_wh", "energy_wh_low", "energy_wh_high", "co2e_g",
                  "co2e_g_low", "co2e_g_high", "reported_cost", "charge")
# Fields added after stores were first written. A leaf leaves each of them out while it is
# null, so an event stored before the field existed keeps its leaf hash (and its receipt).
LATE_FIELDS: frozenset[str] = frozenset({"cache_write_1h_tokens", "web_search_requests",
                                         "service_tier", "energy_wh_low", "energy_wh_high",
                                         "co2e_g_low", "co2e_g_high", "energy_ref",
                                         "energy_source", "fingerprint_sha256", "source",
                                         "reported_cost", "charge"})


def new_event_id() -> str:
    """A UUIDv7: unique and ordered by creation time."""
    return str(uuid_utils.uuid7())


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decimal_str(d: Decimal) -> str:
    """Plain notation, no exponent, no trailing zeros: '0.00042', '12'."""
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


@dataclass(slots=True)
class Outcome:
    """What came back from upstream, however it ended."""

    route: Route | None
    status: int
    error_type: str | None = None
    reported: Usage | None = None
    usage_complete: bool = True  # False: the provider's final usage never arrived
    model: str | None = None
    service_tier: str | None = None
    finish_reason: str | None = None
    ttft_ms: float | None = None
    text: Callable[[], str] = lambda: ""  # the generated text, decoded only when needed
    partial: bool = False  # a stream cut short (client left, provider broke off or fell silent)
    tool_call: bool = False  # the answer holds a tool call: its recount is an estimate
    server_cpu_s: float | None = None  # a local model server's CPU time for it, measured
    received: Callable[[], str] | None = None  # the text the client got, if not the answer
    _answer: str | None = field(default=None, init=False, repr=False)

    def answer(self) -> str:
        """The generated text, decoded once however many readings need it."""
        if self._answer is None:
            self._answer = self.text()
        return self._answer

    @property
    def produced(self) -> bool:
        """Whether the provider generated anything to bill: an answer, or part of one."""
        return self.status < 400 or self.partial


def elapsed_ms(t0: float) -> float:
    """Milliseconds since `t0` (a time.perf_counter reading), as events record durations."""
    return round((time.perf_counter() - t0) * 1000, 3)
