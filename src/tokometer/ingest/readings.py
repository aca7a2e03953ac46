"""A usage reading an app reports (a span, a CloudEvent), checked field by field.

Each channel maps what it carries onto the event schema's names; `reading` checks them the
same way for both, and a reading it refuses (Rejected) is answered with the reason beside its
id while the rest of its batch is recorded. Token fields follow OpenTelemetry GenAI, as the
events do: input includes cache reads and writes, output includes reasoning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..amounts import amount
from ..bounds import bounded
from ..errors import RequestError
from ..events import Usage
from ..usage.dialects import MAX_TOKENS

TOKEN_FIELDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
                "reasoning_tokens")
# The operations that produce tokens (OpenTelemetry's names, and the gateway's own);
# agent, tool and workflow spans sum or wrap them, and are not readings of their own.
OPERATIONS = frozenset({"chat", "text_completion", "embeddings", "generate_content",
                        "responses", "messages"})
MAX_AHEAD = timedelta(minutes=5)  # a reading's time may be this far ahead of ours (clocks)
EARLIEST = datetime(2015, 1, 1, tzinfo=UTC)  # before any API billed by the token
MAX_MILLISECONDS = 86_400_000.0  # a call's duration: a day at most


class Rejected(Exception):
    """A reading refused, and why (said back to the app beside the reading's id)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Reading:
    label: str  # how the answer names it: a CloudEvent's id, a span's trace and span ids
    identities: tuple[tuple[str, str], ...]  # (origin, id) pairs: any one seen means a replay
    api: str  # the channel it came by
    operation: str
    provider: str
    model: str  # the model that answered (else the one asked for)
    model_requested: str | None
    usage: Usage
    time: datetime
    duration_ms: float | None
    agent: str | None
    task: str | None
    end_user: str | None
    reported_cost: Decimal | None
    reported_currency: str | None
    status: int
    error_type: str | None
    finish_reason: str | None
    service_tier: str | None


def reading(label: str, api: str, identities: list[tuple[str, str]], fields: dict[str, Any],
            now: datetime) -> Reading:
    """The reading `fields` (None or absent: not given) describe, or Rejected saying why."""
    try:
        return _reading(label, api, identities, fields, now)
    except RequestError as e:  # a bound broken (too long a label, a malformed amount)
        raise Rejected(e.message) from None


def _reading(label: str, api: str, identities: list[tuple[str, str]], fields: dict[str, Any],
             now: datetime) -> Reading:
    text = {name: _text(fields.get(name), name) for name in (
        "provider", "model", "model_requested", "operation", "agent", "task", "end_user",
        "currency", "error_type", "finish_reason", "service_tier", "response_id")}
    provider, model = text["provider"], text["model"] or text["model_requested"]
    if not provider:
        raise Rejected("no provider: say who served it (gen_ai.provider.name, or 'provider')")
    if not model:
        raise Rejected("no model: say which model answered (gen_ai.response.model or "
                       "gen_ai.request.model, or 'model')")
    operation = text["operation"] or "chat"
    if operation not in OPERATIONS:
        raise Rejected(f"operation {operation!r} is not one that produces tokens; expected "
                       f"one of {', '.join(sorted(OPERATIONS))}")
    usage = _usage(fields)
    if text["response_id"]:
        identities = [*identities, (f"response:{provider}", text["response_id"])]
    cost = fields.get("cost")
    return Reading(
        label=label, identities=tuple((bounded(origin, "a reading's origin"),
                                       bounded(rid, "a reading's id"))
                                      for origin, rid in identities),
        api=api, operation=operation, provider=provider, model=model,
        model_requested=text["model_requested"], usage=usage,
        time=_time(fields.get("time"), now), duration_ms=_duration(fields.get("duration_ms")),
        agent=text["agent"], task=text["task"], end_user=text["end_user"],
        reported_cost=None if cost is None else amount(cost, "cost", floats=True),
        reported_currency=text["currency"], status=_status(fields.get("status")),
        error_type=text["error_type"], finish_reason=text["finish_reason"],
        service_tier=text["service_tier"])


def _usage(fields: dict[str, Any]) -> Usage:
    counts = {name: _count(fields.get(name), name) for name in TOKEN_FIELDS}
    if fields.get("input_tokens") is None and fields.get("output_tokens") is None:
        raise Rejected("no token usage: give input_tokens and output_tokens "
                       "(gen_ai.usage.input_tokens and gen_ai.usage.output_tokens)")
    usage = Usage(**counts)
    if usage.uncached_input_tokens < 0:
        raise Rejected("cache_read_tokens and cache_write_tokens add up to more than "
                       "input_tokens, which includes them (as OpenTelemetry GenAI's does)")
    if usage.reasoning_tokens > usage.output_tokens:
        raise Rejected("reasoning_tokens is more than output_tokens, which includes them")
    return usage


def _count(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one kind of number: 12.0 is 12
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise Rejected(f"{name} must be a whole number from 0 to {MAX_TOKENS}")
    return value


def _text(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Rejected(f"{name} must be a string")
    return bounded(value, name)


def _time(value: Any, now: datetime) -> datetime:
    """When the call was made: given, or now; never later than a clock's drift from now."""
    if value is None:
        return now
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.upper())  # RFC 3339 allows t and z
        except ValueError:
            raise Rejected(f"time {value[:64]!r} is not an RFC 3339 timestamp") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise Rejected("time must be an RFC 3339 timestamp with its offset (or Z)")
    if not EARLIEST <= value <= now + MAX_AHEAD:
        raise Rejected(f"time {value.isoformat()} is not between {EARLIEST.date()} and a few "
                       "minutes from now")
    return value.astimezone(UTC)


def _duration(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or not 0 <= value <= MAX_MILLISECONDS:
        raise Rejected(f"duration_ms must be a number of milliseconds from 0 to "
                       f"{MAX_MILLISECONDS:.0f}")
    return round(float(value), 3)


def _status(value: Any) -> int:
    if value is None:
        return 200
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise Rejected("status must be an HTTP status code (100 to 599)")
    return value
