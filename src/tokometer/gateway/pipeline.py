"""The walk of one request, one call per stage. Read this file first.

authenticate (app.py) → parse → plan routes (rules, strategy) → admit (rate limits,
budgets) → try routes in order → relay (body, error or stream, all but its last part) →
record (meter: usage, recount, price; ledger: durable append; budgets settled) → finish
(the last part to the client):

    outcome, finish = await relay(...)
    event = await _record(call, outcome, ...)
    await finish(event)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Route
from ..errors import LedgerError, PolicyError, RequestError, TokometerError, UpstreamError
from ..events import Event, Outcome, new_event_id
from ..ledger import Ledger
from ..policy import Guard, Ticket
from ..policy.residency import allowed_routes
from ..policy.shared import SharedGuard
from ..provenance.registry import Registry
from .asgi import Receive, Send, TrackedSend
from .call import Call
from .labels import Labels
from .meter import Meter
from .metrics import Metrics
from .relay import Finish, relay
from .router import Router
from .upstream import Answer, Upstream, open_response
from .wire import BALANCE_HEADER, EVENT_ID_HEADER, JSON_HEADERS, render_error, sse_error

_RETRYABLE = frozenset({429, 500, 502, 503, 504, 529})
log = logging.getLogger("tokometer.gateway")


@dataclass(frozen=True, slots=True)
class Deps:
    upstream: Upstream
    meter: Meter
    ledger: Ledger
    router: Router
    guard: Guard
    metrics: Metrics
    labels: Labels = field(default_factory=lambda: Labels(""))  # of every generated answer
    registry: Registry | None = None  # the provenance registry the answers are marked in
    shared: SharedGuard | None = None  # budgets and limits held in a store processes share
    # The streams being relayed, each as the call that ends it, recorded (a stop is near).
    streams: set[Callable[[], None]] = field(default_factory=set)


async def handle(call: Call, deps: Deps, send: TrackedSend, receive: Receive) -> None:
    event_id = new_event_id()
    try:
        routes, ticket = await _admit(call, deps, event_id)
    except RequestError as refusal:  # policy, or the client's routing left no route
        return await refuse(call, refusal, deps, send, event_id)
    try:
        await _forward(call, deps, send, receive, routes, ticket, event_id)
    finally:
        ticket.release()  # never recorded (cancelled): release what it reserved
        if deps.shared is not None:
            await deps.shared.release(ticket, None)


async def _admit(call: Call, deps: Deps, event_id: str) -> tuple[list[Route], Ticket]:
    """The routes the request may take, and its reservations; PolicyError if refused.

    The expected usage (a count of the input) is worked out only when a strategy, limit or
    budget needs it; nothing is awaited between the guard's check and its reservation.
    """
    metered = deps.guard.meters(call.consumer)
    if metered:
        deps.meter.check_reservable(call)
        call.output_bound = deps.meter.unstated_bound(call)
    expected = (await deps.meter.expected(call)
                if metered or deps.router.ranks_by_price(call) else None)
    routes = allowed_routes(call.model, deps.router.candidates(call),
                            deps.guard.rules_for(call.consumer))
    routes = deps.router.rank(call, routes, expected)
    need = deps.meter.need(call, routes, expected) if metered and expected else None
    ticket = deps.guard.admit(call.consumer, need, call.started)
    if deps.shared is not None:
        try:
            await deps.shared.reserve(ticket, event_id)  # and in the store, for all
        except BaseException:
            ticket.withdraw()
            raise
    return routes, ticket


async def refuse(call: Call, refusal: RequestError, deps: Deps, send: Send,
                 event_id: str) -> None:
    """Record a refused request (no provider saw it) and tell the client why."""
    event = await deps.meter.event(call, Outcome(None, refusal.status,
                                                 error_type=refusal.code or refusal.type),
                                   event_id)
    deps.metrics.observe(event)
    try:
        await deps.ledger.append(event)
    except LedgerError as error:  # the refusal stands either way
        log.error("refusal %s was not recorded: %s", event_id, error.message)
    await _send_error(send, call, refusal, event_id)


async def _forward(call: Call, deps: Deps, send: TrackedSend, receive: Receive,
                   routes: list[Route], ticket: Ticket, event_id: str) -> None:
    route, answer = await _first_answer(call, deps, routes)
    try:
        try:
            if isinstance(answer, UpstreamError):
                raise answer
            async with answer as response:
                outcome, finish = await relay(call, route, response, event_id, send, receive,
                                              deps.streams, deps.labels)
        except UpstreamError as error:
            outcome, finish = (Outcome(route, error.status, error_type=error.type),
                               _error_reply(send, call, error, event_id))
        if isinstance(answer, Answer):
            outcome.server_cpu_s = answer.cpu_seconds  # a local server's, once it answered
        event = await _record(call, outcome, deps, ticket, event_id)  # durable, then...
        await finish(event)  # ...the rest of the answer
    except LedgerError as error:
        # Fail loudly: an unrecorded reading is never passed off as a normal answer.
        log.error("event %s was not recorded: %s", event_id, error.message)
        if not send.started:
            await _send_error(send, call, error, event_id)
        else:  # a stream: end it with an error event instead of its end marker
            await send({"type": "http.response.body",
                        "body": sse_error(call.endpoint.api, error)})


async def _record(call: Call, outcome: Outcome, deps: Deps, ticket: Ticket,
                  event_id: str) -> Event:
    """The reading, durable in the ledger with the answer's provenance mark, and the
    reservations settled from it."""
    mark = await deps.registry.mark(_answer(outcome)) if deps.registry else None
    event = await deps.meter.event(call, outcome, event_id, mark)
    deps.metrics.observe(event)
    covering = deps.guard.budgets_for(call.consumer)  # now: held, or added since admission
    along = mark.writes(event_id) if mark is not None else ()
    try:  # a shared store's budgets settle in the transaction that records the event
        if deps.shared is None:
            await deps.ledger.append(event, along)
        else:
            await deps.ledger.append(event, along + deps.shared.settling(ticket, event,
                                                                        covering))
            deps.shared.settled(ticket)
    finally:
        ticket.settle(event, covering)
        if deps.shared is not None and ticket.stored is not None:
            # Not recorded (tokens may have been delivered), or cancelled while its append
            # was queued, which commits with the settling or fails all the same: once the
            # ledger has done either, the release settles only what it did not.
            await deps.ledger.committed()
            await deps.shared.release(ticket, event, covering)
    return event


def _answer(outcome: Outcome) -> str:
    """The generated text to register: none for a failed answer, or one that broke it."""
    if not outcome.produced:
        return ""
    try:
        return outcome.answer()
    except Exception:  # the meter records an estimate for it; the registry passes
        return ""


def _error_reply(send: Send, call: Call, error: TokometerError, event_id: str) -> Finish:
    async def finish(event: Event) -> None:
        await _send_error(send, call, error, event_id)
    return finish


async def _send_error(send: Send, call: Call, error: TokometerError, event_id: str) -> None:
    status, body = render_error(call.endpoint.api, error)
    headers = [*JSON_HEADERS, (EVENT_ID_HEADER, event_id.encode())]
    if isinstance(error, PolicyError) and error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    if isinstance(error, PolicyError) and error.balance is not None:
        headers.append((BALANCE_HEADER, error.balance.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _first_answer(call: Call, deps: Deps, routes: list[Route]
                        ) -> tuple[Route, Answer | UpstreamError]:
    """Try the planned routes in order; the next one only if nothing reached the client."""
    answer: Answer | UpstreamError
    for route in routes:
        t = time.perf_counter()
        try:
            answer = await open_response(deps.upstream, call, route)
        except UpstreamError as error:
            deps.router.observe(route, (time.perf_counter() - t) * 1000, ok=False)
            answer = error
            continue
        ok = answer.status not in _RETRYABLE
        deps.router.observe(route, (time.perf_counter() - t) * 1000, ok=ok)
        if ok or route is routes[-1]:
            break
        await answer.close()
    return route, answer
