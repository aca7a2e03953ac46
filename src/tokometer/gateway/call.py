"""A client request, parsed and checked before anything is sent upstream.

Every string a client sends that reaches an event or a label (the model, the attribution
headers, OpenAI's `user`) is UTF-8 of at most MAX_LABEL_CHARS characters with no NUL (which
PostgreSQL cannot store: one would fail the batch of events it is written in); a request
that breaks the bound is refused with a 400 before anything is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from ..bounds import MAX_LABEL_CHARS, bounded
from ..config import Model, Settings
from ..counting.recount import Count
from ..errors import RequestError
from ..policy import ANONYMOUS, Consumer
from .steering import Steering, parse_steering
from .wire import Endpoint

_ATTRIBUTION = (b"x-tokometer-agent", b"x-tokometer-task", b"x-tokometer-user")
_UNKNOWN_MODEL = Model("", (), None, None, None, None)  # a refusal's: its body went unread


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
    # The output bound the gateway reserved and sends upstream for a metered request that
    # set none (else nothing would hold the provider to what was reserved).
    output_bound: int | None = None
    # The input as counted by (tokenizer spec, provider model): the reservation and the
    # recount both need it, and it is counted once (gateway/meter.py).
    input_counts: dict[tuple[str | None, str | None], Count] = field(default_factory=dict)

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
    bounded(name, "'model'")
    _check_stream(body)
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
    agent, task, end_user = (_header(headers, h) for h in _ATTRIBUTION)
    if not end_user and isinstance(user := body.get("user"), str):
        end_user = bounded(user, "'user'")
    return Call(endpoint=endpoint, body=body, raw=raw, model=model,
                stream=body.get("stream") is True, consumer=consumer, agent=agent, task=task,
                end_user=end_user, client_headers=headers, started=started, t0=t0,
                steering=steering)


def refused_call(endpoint: Endpoint, headers: dict[bytes, bytes], t0: float) -> Call:
    """A request refused by its key before its body was read: recorded with no text of the
    client's at all (its attribution is an unauthenticated claim, and anyone could fill the
    append-only log with it); the body, model included, is never read."""
    return Call(endpoint=endpoint, body={}, raw=b"", model=_UNKNOWN_MODEL, stream=False,
                consumer=ANONYMOUS, agent=None, task=None, end_user=None,
                client_headers=headers, started=datetime.now(UTC), t0=t0)


def _check_stream(body: dict[str, Any]) -> None:
    """`stream` and `stream_options` as the APIs define them; the gateway rewrites the latter."""
    if not _is_flag(body.get("stream")):
        raise RequestError("'stream' must be true or false")
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object like {\"include_usage\": true}")
    if not _is_flag(options.get("include_usage")):
        raise RequestError("'stream_options.include_usage' must be true or false")


def _is_flag(value: Any) -> bool:
    return value is None or isinstance(value, bool)


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    """An attribution header as UTF-8 text within the bound; RequestError (400) if not."""
    value = headers.get(name)
    if not value:
        return None
    what = f"the header {name.decode()}"
    try:
        text = value.decode()
    except UnicodeDecodeError:
        raise RequestError(f"{what} is not valid UTF-8") from None
    return bounded(text, what)


def clip(text: str | None) -> str | None:
    """A string from outside (a provider's model, finish reason or error type) cut to the
    bound, NULs dropped and lone surrogates replaced (no store can encode them), before it
    is stored: a provider's answer is input too."""
    if not text:
        return text
    return (text[:MAX_LABEL_CHARS].replace("\x00", "")
            .encode("utf-8", "replace").decode("utf-8"))

