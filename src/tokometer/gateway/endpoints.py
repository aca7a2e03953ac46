"""Every endpoint as an entry of one route table: (method, path) → handler(request, services).

The metered endpoints (wire.ENDPOINTS) authenticate before they read a body and hand the
request to pipeline.handle; the side endpoints (health, models, outcomes, usage reported by
apps (ingest/), the log, metrics, the admin API, the dashboard) answer here. `route` finds
a request's handler, or says why not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from ..analytics.tasks import record_outcome
from ..catalog import vendor_of
from ..config import Settings
from ..errors import AuthError, RequestError
from ..events import new_event_id
from ..ingest import Result, cloudevents, otlp
from ..ingest.body import decoded, media_type
from ..policy import Consumer
from ..policy.keys import is_key_shaped
from .asgi import Request, reply, reply_json
from .call import parse_call, refused_call
from .dashboard import NAV
from .pipeline import handle, refuse
from .services import Services, api_key
from .session import scope_client
from .wire import ENDPOINTS, EVENT_ID_HEADER, path_parts

Handler = Callable[[Request, Services], Awaitable[None]]
_T = TypeVar("_T")
OTLP_TRACES, EVENTS = "/v1/otlp/v1/traces", "/v1/events"  # the ingest endpoints
_OFFLOAD_BYTES = 65_536  # an ingest body longer than this is read off the event loop
_PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
MAX_CHECK_CHARS = 200_000  # a provenance check's text: a long answer's, a few times over


async def metered(request: Request, services: Services) -> None:
    """A provider call: refused (and recorded) without a valid key, else the pipeline's."""
    endpoint = ENDPOINTS[request.path]
    try:
        consumer = await services.authenticate(request.headers)
    except AuthError as error:  # recorded from the headers; the body is never read
        call = refused_call(endpoint, request.headers, request.t0)
        return await refuse(call, error, services.deps, request.send, new_event_id())
    raw = await request.body(services.settings.server)
    call = parse_call(endpoint, raw, request.headers, services.settings, consumer, request.t0)
    await handle(call, services.deps, request.send, request.receive)


async def health(request: Request, services: Services) -> None:
    await reply_json(request.send, 200, {"status": "ok"})


async def models(request: Request, services: Services) -> None:
    await services.authenticate(request.headers)
    await reply_json(request.send, 200, _model_list(services.settings,
                                                    b"anthropic-version" in request.headers))


async def outcomes(request: Request, services: Services) -> None:
    """How one of the consumer's tasks ended."""
    who = await services.authenticate(request.headers)
    body = await request.json(services.settings.server)
    await reply_json(request.send, 201, await services.side.run(record_outcome, who, body))


async def _admin_or_key(request: Request, services: Services) -> Consumer | None:
    """The consumer a key names, or None for the admin token."""
    client, token = scope_client(request.scope), services.admin.token
    # A braked address is not asked for the admin token (keys still work: behind a proxy
    # it is everyone's); a wrong token not shaped like a key is a guess at the admin's.
    if token.braked(client) is None and services.admin.is_admin(request.headers):
        return None
    try:
        return await services.authenticate(request.headers)
    except AuthError:
        if not is_key_shaped(api_key(request.headers) or ""):
            token.wrong(client)
        raise


async def log(request: Request, services: Services) -> None:
    """The Merkle log's read endpoints, for consumers' keys and the admin token."""
    who = await _admin_or_key(request, services)
    path, transparency = request.path, services.transparency
    if path == "/v1/ledger/head":
        data = await transparency.head()
    elif path == "/v1/ledger/consistency":
        data = await transparency.consistency(request.scope.get("query_string", b""))
    elif (event_id := path.removeprefix("/v1/receipts/")) != path and event_id \
            and "/" not in event_id:
        data = await transparency.receipt(event_id, who)
    else:
        raise _not_found(request)
    await reply_json(request.send, 200, data)


async def provenance(request: Request, services: Services) -> None:
    """Was this text generated here? The admin token asks of every tenant's answers, a key
    of its own tenant's."""
    who = await _admin_or_key(request, services)
    body = await request.json(services.settings.server)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise RequestError('give the text to check as {"text": "..."}')
    if len(text) > MAX_CHECK_CHARS:
        raise RequestError(f"a text to check may have at most {MAX_CHECK_CHARS:,} characters",
                           status=413)
    await reply_json(request.send, 200, await services.transparency.provenance(
        text, who.tenant if who is not None else None))


async def spans(request: Request, services: Services) -> None:
    """OTLP/HTTP traces: each GenAI span a reading of the key's consumer."""
    def read(body: bytes, media: str) -> list[Any]:
        return otlp.readings(otlp.decode(body, media), datetime.now(UTC))

    results, media = await _ingested(request, services, read), media_type(request.headers)
    await reply(request.send, 200, otlp.answer(results, media), _tally(results),
                content_type=media.encode())


async def usage_events(request: Request, services: Services) -> None:
    """CloudEvents of type tokometer.usage.v1: readings of the key's consumer."""
    def read(body: bytes, media: str) -> list[Any]:
        events = cloudevents.decode(body, media, request.headers)
        return cloudevents.readings(events, datetime.now(UTC))

    results = await _ingested(request, services, read)
    await reply_json(request.send, 200, cloudevents.answer(results), _tally(results))


