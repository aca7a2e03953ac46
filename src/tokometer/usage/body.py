"""A whole (non-streamed) response body → what the provider said it consumed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..events import Usage
from .dialects import dialect_for, usage_from


@dataclass(frozen=True, slots=True)
class Reading:
    usage: Usage | None  # None: the provider reported nothing
    model: str | None
    finish_reason: str | None


def read_body(operation: str, body: dict[str, Any]) -> Reading:
    raw = body.get("usage")
    usage = usage_from(dialect_for(operation), raw) if isinstance(raw, dict) else None
    model = body.get("model")
    return Reading(usage, model if isinstance(model, str) else None, _finish(operation, body))


def _finish(operation: str, body: dict[str, Any]) -> str | None:
    reason = _raw_finish(operation, body)
    return reason if isinstance(reason, str) else None  # a provider's malformed value is dropped


def _raw_finish(operation: str, body: dict[str, Any]) -> Any:
    if operation == "messages":
        return body.get("stop_reason")
    if operation == "responses":
        details = body.get("incomplete_details")
        if isinstance(details, dict) and details.get("reason"):
            return details["reason"]
        return body.get("status")
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0].get("finish_reason")
    return None
