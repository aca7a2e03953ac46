"""Passing a provider's response to the client byte for byte, reading usage on the way.

`relay` returns what came back (the meter's Outcome) and a `finish` that sends the rest once
the pipeline has recorded the event: a whole body goes out only then, and a stream is forwarded
event by event as it arrives but for its end marker (`[DONE]`, `message_stop`,
`response.completed`), so a client that saw the end knows its reading was recorded. A stream
the provider breaks off (or just stops, without its end marker) ends instead with an error
event in the client's wire format, so its SDK raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson

from ..config import Route
from ..errors import UpstreamError
from ..events import Event, Outcome, decimal_str, elapsed_ms
from ..usage import StreamTap, read_body
from ..usage.body import parse_json
from ..usage.stream import SSESplitter
from ..usage.text import TOOL_CALL, body_text
from .asgi import Receive, Send
from .call import Call
from .labels import HEADER as LABEL_HEADER
from .labels import Labels, dumps, label_body, notice_for, sign_body
from .stream_labels import stream_labels
from .upstream import Answer, without_address
from .wire import COST_HEADER, CURRENCY_HEADER, EVENT_ID_HEADER, is_shaped_error, sse_error

Finish = Callable[[Event], Awaitable[None]]  # sends what is left, once the event is recorded

_PASS_HEADERS = frozenset({"content-type", "x-request-id", "request-id", "openai-processing-ms",
                           "anthropic-organization-id", "retry-after"})
CLIENT_GONE = 499


def _headers(response: Answer, event_id: str) -> list[tuple[bytes, bytes]]:
    out = response.headers(_PASS_HEADERS)
    out.append((EVENT_ID_HEADER, event_id.encode()))
    return out


async def relay(call: Call, route: Route, response: Answer, event_id: str, send: Send,
                receive: Receive, streams: set[Callable[[], None]],
                labels: Labels) -> tuple[Outcome, Finish]:
    """The provider's answer relayed as far as it may go before its event is recorded, an
    answer labelled (labels.py); a stream is in `streams` while it is relayed, as the call
    that ends it."""
    if response.status >= 400:
        return await _relay_error(call, route, response, event_id, send)
    if response.content_type == "text/event-stream":
        return await _relay_stream(call, route, response, event_id, send, receive, streams,
                                   labels)
    return await _relay_body(call, route, response, event_id, send, labels)


async def _relay_body(call: Call, route: Route, response: Answer, event_id: str,
                      send: Send, labels: Labels) -> tuple[Outcome, Finish]:
    raw = await response.read()
    try:
        body = parse_json(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise UpstreamError(f"provider {route.provider.name} sent a malformed response body",
                            type="upstream_malformed")
    op = call.endpoint.operation
    reading = read_body(op, body)
    outcome = Outcome(
        route, response.status, reported=reading.usage, model=reading.model,
        service_tier=reading.service_tier, finish_reason=reading.finish_reason,
        tool_call=TOOL_CALL.search(raw) is not None, text=lambda: body_text(op, body),
    )
    notice = notice_for(labels.notices, call.consumer)
    if notice is not None:  # the provider's text is the reading's, the client gets the notice
        generated = body_text(op, body)
        labelled = bool(notice.text) and label_body(op, body, notice)
        if notice.c2pa and labels.manifests is not None:
            signed = await asyncio.to_thread(sign_body, labels.manifests, op, body, event_id,
                                             reading.model or route.model)
            labelled = signed or labelled
        if labelled:
            raw = dumps(body)
            outcome.text = lambda: generated
            outcome.received = lambda: body_text(op, body)
    headers = _headers(response, event_id)

    async def finish(event: Event) -> None:
        if event.cost is not None:
            headers.append((COST_HEADER, decimal_str(event.cost).encode()))
            headers.append((CURRENCY_HEADER, event.currency.encode()))
        answer = raw
        if op != "embeddings":  # vectors are not generated text: no label
            label = labels.label(event_id, event.output_sha256)
            headers.append((LABEL_HEADER, label))
            answer = labels.into_body(raw, body, label)
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return outcome, finish


async def _relay_error(call: Call, route: Route, response: Answer, event_id: str,
                       send: Send) -> tuple[Outcome, Finish]:
    """An upstream 4xx/5xx: passed through when already in the SDK's error shape."""
    raw = await response.read()
    if not is_shaped_error(call.endpoint.api, raw):
        snippet = without_address(raw[:200].decode("utf-8", "replace"), route)
        raise UpstreamError(f"provider {route.provider.name} answered HTTP {response.status}: "
                            f"{snippet}", type="upstream_error")
    headers = _headers(response, event_id)

    async def finish(event: Event) -> None:
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": raw})

    return Outcome(route, response.status, error_type=_error_type(raw)), finish


