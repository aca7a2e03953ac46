"""Every unit a provider bills, read from realistic responses through the real gateway and
priced to the Decimal against genai-prices' own calculator (or a hand computation of a tariff):
Anthropic's 1-hour cache writes and web searches, OpenAI's service tiers and Responses web
searches, the model the provider served, and the currency of every amount."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import genai_prices
import openai
import orjson
import pytest

from conftest import Gateway, start_gateway, stop_gateway
from fake_upstream import FIXTURES, FakeUpstream

CLAUDE_TARIFF = {"input": Decimal(3), "cache_read": Decimal("0.3"), "cache_write": Decimal("3.75"),
                 "cache_write_1h": Decimal(6), "output": Decimal(15), "web_search": Decimal(10)}


def _config(upstream: FakeUpstream, extra: str = "") -> str:
    return f"""{extra}
[[providers]]
name = "openai-fake"
api = "openai"
base_url = "{upstream.url}/v1"
price_provider = "openai"

[[providers]]
name = "anthropic-fake"
api = "anthropic"
base_url = "{upstream.url}/anthropic"
price_provider = "anthropic"

[[models]]
name = "claude"                  # the route's model is the fake's scenario name, which no
routes = [{{ provider = "anthropic-fake", model = "claude-1h" }}]   # catalog knows

[[models]]
name = "claude-tariff"
routes = [{{ provider = "anthropic-fake", model = "claude-1h" }}]
[models.price]
input = 3
cache_read = 0.3
cache_write = 3.75
cache_write_1h = 6
output = 15
web_search = 10

[[models]]
name = "gpt-4.1"
routes = [{{ provider = "openai-fake", model = "gpt-4.1-priority" }}]

[[models]]
name = "gpt-4.1-search"
routes = [{{ provider = "openai-fake", model = "gpt-4.1-search" }}]

[[models]]
name = "gpt-4o-mini"
routes = [{{ provider = "openai-fake", model = "gpt-4o-mini" }}]

[[models]]
name = "glm-cny"
routes = [{{ provider = "openai-fake", model = "gpt-4o-mini" }}]
price = {{ input = 2, cache_read = 0.5, output = 8, currency = "CNY" }}

[[budgets]]
tenant = "budgeted"
limit = 100
unit = "{'EUR' if 'EUR' in extra else 'USD'}"
period = "month"
"""


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("readings"), _config(upstream))
    yield gateway
    stop_gateway(gateway)


@pytest.fixture(scope="module")
def eur_gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    rates = """[[exchange_rates]]
from = "USD"
to = "EUR"
rate = 0.8
since = 2025-01-01

