"""Prices: tariffs, genai-prices at the request's time, and no model ever recorded as free
when nobody knows its price."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import data_snapshot

from tokometer.catalog.pricing import Pricer, genai_cost, genai_usage
from tokometer.config import Model, Price, Provider, Route
from tokometer.events import Usage

USAGE = Usage(input_tokens=5000, cache_read_tokens=1200, cache_write_tokens=300,
              output_tokens=700, reasoning_tokens=100, cache_write_1h_tokens=120,
              web_search_requests=3)


def route(provider: str, model: str) -> Route:
    return Route(Provider(provider, "openai", "http://x", None, None, None, None, None), model)


def model(name: str, price: Price | None = None) -> Model:
    return Model(name, (route("p", name),), None, None, None, price)


def test_the_fast_path_equals_genai_prices_own_calculator_for_every_model():
    at = datetime(2025, 9, 1, tzinfo=UTC)
    checked = 0
    for provider in data_snapshot.get_snapshot().providers:
        for info in provider.models:
            try:
                expected = info.calc_price(genai_usage(USAGE), provider,
                                           genai_request_timestamp=at).total_price
            except (ValueError, LookupError, KeyError):
                continue  # prices that need more than token counts
            assert genai_cost(provider, info, USAGE, at) == expected, (provider.id, info.id)
            checked += 1
    assert checked > 1000


def test_history_applies_the_price_in_force_at_the_request_time():
    snapshot = data_snapshot.get_snapshot()
    changed = next(
        (p, m) for p in snapshot.providers for m in p.models
        if not hasattr(m.prices, "input_mtok") and len(m.prices) > 1
        and m.prices[1].constraint is not None and hasattr(m.prices[1].constraint, "start_date"))
    provider, info = changed
    start = info.prices[1].constraint.start_date
    start = datetime(start.year, start.month, start.day, tzinfo=UTC)
    before = datetime(start.year - 1, start.month, start.day, tzinfo=UTC)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    pricer = Pricer("USD")
    r = Route(Provider(provider.id, "openai", "http://x", None, None, None, None, None), info.id)
    m = Model(info.id, (r,), None, None, None, None)
    old, new = pricer.price(m, r, usage, before), pricer.price(m, r, usage, start)
    for at, priced in ((before, old), (start, new)):
        assert priced.cost == info.calc_price(genai_usage(usage), provider,
                                              genai_request_timestamp=at).total_price
    assert old.cost != new.cost


def test_a_tariff_bills_each_kind_of_token_at_its_rate():
    price = Price(input=Decimal("2"), output=Decimal("8"), cache_read=Decimal("0.5"),
                  cache_write=Decimal("2.5"))
    priced = Pricer("EUR").price(model("x", price), route("p", "x"), USAGE, datetime.now(UTC))
    assert priced.cost == (3500 * 2 + 1200 * Decimal("0.5") + 300 * Decimal("2.5")
                           + 700 * 8) / Decimal(1_000_000)
    assert priced.price_ref == "tariff:config"


def test_an_unknown_model_costs_null_with_a_warning(caplog):
    priced = Pricer("USD").price(model("mystery-9000"), route("p", "mystery-9000"), USAGE,
                                 datetime.now(UTC))
    assert priced.cost is None and priced.price_ref is None
    assert "no price for model 'mystery-9000'" in caplog.text


def test_genai_prices_is_only_used_for_usd():
    priced = Pricer("EUR").price(model("gpt-4o"), route("openai", "gpt-4o"), USAGE,
                                 datetime.now(UTC))
    assert priced.cost is None


@pytest.mark.parametrize("name", ["gpt-4o", "deepseek-chat", "claude-sonnet-4-6",
                                  "kimi-k2-0905-preview", "mistral-large-latest",
                                  "gemini-2.5-flash", "MiniMax-M2"])
def test_major_vendors_are_priced_by_genai_prices(name):
    provider = {"gpt-4o": "openai", "deepseek-chat": "deepseek", "claude-sonnet-4-6": "anthropic",
                "kimi-k2-0905-preview": "moonshotai", "mistral-large-latest": "mistral",
                "gemini-2.5-flash": "google", "MiniMax-M2": "minimax"}[name]
    priced = Pricer("USD").price(model(name), route(provider, name), USAGE, datetime.now(UTC))
    assert priced.cost is not None and priced.cost > 0


def test_separately_priced_reasoning_tokens_are_billed_at_their_rate():
    """Perplexity's deep research bills reasoning at its own rate (genai-prices'
    output_reasoning_mtok): the output less its reasoning at the output rate."""
    usage = Usage(input_tokens=10_000, output_tokens=3_000, reasoning_tokens=2_000)
    at = datetime.now(UTC)
    priced = Pricer("USD").price(model("sonar-deep-research"),
                                 route("perplexity", "sonar-deep-research"), usage, at)
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=10_000, output_tokens=3_000,
                           output_reasoning_tokens=2_000),
        "sonar-deep-research", provider_id="perplexity", genai_request_timestamp=at)
    assert expected.model_price.output_reasoning_mtok != expected.model_price.output_mtok
    assert priced.cost == expected.total_price
    assert priced.cost == (10_000 * 2 + 1_000 * 8 + 2_000 * 3) / Decimal(1_000_000)


def test_a_tariff_bills_one_hour_writes_at_the_write_rate_unless_it_names_one():
    usage = Usage(input_tokens=10_000, cache_write_tokens=4_000, cache_write_1h_tokens=3_000,
                  output_tokens=0, web_search_requests=5)
    base = Price(input=Decimal(3), output=Decimal(15), cache_read=Decimal("0.3"),
                 cache_write=Decimal("3.75"))
    pricer, at = Pricer("USD"), datetime.now(UTC)
    plain = pricer.price(model("x", base), route("p", "x"), usage, at).cost
    assert plain == (6_000 * 3 + 4_000 * Decimal("3.75")) / Decimal(1_000_000)
    full = replace(base, cache_write_1h=Decimal(6), web_search=Decimal(10))
    assert pricer.price(model("x", full), route("p", "x"), usage, at).cost == \
        (6_000 * 3 + 1_000 * Decimal("3.75") + 3_000 * 6) / Decimal(1_000_000) \
        + 5 * Decimal(10) / 1000


def test_the_served_model_is_priced_when_the_catalog_knows_it():
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    at = datetime.now(UTC)
    m, r = model("gpt-4o-mini"), route("openai", "gpt-4o-mini")
    pricer = Pricer("USD")
    served = pricer.price(m, r, usage, at, served="gpt-4o-2024-08-06")
    assert served.price_ref.endswith(":openai/gpt-4o")
    assert served.cost == genai_prices.calc_price(genai_prices.Usage(
        input_tokens=1_000_000, output_tokens=1_000_000), "gpt-4o", provider_id="openai",
        genai_request_timestamp=at).total_price
    unknown = pricer.price(m, r, usage, at, served="my-finetune-v7")  # not in the catalog
    assert unknown == pricer.price(m, r, usage, at)
    assert unknown.price_ref.endswith(":openai/gpt-4o-mini")


@pytest.mark.parametrize("tier", ["priority", "flex", "default", "scale"])
def test_a_service_tier_is_priced_as_genai_prices_prices_it(tier):
    usage = Usage(input_tokens=100_000, cache_read_tokens=20_000, output_tokens=5_000,
                  reasoning_tokens=1_000)
    at = datetime.now(UTC)
    priced = Pricer("USD").price(model("o4-mini"), route("openai", "o4-mini"), usage, at,
                                 service_tier=tier)
    expected = genai_prices.calc_price(genai_usage(usage), "o4-mini", provider_id="openai",
                                       genai_request_timestamp=at,
                                       price_context={"service_tier": tier}).total_price
    assert priced.cost == expected
    default = Pricer("USD").price(model("o4-mini"), route("openai", "o4-mini"), usage, at).cost
    assert (priced.cost != default) is (tier in ("priority", "flex"))  # "scale": no variant


def test_a_reading_genai_prices_refuses_is_unknown_not_an_error(caplog):
    """Sonnet 4.5's tiered prices go through genai-prices' calculator, which refuses a part
    larger than its whole: the price is unknown (null, with a warning), never an exception."""
    bad = Usage(input_tokens=10_000, cache_write_tokens=100, cache_write_1h_tokens=5_000,
                output_tokens=10)
    priced = Pricer("USD").price(model("claude-sonnet-4-5"),
                                 route("anthropic", "claude-sonnet-4-5"), bad, datetime.now(UTC))
    assert (priced.cost, priced.price_ref) == (None, None)
    assert "genai-prices cannot price a reading of model 'claude-sonnet-4-5'" in caplog.text
