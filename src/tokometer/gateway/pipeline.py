"""The walk of one request, one call per stage. Read this file first.

authenticate (app.py) → parse → try routes in order → relay (body, error or stream)
→ meter (usage, recount, price) → ledger append (durable) → last byte to the client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..config import Route
from ..errors import LedgerError, TokometerError, UpstreamError
from ..events import Event, new_event_id
from ..ledger import SQLiteLedger
from .call import Call
from .meter import Meter, Outcome
from .relay import Receive, Send, relay_body, relay_error, relay_stream
from .upstream import open_response
from .wire import EVENT_ID_HEADER, JSON_HEADERS, render_error, sse_error

_RETRYABLE = frozenset({429, 500, 502, 503, 504, 529})
log = logging.getLogger("tokometer.gateway")


@dataclass(frozen=True, slots=True)
class Deps:
    session: aiohttp.ClientSession
    meter: Meter
    ledger: SQLiteLedger


async def handle(call: Call, deps: Deps, send: Send, receive: Receive) -> None:
    event_id = new_event_id()
    started = False

    async def record(outcome: Outcome) -> Event:
        event = await deps.meter.event(call, outcome, event_id)
        await deps.ledger.append(event)
        return event

    async def tracked_send(message: dict[str, Any]) -> None:
        nonlocal started
        started = True
        await send(message)

    route, answer = await _first_answer(call, deps)
    try:
        try:
            if isinstance(answer, UpstreamError):
                raise answer
            async with answer as response:
                if response.status >= 400:
                    await relay_error(call, route, response, event_id, record, tracked_send)
                elif response.content_type == "text/event-stream":
                    await relay_stream(call, route, response, event_id, record, tracked_send,
                                       receive)
                else:
                    await relay_body(call, route, response, event_id, record, tracked_send)
        except UpstreamError as error:
            await record(Outcome(route, error.status, error_type=error.type))
            await _send_error(send, call, error, event_id)
    except LedgerError as error:
        # Fail loudly: an unrecorded reading is never passed off as a normal answer.
        log.error("event %s was not recorded: %s", event_id, error.message)
        if not started:
            await _send_error(send, call, error, event_id)
        else:  # a stream: end it with an error event instead of its end marker
            await send({"type": "http.response.body",
                        "body": sse_error(call.endpoint.api, error)})


async def _send_error(send: Send, call: Call, error: TokometerError, event_id: str) -> None:
    status, body = render_error(call.endpoint.api, error)
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (EVENT_ID_HEADER, event_id.encode())]})
    await send({"type": "http.response.body", "body": body})


async def _first_answer(call: Call,
                        deps: Deps) -> tuple[Route, aiohttp.ClientResponse | UpstreamError]:
    """Try the model's routes in order; the next one only if nothing reached the client."""
    routes = [r for r in call.model.routes
              if r.provider.api == call.endpoint.api and r.provider.usable]
    answer: aiohttp.ClientResponse | UpstreamError
    for route in routes:
        try:
            answer = await open_response(deps.session, call, route)
        except UpstreamError as error:
            answer = error
            continue
        if answer.status not in _RETRYABLE or route is routes[-1]:
            break
        answer.release()
    return route, answer
