"""One finished request → one Event, even when a tokenizer fails."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import orjson
import pytest

from tokometer.catalog import Pricer
from tokometer.config import Model, Price, Provider, Route
from tokometer.counting import Recounter
from tokometer.events import Outcome, Usage
from tokometer.gateway.call import MAX_LABEL_CHARS, Call
from tokometer.gateway.meter import Meter
from tokometer.gateway.upstream import upstream_body
from tokometer.gateway.wire import ENDPOINTS
from tokometer.policy import Consumer

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


class BrokenPricer(Pricer):
    def price(self, *args, **kwargs):
        raise ArithmeticError("pricing blew up")


def text_that_breaks() -> str:
    raise RecursionError("a provider's answer nested too deep")


def raw_call(model: Model, body: dict) -> Call:
    c = call(model, body)
    c.raw = orjson.dumps(body)
    return c


def test_a_meter_that_fails_records_an_estimate_from_the_request_size(caplog):
    model = Model("m", (ROUTE,), None, "hf:/broken.json", None, PRICE)
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
    meter = Meter(Recounter(BrokenRegistry()), Pricer("USD"))  # type: ignore[arg-type]
    event = asyncio.run(meter.event(raw_call(model, body),
                                    Outcome(ROUTE, 200, text=text_that_breaks), "e1"))
    assert event.usage_source == "estimated" and event.status == 200
    assert event.input_tokens == math.ceil(len(orjson.dumps(body)) / 4)
    assert event.cost == event.input_tokens * Decimal(1) / Decimal(10**6)
    assert "metering event e1 failed" in caplog.text
    refused = asyncio.run(meter.event(raw_call(model, body),
                                      Outcome(ROUTE, 502, text=text_that_breaks)))
    assert (refused.input_tokens, refused.output_tokens, refused.cost) == (0, 0, Decimal(0))


def test_a_price_that_fails_is_unknown_not_free(caplog):
    model = Model("m", (ROUTE,), None, None, None, PRICE)
    meter = Meter(Recounter(BrokenRegistry()), BrokenPricer("USD"))  # type: ignore[arg-type]
    event = asyncio.run(meter.event(call(model, {"model": "m"}),
                                    Outcome(ROUTE, 200, reported=Usage(10, 0, 0, 5, 0)), "e2"))
    assert (event.input_tokens, event.output_tokens, event.usage_source) == (10, 5, "reported")
    assert event.cost is None and "pricing event e2 failed" in caplog.text


def test_implausible_reported_usage_is_recounted():
    model = Model("m", (ROUTE,), None, None, None, PRICE)
    body = {"model": "m", "messages": [{"role": "user", "content": "12345678"}]}
    meter = Meter(Recounter(BrokenRegistry()), Pricer("USD"))  # type: ignore[arg-type]

    def reading(usage: Usage, text: str = "hello world") -> tuple[int, int, str]:
        event = asyncio.run(meter.event(call(model, body), Outcome(ROUTE, 200, reported=usage,
                                                                   text=lambda: text)))
        return event.input_tokens, event.output_tokens, event.usage_source

    estimated_input = math.ceil(8 / 4) + 4  # the text, and 4 tokens for the message
    assert reading(Usage(-10, 0, 0, 5, 0)) == (estimated_input, 3, "estimated")
    assert reading(Usage(0, 0, 0, 5, 0)) == (estimated_input, 3, "estimated")
    assert reading(Usage(10, 0, 0, 0, 0)) == (10, 3, "estimated")  # input kept, output recounted
    assert reading(Usage(10, 0, 0, 0, 0), text="") == (10, 0, "reported")  # truly nothing
    # A part larger than its whole: more cached than input, more 1-hour writes than writes.
    assert reading(Usage(10, 5_000, 0, 3, 0)) == (estimated_input, 3, "estimated")
    assert reading(Usage(10, 0, 5, 3, 0, 500)) == (estimated_input, 3, "estimated")


def test_a_request_for_the_priority_tier_reserves_at_the_priority_price():
    """genai-prices prices gpt-4.1 higher at the priority tier; the reservation must too."""
    openai_route = Route(Provider("openai", "openai", "http://x", None, None, "US", None, None),
                         "gpt-4.1")
    model = Model("gpt-4.1", (openai_route,), None, None, None, None)
    meter = Meter(Recounter(BrokenRegistry()), Pricer("USD"))
    usage = Usage(input_tokens=1_000, output_tokens=1_000)
    by_tier = {tier: meter.need(call(model, {"model": "gpt-4.1", "service_tier": tier}),
                                [openai_route], usage).cost
               for tier in ("priority", "default", "auto", "bogus")}
    info = genai_prices.calc_price(genai_prices.Usage(input_tokens=1_000, output_tokens=1_000),
                                   "gpt-4.1", provider_id="openai",
                                   price_context={"service_tier": "priority"})
    assert by_tier["priority"] == info.total_price > by_tier["default"] * Decimal("1.5")
    assert by_tier["auto"] == by_tier["bogus"] == by_tier["default"]


def test_strings_a_provider_sends_are_bounded_before_they_are_stored():
    """A hostile or broken provider's megabyte `model`, finish reason or error type."""
    model = Model("m", (ROUTE,), None, None, None, PRICE)
    meter = Meter(Recounter(BrokenRegistry()), Pricer("USD"))  # type: ignore[arg-type]
    huge = "x" * 1_000_000
    event = asyncio.run(meter.event(call(model, {"model": "m"}), Outcome(
        ROUTE, 500, error_type=huge, reported=Usage(10, 0, 0, 5, 0), model=huge,
        finish_reason=huge, service_tier=huge)))
    assert [len(v) for v in (event.model, event.error_type, event.finish_reason,
                             event.service_tier)] == [MAX_LABEL_CHARS] * 4


