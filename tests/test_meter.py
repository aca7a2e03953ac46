"""One finished request → one Event, even when a tokenizer fails."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from decimal import Decimal

from tokometer.catalog import Pricer
from tokometer.config import Model, Price, Provider, Route
from tokometer.events import Usage
from tokometer.gateway.call import Call
from tokometer.gateway.meter import Meter, Outcome
from tokometer.gateway.wire import ENDPOINTS
from tokometer.policy import Consumer
from tokometer.tokenize import Recounter

PROVIDER = Provider("p", "openai", "http://x", None, None, "US", None, None)
ROUTE = Route(PROVIDER, "custom-model")
PRICE = Price(Decimal(1), Decimal(2), Decimal(1), Decimal(1))


class BrokenRegistry:
    def get(self, spec: str):
        raise RuntimeError("tokenizer blew up")


def call(model: Model, body: dict) -> Call:
    return Call(ENDPOINTS["/v1/chat/completions"], body, b"{}", model, True,
                Consumer("k", "t", "a", None), None, None, None, {}, datetime.now(UTC),
                time.perf_counter())


def test_a_failing_recount_becomes_an_estimate_not_a_lost_reading(caplog):
    model = Model("m", (ROUTE,), None, "hf:/broken.json", None, PRICE)
    body = {"model": "m", "messages": [{"role": "user", "content": "12345678"}]}
    meter = Meter(Recounter(BrokenRegistry()), Pricer("USD"))  # type: ignore[arg-type]
    event = asyncio.run(meter.event(call(model, body), Outcome(ROUTE, 200,
                                                               text=lambda: "hello world")))
    assert event.usage_source == "estimated"
    assert event.output_tokens == math.ceil(len("hello world") / 4)
    assert event.input_tokens > 0
    assert event.counted_input_tokens is None and event.counted_output_tokens is None
    assert event.cost == (event.input_tokens * 1 + event.output_tokens * 2) / Decimal(10**6)
    assert "tokenizer blew up" in caplog.text


def test_reported_usage_wins_and_errors_bill_nothing():
    model = Model("m", (ROUTE,), None, None, None, PRICE)
    meter = Meter(Recounter(BrokenRegistry()), Pricer("USD"))  # type: ignore[arg-type]
    ok = asyncio.run(meter.event(call(model, {"model": "m"}),
                                 Outcome(ROUTE, 200, reported=Usage(10, 0, 0, 5, 0))))
    assert (ok.input_tokens, ok.output_tokens, ok.usage_source) == (10, 5, "reported")
    failed = asyncio.run(meter.event(call(model, {"model": "m"}),
                                     Outcome(ROUTE, 502, error_type="upstream_error")))
    assert (failed.input_tokens, failed.output_tokens, failed.cost) == (0, 0, Decimal(0))