[[exchange_rates]]
from = "USD"
to = "EUR"
rate = 0.9125
since = 2026-01-01
"""
    gateway = start_gateway(tmp_path_factory.mktemp("readings-eur"),
                            'currency = "EUR"\n' + _config(upstream, rates))
    yield gateway
    stop_gateway(gateway)


def body(fixture: str) -> dict[str, Any]:
    return orjson.loads((FIXTURES / f"{fixture}.json").read_bytes())


def at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00"))


def ask_claude(gw: Gateway, model: str, stream: bool) -> tuple[dict[str, Any], Any]:
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    kw = {"model": model, "max_tokens": 1024, "tools": [{"type": "web_search_20250305",
                                                         "name": "web_search", "max_uses": 5}],
          "messages": [{"role": "user", "content": "When was Claude Shannon born?"}]}
    if stream:
        with client.messages.with_streaming_response.create(stream=True, **kw) as r:
            kinds = [e.type for e in r.parse()]
            assert kinds[-1] == "message_stop"
            return gw.event(r.headers["x-tokometer-event-id"]), r.headers
    raw = client.messages.with_raw_response.create(**kw)
    assert raw.parse().content[-1].text == "Claude Shannon was born on April 30, 1916."
    return gw.event(raw.headers["x-tokometer-event-id"]), raw.headers


def ask_openai(gw: Gateway, model: str, stream: bool, key: str | None = None,
               responses: bool = False) -> tuple[dict[str, Any], Any]:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key or gw.key, max_retries=0)
    if responses:
        create = client.responses
        kw: dict[str, Any] = {"model": model, "input": "Any good news today?",
                              "tools": [{"type": "web_search"}]}
    else:
        create = client.chat.completions
        kw = {"model": model, "messages": [{"role": "user", "content": "Say hello."}]}
    if stream:
        with create.with_streaming_response.create(stream=True, **kw) as r:
            assert list(r.parse())
            return gw.event(r.headers["x-tokometer-event-id"]), r.headers
    raw = create.with_raw_response.create(**kw)
    raw.parse()
    return gw.event(raw.headers["x-tokometer-event-id"]), raw.headers


def anthropic_oracle(event: dict[str, Any]) -> genai_prices.types.PriceCalculation:
    """genai-prices reading the provider's own JSON body and pricing it (its extractor knows
    `cache_creation` and `server_tool_use`)."""
    return genai_prices.extract_usage(body("anthropic_1h"), provider_id="anthropic") \
        .calc_price(genai_request_timestamp=at(event))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_anthropic_one_hour_cache_writes_and_web_searches_are_billed_at_their_rates(gw, stream):
    event, headers = ask_claude(gw, "claude", stream)
    assert (event["input_tokens"], event["cache_read_tokens"], event["cache_write_tokens"],
            event["cache_write_1h_tokens"], event["output_tokens"],
            event["web_search_requests"]) == (44125, 12000, 30000, 20000, 512, 2)
    assert event["service_tier"] == "standard"
    oracle = anthropic_oracle(event)
    assert oracle.model.id == "claude-sonnet-4-6"
    assert Decimal(event["cost"]) == oracle.total_price == Decimal("0.195155")
    # Read as 5-minute writes (as before), the hour's 20,000 would have cost $2.25/M less.
    five_minutes = genai_prices.Usage(input_tokens=44125, cache_read_tokens=12000,
                                      cache_write_tokens=30000, output_tokens=512,
                                      web_searches=2)
    cheaper = oracle.model.calc_price(five_minutes, oracle.provider,
                                      genai_request_timestamp=at(event)).total_price
    assert Decimal(event["cost"]) - cheaper == 20000 * (Decimal(6) - Decimal("3.75")) / 10**6
    assert event["price_ref"].endswith(":anthropic/claude-sonnet-4-6")
    assert event["currency"] == "USD"
    if not stream:
        assert Decimal(headers["x-tokometer-cost"]) == Decimal(event["cost"])
        assert headers["x-tokometer-currency"] == "USD"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_tariff_bills_one_hour_writes_and_web_searches_at_its_own_rates(gw, stream):
    event, _ = ask_claude(gw, "claude-tariff", stream)
    t = CLAUDE_TARIFF
    expected = ((44125 - 12000 - 30000) * t["input"] + 12000 * t["cache_read"]
                + 10000 * t["cache_write"] + 20000 * t["cache_write_1h"] + 512 * t["output"]
                ) / 10**6 + 2 * t["web_search"] / 1000
    assert Decimal(event["cost"]) == expected
    assert event["price_ref"] == "tariff:config" and event["currency"] == "USD"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_priority_request_is_priced_at_the_priority_tier(gw, stream):
    event, headers = ask_openai(gw, "gpt-4.1", stream)
    assert event["service_tier"] == "priority"
    assert event["model"] == "gpt-4.1-2025-04-14"
    extracted = genai_prices.extract_usage(body("openai_priority"), provider_id="openai",
                                           api_flavor="chat")
    priority = extracted.calc_price(genai_request_timestamp=at(event),
                                    price_context={"service_tier": "priority"}).total_price
    default = extracted.calc_price(genai_request_timestamp=at(event)).total_price
    assert Decimal(event["cost"]) == priority
    assert priority > default * Decimal("1.5")  # the old reading: billed at the default tier
    assert event["price_ref"].endswith(":openai/gpt-4.1 service_tier=priority")
    if not stream:
        assert Decimal(headers["x-tokometer-cost"]) == priority


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_web_search_calls_are_billed_per_search(gw, stream):
    event, _ = ask_openai(gw, "gpt-4.1-search", stream, responses=True)
    searches = sum(1 for item in body("responses_search")["output"]
                   if item["type"] == "web_search_call")
    assert event["web_search_requests"] == searches == 2
    assert event["service_tier"] == "default"
    # genai-prices' extractor does not count output items: give it the count.
    usage = genai_prices.Usage(input_tokens=9012, output_tokens=340, web_searches=searches)
    expected = genai_prices.calc_price(usage, "gpt-4.1-2025-04-14", provider_id="openai",
                                       genai_request_timestamp=at(event),
                                       price_context={"service_tier": "default"}).total_price
    assert Decimal(event["cost"]) == expected
    assert expected - genai_prices.calc_price(
        genai_prices.Usage(input_tokens=9012, output_tokens=340), "gpt-4.1",
        provider_id="openai", genai_request_timestamp=at(event)).total_price == Decimal("0.02")


def test_a_tariff_in_its_own_currency_is_recorded_and_sent_in_that_currency(gw):
    event, headers = ask_openai(gw, "glm-cny", stream=False)
    expected = ((2006 - 1920) * 2 + 1920 * Decimal("0.5") + 300 * 8) / Decimal(10**6)
    assert Decimal(event["cost"]) == expected
    assert event["currency"] == "CNY"
    assert (Decimal(headers["x-tokometer-cost"]), headers["x-tokometer-currency"]) == \
        (expected, "CNY")


def test_a_money_budget_cannot_be_kept_on_a_route_priced_in_another_currency(gw):
    key, _ = gw.new_key(tenant="budgeted")
    with pytest.raises(openai.APIStatusError) as refused:
        ask_openai(gw, "glm-cny", stream=False, key=key)
    assert refused.value.status_code == 402
    event, _ = ask_openai(gw, "gpt-4o-mini", stream=False, key=key)  # in USD: admitted
    assert event["tenant"] == "budgeted" and event["currency"] == "USD"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_catalog_prices_are_converted_with_the_rate_in_force(eur_gw, stream):
    event, headers = ask_claude(eur_gw, "claude", stream)
    usd = anthropic_oracle(event).total_price
    assert Decimal(event["cost"]) == usd * Decimal("0.9125")
    assert event["currency"] == "EUR"
    assert event["price_ref"].endswith("; 1 USD = 0.9125 EUR (rate since 2026-01-01)")
    if not stream:
        assert headers["x-tokometer-currency"] == "EUR"


def test_a_server_in_another_currency_keeps_its_tariffs_currency(eur_gw):
    event, headers = ask_openai(eur_gw, "glm-cny", stream=False)
    assert event["currency"] == headers["x-tokometer-currency"] == "CNY"


def test_the_example_config_prices_glm_4_5():
    from tokometer.config import load

    example = Path(__file__).parent.parent / "examples" / "tokometer.toml"
    price = load(example, environ={}).models["glm-4.5"].price
    assert price is not None and price.input > 0 and price.output > 0


def test_the_new_fields_export_typed(gw, tmp_path):
    import pyarrow.parquet as pq

    from tokometer.analytics.export import export
    from tokometer.ledger import open_store

    event, _ = ask_claude(gw, "claude", stream=False)
    conn = open_store(gw.store)
    try:
        export(conn, "parquet", tmp_path / "events.parquet", since=event["time"])
    finally:
        conn.close()
    table = pq.read_table(tmp_path / "events.parquet")
    assert table.schema.field("web_search_requests").type == "int64"
    assert table.schema.field("cache_write_1h_tokens").type == "int64"
    row = next(r for r in table.to_pylist() if r["id"] == event["id"])
    assert (row["cache_write_1h_tokens"], row["web_search_requests"], row["service_tier"]) == \
        (20000, 2, "standard")
