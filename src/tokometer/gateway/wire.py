"""What the client sees of the gateway itself: endpoints, error bodies, our headers.

Every error the gateway produces is rendered here, in the shape the client's SDK expects:
OpenAI's `{"error": {...}}` or Anthropic's `{"type": "error", "error": {...}}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import orjson

from ..errors import TokometerError


@dataclass(frozen=True, slots=True)
class Endpoint:
    api: str  # wire protocol: "openai" | "anthropic"
    operation: str  # DESIGN.md's operation names
    upstream_path: str  # appended to the provider's base_url


ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint("openai", "chat", "/chat/completions"),
    "/v1/completions": Endpoint("openai", "text_completion", "/completions"),
    "/v1/responses": Endpoint("openai", "responses", "/responses"),
    "/v1/embeddings": Endpoint("openai", "embeddings", "/embeddings"),
    "/v1/messages": Endpoint("anthropic", "messages", "/v1/messages"),
}

EVENT_ID_HEADER = b"x-tokometer-event-id"
COST_HEADER = b"x-tokometer-cost"
CURRENCY_HEADER = b"x-tokometer-currency"  # the currency of x-tokometer-cost, always with it
BALANCE_HEADER = b"x-tokometer-balance"  # what a wallet has left, on its 402s
JSON_HEADERS = [(b"content-type", b"application/json")]

_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
    429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
    504: "api_error",
}


def error_body(api: str, status: int, type_: str, message: str, code: str | None = None) -> bytes:
    if api == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None,
                                   "code": code}})


def render_error(api: str, error: TokometerError) -> tuple[int, bytes]:
    return error.status, error_body(api, error.status, error.type, error.message, error.code)


def sse_error(api: str, error: TokometerError) -> bytes:
    """An error as a stream event, which both SDKs raise as an exception."""
    _, body = render_error(api, error)
    prefix = b"event: error\n" if api == "anthropic" else b""
    return prefix + b"data: " + body + b"\n\n"


def is_shaped_error(api: str, body: bytes) -> bool:
    """Whether an upstream error body already has the client's SDK's error shape."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return False
    return api != "anthropic" or data.get("type") == "error"


def path_parts(scope: dict[str, Any], path: str) -> list[str]:
    """The path's segments, each decoded once: split as sent (`path` is decoded already), so
    a name holding "/" or "%" (sent as %2F, %25) stays one segment and is not decoded twice."""
    raw = scope.get("raw_path")
    sent = raw.decode("utf-8", "replace").split("?", 1)[0] if raw else quote(path)
    return [unquote(p) for p in sent.strip("/").split("/") if p]
