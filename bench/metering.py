"""What metering one request costs the event loop, in µs, without the network: the parse of
the client's request, the reading of the provider's answer (a whole body, or a stream split
and tapped as it passes), the event (usage, recount, price) and its ledger row. The rest of a
request's CPU is the servers' and clients' (granian, pyreqwest) and the ledger's writer thread.

    .venv/bin/python bench/metering.py

Best of five runs, so a busy machine disturbs it less than it does bench/overhead.py.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from overhead import FIXTURES, sse_stream
from tokometer.catalog import Pricer
from tokometer.config import Model, Provider, Route
from tokometer.counting import Recounter
from tokometer.counting.registry import TokenizerRegistry
from tokometer.events import Outcome
from tokometer.gateway.call import Call
from tokometer.gateway.meter import Meter
from tokometer.gateway.wire import ENDPOINTS
from tokometer.ledger.rows import event_row
from tokometer.policy import Consumer
from tokometer.usage import StreamTap, read_body
from tokometer.usage.stream import SSESplitter
from tokometer.usage.text import TOOL_CALL, body_text

ROUTE = Route(Provider("nginx", "openai", "http://127.0.0.1:1/v1", None, None, "US", None,
                       None), "gpt-4o-mini")
MODEL = Model("bench", (ROUTE,), None, None, None, None)
REQUEST = orjson.dumps({"model": "bench", "messages": [{"role": "user",
                                                         "content": "Say hello."}]})


def per_request_us(fn: Callable[[], object], calls: int = 5_000) -> float:
    fn()  # warm caches (the tokenizer, the price)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def call(stream: bool) -> Call:
    body = orjson.loads(REQUEST)
    return Call(ENDPOINTS["/v1/chat/completions"], body, REQUEST, MODEL, stream,
                Consumer("k", "bench", "load", None), None, None, None, {}, datetime.now(UTC),
                time.perf_counter())


def whole(meter: Meter, raw: bytes, budget: bool = False) -> Callable[[], object]:
    """`budget`: a budget covers the key, so the request's worst case is reserved first."""
    def run() -> object:
        c = call(False)
        if budget:
            _sync(meter.expected(c))
        body = orjson.loads(raw)
        reading = read_body("chat", body)
        outcome = Outcome(ROUTE, 200, reported=reading.usage, model=reading.model,
                          service_tier=reading.service_tier,
                          finish_reason=reading.finish_reason,
                          tool_call=TOOL_CALL.search(raw) is not None,
                          text=lambda: body_text("chat", body))
        return event_row(_sync(meter.event(c, outcome)))
    return run


def streamed(meter: Meter, raw: bytes) -> Callable[[], object]:
    def run() -> object:
        c = call(True)
        tap, splitter = StreamTap("chat", hide_usage_chunk=True), SSESplitter()
        out: list[bytes] = []
        held: list[bytes] = []
        for block in splitter.feed(raw):
            if tap.feed(block):
                (held if tap.terminal else out).append(block)
        outcome = Outcome(ROUTE, 200, text=tap.text, reported=tap.usage(), model=tap.model,
                          service_tier=tap.service_tier, finish_reason=tap.finish_reason,
                          tool_call=tap.tool_call)
        outcome.usage_complete = tap.final_usage_seen
        return event_row(_sync(meter.event(c, outcome)))
    return run


def _sync(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """A meter coroutine's result: it awaits nothing for a request this small."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the meter awaited: the request was too large to count in line")


def main() -> None:
    meter = Meter(Recounter(TokenizerRegistry(Path(tempfile.mkdtemp()))), Pricer("USD"))
    body = (FIXTURES / "openai_chat.json").read_bytes()
    rows = [("whole answer (JSON)", whole(meter, body)),
            ("the same, with a budget", whole(meter, body, budget=True)),
            ("stream, 6 events", streamed(meter, (FIXTURES / "openai_chat.sse").read_bytes())),
            ("stream, 21 events", streamed(meter, sse_stream(21).encode()))]
    for name, run in rows:
        print(f"{name:<24} {per_request_us(run):8.1f} µs per request")


if __name__ == "__main__":
    main()
