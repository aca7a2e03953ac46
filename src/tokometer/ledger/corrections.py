"""Corrections: a late usage report or a refund is a new event, never an edit.

A correction copies its original's attribution and carries only differences (negative for a
refund), so sums over events, reports and budgets come out right while the log stays
append-only; `corrects` names the original and `price_ref` the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..amounts import amount, whole_number
from ..errors import RequestError
from ..events import CORRECTION, Event, new_event_id, rfc3339

TOKEN_DELTAS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
                "reasoning_tokens")
_KEPT = ("key_id", "tenant", "app", "agent", "task", "end_user", "consumer_region", "api",
         "operation", "stream", "provider", "provider_region", "model_requested", "model",
         "model_origin", "currency", "status", "source")


def correction(original: dict[str, Any], changes: dict[str, Any], reason: str) -> Event:
    """The event correcting `original` (a stored event) by `changes` (token and cost deltas)."""
    if not isinstance(reason, str) or not reason.strip():
        raise RequestError("a correction needs a reason (a non-empty string)")
    tokens: dict[str, Any] = {name: whole_number(changes.get(name, 0), name)
                              for name in TOKEN_DELTAS}
    cost = amount(changes.get("cost", "0"), "cost", negative=True)
    if not any(tokens.values()) and not cost:
        raise RequestError("a correction must change some tokens or the cost")
    return Event(
        id=new_event_id(), time=rfc3339(datetime.now(UTC)), duration_ms=0.0, ttft_ms=None,
        **{k: original[k] for k in _KEPT}, **tokens, usage_source=CORRECTION,
        counted_input_tokens=None, counted_output_tokens=None, cost=cost,
        price_ref=f"correction: {reason.strip()}", error_type=None, finish_reason=None,
        corrects=original["id"])
