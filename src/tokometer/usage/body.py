"""A whole (non-streamed) response body → what the provider said it consumed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from ..events import Usage
from .dialects import dialect_for, usage_from

MAX_TIER_CHARS = 64  # a tier name is a short word; anything longer is not recorded


def parse_json(raw: bytes) -> Any:
    """A provider's JSON; ValueError if it is not JSON. orjson first (fast); Python's own
    reader for what orjson refuses but RFC 8259 allows: a lone surrogate escape ("\\ud83d",
    a model cut off inside an emoji), which would otherwise make a billed answer unreadable."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return json.loads(raw)
        except RecursionError:  # nested deeper than orjson's 1,024 levels too
            raise ValueError("JSON nested too deeply") from None


@dataclass(frozen=True, slots=True)
class Reading:
    usage: Usage | None  # None: the provider reported nothing
    model: str | None
    finish_reason: str | None
    service_tier: str | None = None  # the tier the provider says it served, which it prices


def read_body(operation: str, body: dict[str, Any]) -> Reading:
    raw = body.get("usage")
    usage = (usage_from(dialect_for(operation), raw, web_search_calls(operation, body))
             if isinstance(raw, dict) else None)
    model = body.get("model")
    return Reading(usage, model if isinstance(model, str) else None, _finish(operation, body),
                   service_tier(body))


def service_tier(document: dict[str, Any]) -> str | None:
    """OpenAI's top-level `service_tier` (chat, Responses), else Anthropic's in its usage."""
    tier = document.get("service_tier")
    if tier is None and isinstance(document.get("usage"), dict):
        tier = document["usage"].get("service_tier")
    return tier if isinstance(tier, str) and 0 < len(tier) <= MAX_TIER_CHARS else None


def web_search_calls(operation: str, response: dict[str, Any]) -> int:
    """Web searches an OpenAI Responses answer made: its `web_search_call` output items."""
    output = response.get("output") if operation == "responses" else None
    if not isinstance(output, list):
        return 0
    return sum(1 for item in output
               if isinstance(item, dict) and item.get("type") == "web_search_call")


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