async def _ingested(request: Request, services: Services,
                    read: Callable[[bytes, str], list[Any]]) -> list[Result]:
    """An ingest request's readings, recorded: the key checked before the body is read, the
    body decoded (gzip undone) and `read` with its media type, off the loop when long."""
    who = await services.authenticate(request.headers)
    server = services.settings.server
    raw, media = await request.body(server), media_type(request.headers)

    def work() -> list[Any]:
        return read(decoded(raw, request.headers, server.max_body_bytes), media)

    return await services.ingest.record(who, await _offloaded(request, raw, work))


async def _offloaded(request: Request, raw: bytes, work: Callable[[], _T]) -> _T:
    """`work` on a thread when the body is long enough to hold the event loop up: as sent,
    or once decompressed (a few kilobytes of gzip can hold megabytes)."""
    encoded = request.headers.get(b"content-encoding", b"identity").strip().lower()
    if len(raw) > _OFFLOAD_BYTES or encoded != b"identity":
        return await asyncio.to_thread(work)
    return work()


def _tally(results: list[Result]) -> list[tuple[bytes, bytes]]:
    """How many readings were accepted, duplicates, rejected: a header for any channel."""
    counts = ", ".join(f"{kind}={sum(r.result == kind for r in results)}"
                       for kind in ("accepted", "duplicate", "rejected"))
    return [(b"x-tokometer-ingest", counts.encode())]


async def metrics(request: Request, services: Services) -> None:
    """Prometheus' scrape, for the admin token."""
    services.admin.check(request.headers, scope_client(request.scope))
    await reply(request.send, 200, await services.metrics(), content_type=_PROMETHEUS)


async def admin(request: Request, services: Services) -> None:
    services.admin.check(request.headers, scope_client(request.scope))
    body = await request.json(services.settings.server)
    parts = path_parts(request.scope, request.path)[1:]
    status, data = await services.admin.handle(request.method, parts, body)
    named = [(EVENT_ID_HEADER, data["id"].encode())] if parts == ["corrections"] \
        else []  # a correction's answer is an event: named like every other
    await reply(request.send, status, orjson.dumps(data), named)


async def dashboard(request: Request, services: Services) -> None:
    body = await request.body(services.settings.server) if request.method == "POST" else b""
    status, headers, page = await services.dashboard.handle(
        request.method, request.path, request.scope, request.headers, body)
    await request.send({"type": "http.response.start", "status": status, "headers": headers})
    await request.send({"type": "http.response.body", "body": page})


_ANY = None  # the handler itself says which methods it takes
_EXACT: dict[str, tuple[frozenset[str] | None, Handler]] = {
    **{path: (frozenset({"POST"}), metered) for path in ENDPOINTS},
    "/healthz": (_ANY, health),
    "/v1/models": (frozenset({"GET"}), models),
    "/v1/outcomes": (frozenset({"POST"}), outcomes),
    "/v1/provenance/check": (frozenset({"POST"}), provenance),
    OTLP_TRACES: (frozenset({"POST"}), spans),
    EVENTS: (frozenset({"POST"}), usage_events),
    "/metrics": (frozenset({"GET"}), metrics),
    **{href: (_ANY, dashboard) for href in ("/login", *(h for h, _ in NAV))},
}
_PREFIXES: tuple[tuple[str, frozenset[str] | None, Handler], ...] = (
    ("/admin/", _ANY, admin),
    ("/tenants/", _ANY, dashboard),
    ("/wallets/", _ANY, dashboard),
    ("/v1/ledger/", frozenset({"GET"}), log),
    ("/v1/receipts/", frozenset({"GET"}), log),
)


def route(request: Request) -> Handler:
    """The request's handler; RequestError 404 (no such path) or 405 (not that method)."""
    path, method = request.path, request.method
    if "\x00" in path:  # a percent-decoded %00: the ids a path names go to the store
        raise RequestError("the path contains a NUL character")
    found = _EXACT.get(path) or next(((m, h) for prefix, m, h in _PREFIXES
                                      if path.startswith(prefix)), None)
    if found is None:
        raise _not_found(request)
    methods, handler = found
    if methods is not None and method not in methods:
        raise RequestError(f"{path} takes {' or '.join(sorted(methods))}, not {method}",
                           status=405)
    return handler


def side_api(request: Request) -> str:
    """The wire shape of a request's errors: its endpoint's, OpenAI's for side endpoints, but
    Anthropic's for the Anthropic SDK's model list."""
    endpoint = ENDPOINTS.get(request.path)
    if endpoint is not None:
        return endpoint.api
    anthropic = request.path == "/v1/models" and b"anthropic-version" in request.headers
    return "anthropic" if anthropic else "openai"


def _not_found(request: Request) -> RequestError:
    return RequestError(f"no such endpoint: {request.method} {request.path}", status=404,
                        type="not_found_error")


def _model_list(settings: Settings, anthropic: bool) -> dict[str, Any]:
    names = list(settings.models)
    if anthropic:
        data = [{"type": "model", "id": n, "display_name": n,
                 "created_at": "1970-01-01T00:00:00Z"} for n in names]
        return {"data": data, "has_more": False, "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None}
    return {"object": "list", "data": [
        {"id": n, "object": "model", "created": 0, "owned_by": _owner(settings, n)}
        for n in names]}


def _owner(settings: Settings, name: str) -> str:
    info = vendor_of(settings.models[name].routes[0].model)
    return info.vendor if info else settings.models[name].routes[0].provider.name