async def _relay_stream(call: Call, route: Route, response: Answer, event_id: str, send: Send,
                        receive: Receive, streams: set[Callable[[], None]],
                        labels: Labels) -> tuple[Outcome, Finish]:
    op = call.endpoint.operation
    tap = StreamTap(op, hide_usage_chunk=op in ("chat", "text_completion")
                    and not call.client_wants_usage)
    splitter = SSESplitter()
    held: list[bytes] = []  # the end marker and whatever follows it
    outcome = Outcome(route, response.status, text=tap.text)
    # Watch for the client leaving before anything is sent: granian tells a disconnect only
    # to a receive() already waiting, so one that comes after a client left fast (after
    # the first bytes) could wait for the stream's end.
    client_left = asyncio.ensure_future(_disconnected(receive))
    await asyncio.sleep(0)  # the watch is waiting now
    try:
        await send({"type": "http.response.start", "status": response.status,
                    "headers": [*_headers(response, event_id),
                                (LABEL_HEADER, labels.label(event_id))]})
    except BaseException:
        client_left.cancel()
        raise

    marker = stream_labels(op, notice_for(labels.notices, call.consumer), labels.manifests,
                           tap.texts, event_id, lambda: tap.model or route.model)
    if marker is not None:  # the client's text: the answer, with what was added to it
        outcome.received = lambda: marker.received(tap.texts())

    async def flush(out: list[bytes]) -> None:
        if outcome.ttft_ms is None:
            outcome.ttft_ms = elapsed_ms(call.t0)
        await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
        out.clear()

    async def pump() -> None:
        async for chunk in response.chunks():
            out: list[bytes] = []
            for block in splitter.feed(chunk):
                if not tap.feed(block):
                    continue
                to = held if tap.terminal else out
                if marker is None or not marker.active:
                    to.append(block)
                    continue
                if marker.signs and out:  # what the tap has read goes out before any wait
                    await flush(out)
                to.append(await marker.place(block))
            if out:
                await flush(out)

    # A client that leaves, or a stop near its end, cancels the pump (this task) wherever it
    # waits, but only while it pumps: once pumping ends (before any further await) the event
    # must still be recorded.
    this = asyncio.current_task()
    assert this is not None
    pumping, left, stopping = True, False, False

    def on_client_left(watch: asyncio.Future[None]) -> None:
        nonlocal left
        if pumping and not watch.cancelled():
            left = True
            this.cancel()

    def end() -> None:  # the process stops soon: end here, as a provider's cut would
        nonlocal stopping
        if pumping:
            stopping = True
            this.cancel()

    client_left.add_done_callback(on_client_left)  # (if it is done already: called soon)
    streams.add(end)
    broken: UpstreamError | None = None
    try:
        await pump()
    except asyncio.CancelledError:
        if not (left or stopping):
            raise  # cancelled from outside: the server is shutting down
        this.uncancel()
        if left:
            outcome.status, outcome.error_type = CLIENT_GONE, "client_disconnected"
        else:
            broken = UpstreamError("the gateway is stopping: the stream ends here",
                                   status=503, type="gateway_stopping")
            outcome.status, outcome.error_type = broken.status, broken.type
    except UpstreamError as error:  # the provider broke off or fell silent mid-stream
        broken = error
        outcome.status, outcome.error_type = error.status, error.type
    except OSError:  # writing to a client that has gone
        outcome.status, outcome.error_type = CLIENT_GONE, "client_disconnected"
    finally:
        pumping = False
        client_left.cancel()
        streams.discard(end)
    gone = outcome.status == CLIENT_GONE
    if tap.error is not None and (outcome.status < 400 or gone):
        # The provider's own error event, forwarded: it comes first even when the client's
        # SDK, raising on it, hung up before the provider closed the stream.
        outcome.status, outcome.error_type = 502, tap.error
    elif outcome.status < 400 and not (tap.terminal or tap.finish_reason):
        # Closed cleanly but before its end (no end marker, no finish reason): cut short all
        # the same, and the client's SDK would otherwise take the answer as whole.
        broken = UpstreamError(f"provider {route.provider.name} ended the stream before its "
                               "end", type="upstream_broken")
        outcome.status, outcome.error_type = broken.status, broken.type
    outcome.partial = outcome.status >= 400
    outcome.reported = tap.usage()
    outcome.usage_complete = tap.final_usage_seen
    outcome.model, outcome.finish_reason = tap.model, tap.finish_reason
    outcome.service_tier = tap.service_tier
    outcome.tool_call = tap.tool_call

    async def finish(event: Event) -> None:
        if broken is not None:
            # Not a half event, nor an end marker: an error event the client's SDK raises.
            await send({"type": "http.response.body",
                        "body": sse_error(call.endpoint.api, broken)})
        elif not gone:
            await send({"type": "http.response.body",
                        "body": b"".join([*held, splitter.rest()])})

    return outcome, finish


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _error_type(raw: bytes) -> str | None:
    error = orjson.loads(raw).get("error") or {}
    value = error.get("type") or error.get("code")
    return str(value) if value is not None else None
