"""A client request, parsed and checked before anything is sent upstream."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ..config import Model, Settings
from ..errors import RequestError
from ..policy import ANONYMOUS, Consumer
from .steering import Steering, parse_steering
from .wire import Endpoint


@dataclass(slots=True)
class Call:
    endpoint: Endpoint
    body: dict[str, Any]
    raw: bytes
    model: Model
    stream: bool
    consumer: Consumer
    agent: str | None
    task: str | None
    end_user: str | None
    client_headers: dict[bytes, bytes]
    started: datetime
    t0: float  # perf_counter at arrival
    steering: Steering | None = None

    @property
    def client_wants_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True


def parse_call(endpoint: Endpoint, raw: bytes, headers: dict[bytes, bytes],
               settings: Settings, consumer: Consumer, t0: float) -> Call:
    started = datetime.now(UTC)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise RequestError("the request has no 'model' (a string naming a configured model)")
    model = settings.models.get(name)
    if model is None:
        raise RequestError(f"the model {name!r} does not exist on this gateway; "
                           "GET /v1/models lists the configured ones",
                           status=404, code="model_not_found")
    routes = [r for r in model.routes if r.provider.api == endpoint.api]
    if not routes:
        raise RequestError(f"the model {name!r} is not served over the {endpoint.api} API here")
    if not any(r.provider.usable for r in routes):
        missing = ", ".join(sorted({r.provider.api_key_env or "" for r in routes}))
        raise RequestError(f"the model {name!r} has no usable provider: set {missing} and "
                           "restart the gateway", status=503, type="provider_unavailable")
    steering = parse_steering(body["provider"]) if "provider" in body else None
    return _call(endpoint, body, raw, model, headers, consumer, t0, started, steering)


def refused_call(endpoint: Endpoint, raw: bytes, headers: dict[bytes, bytes],
                 settings: Settings, t0: float) -> Call:
    """A request refused before it could be parsed (a bad key): what can be known of it."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    body = body if isinstance(body, dict) else {}
    name = body.get("model") if isinstance(body.get("model"), str) else ""
    model = settings.models.get(name) or Model(name, (), None, None, None, None)
    return _call(endpoint, body, raw, model, headers, ANONYMOUS, t0, datetime.now(UTC), None)


def _call(endpoint: Endpoint, body: dict[str, Any], raw: bytes, model: Model,
          headers: dict[bytes, bytes], consumer: Consumer, t0: float, started: datetime,
          steering: Steering | None) -> Call:
    stream = body.get("stream") is True
    user = body.get("user")
    return Call(
        endpoint=endpoint,
        body=body,
        raw=raw,
        model=model,
        stream=stream,
        consumer=consumer,
        agent=_header(headers, b"x-tokometer-agent"),
        task=_header(headers, b"x-tokometer-task"),
        end_user=_header(headers, b"x-tokometer-user") or (user if isinstance(user, str) else None),
        client_headers=headers,
        started=started,
        t0=t0,
        steering=steering,
    )


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value else None


def elapsed_ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)
