"""Prices: tariffs, genai-prices at the request's time, and no model ever recorded as free
when nobody knows its price."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

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