@pytest.mark.parametrize(("path", "upstream_model", "provider", "key"), [
    ("/v1/chat/completions", "gpt-5", "openai", "max_completion_tokens"),
    ("/v1/chat/completions", "deepseek-chat", "deepseek", "max_tokens"),
    ("/v1/completions", "gpt-3.5-turbo-instruct", "openai", "max_tokens"),
    ("/v1/responses", "gpt-5", "openai", "max_output_tokens"),
])
def test_the_reserved_bound_goes_upstream_where_the_provider_reads_it(path, upstream_model,
                                                                      provider, key):
    route = Route(Provider(provider, "openai", "http://x", None, None, "US", None, None),
                  upstream_model)
    model = Model("m", (route,), None, None, None, PRICE, max_output_tokens=700)
    meter = Meter(Recounter(BrokenRegistry()), Pricer("USD"))  # type: ignore[arg-type]
    body = {"model": upstream_model, "input": "hi", "prompt": "hi", "messages": []}
    c = Call(ENDPOINTS[path], body, orjson.dumps(body), model, False,
             Consumer("k", "t", "a", None), None, None, None, {}, datetime.now(UTC),
             time.perf_counter())
    assert upstream_body(c, route) == c.raw  # unmetered: the client's bytes, untouched
    c.output_bound = meter.unstated_bound(c)
    assert orjson.loads(upstream_body(c, route))[key] == 700
    assert meter.unstated_bound(call(model, {"model": "m", "max_tokens": 5})) is None


class CountingTokenizer:
    """Splits on spaces, and remembers every text it was asked to count."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def count(self, text: str) -> int:
        self.texts.append(text)
        return len(text.split())

    count_prompt = count


class OneTokenizer:
    def __init__(self, tok: CountingTokenizer) -> None:
        self.tok = tok

    def get(self, spec: str) -> CountingTokenizer:
        return self.tok


def test_a_metered_requests_input_is_counted_once_for_its_reservation_and_recount():
    """The reservation (expected) and the recount of the same route read the same count, and
    the request's text is tokenized once, not twice: the recount still covers the output."""
    tok = CountingTokenizer()
    model = Model("m", (ROUTE,), None, "hf:/counting.json", None, PRICE)
    body = {"model": "m", "max_tokens": 7,
            "messages": [{"role": "user", "content": "one two three"}]}
    meter = Meter(Recounter(OneTokenizer(tok)), Pricer("USD"))  # type: ignore[arg-type]
    c = call(model, body)
    expected = asyncio.run(meter.expected(c))
    assert tok.texts.count("one two three") == 1
    # no template for an hf: tokenizer: the message's tokens plus 4 per message (an estimate)
    assert expected == Usage(input_tokens=3 + 4, output_tokens=7)
    event = asyncio.run(meter.event(c, Outcome(ROUTE, 200, reported=Usage(7, 0, 0, 2, 0),
                                               text=lambda: "four five")))
    assert tok.texts.count("one two three") == 1  # not again for the recount
    assert tok.texts.count("four five") == 1  # the output is recounted
    assert event.usage_source == "reported" and event.input_tokens == 7
    assert event.counted_input_tokens is None  # an estimate is not recorded as a count
    assert event.counted_output_tokens == 2


def test_the_input_is_counted_once_per_route_whichever_route_answers():
    """A count is kept per (tokenizer, provider model): the reservation counts each route the
    request may take, and the recount reads the count of the route that answered."""
    tok = CountingTokenizer()
    other = Route(PROVIDER, "other-model")
    model = Model("m", (ROUTE, other), None, "hf:/counting.json", None, PRICE)
    body = {"model": "m", "max_tokens": 7,
            "messages": [{"role": "user", "content": "one two three"}]}
    meter = Meter(Recounter(OneTokenizer(tok)), Pricer("USD"))  # type: ignore[arg-type]
    c = call(model, body)
    asyncio.run(meter.expected(c))
    before = tok.texts.count("one two three")
    assert before == 2  # one count per route (their image rules may differ)
    asyncio.run(meter.event(c, Outcome(other, 200, text=lambda: "four five")))
    assert tok.texts.count("one two three") == before  # other-model was counted already
