"""Currency is explicit: tariffs name theirs, USD catalog prices are converted with the rate in
force on the request's day (or left unknown, saying why), and reports, rollups and budgets
never add amounts of different currencies."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from tokometer.analytics import rankings, report
from tokometer.analytics.report import rollup_grain
from tokometer.analytics.tasks import agents, tasks
from tokometer.catalog.pricing import Pricer, _genai_model, genai_cost
from tokometer.config import Budget, ExchangeRate, Model, Price, Provider, Route, Scope, load
from tokometer.errors import ConfigError
from tokometer.events import Event, Usage, new_event_id, rfc3339
from tokometer.ledger import SQLiteLedger, open_store
from tokometer.ledger.signer import load_signer
from tokometer.policy.budgets import amount_of, spent_in

USAGE = Usage(input_tokens=40_000, cache_read_tokens=10_000, cache_write_tokens=5_000,
              output_tokens=2_000, cache_write_1h_tokens=4_000)
RATES = (ExchangeRate("USD", "EUR", Decimal("0.8"), date(2025, 1, 1)),
         ExchangeRate("USD", "EUR", Decimal("0.9125"), date(2026, 1, 1)),
         ExchangeRate("CNY", "EUR", Decimal("0.125"), date(2025, 1, 1)),
         ExchangeRate("USD", "GBP", Decimal("0.75"), date(2025, 1, 1)))


def claude() -> tuple[Model, Route]:
    provider = Provider("anthropic", "anthropic", "http://x", None, None, None, None, None)
    route = Route(provider, "claude-sonnet-4-6")
    return Model("claude", (route,), None, None, None, None), route


def usd(at: datetime) -> Decimal:
    found = _genai_model("anthropic", "claude-sonnet-4-6")
    assert found is not None
    return genai_cost(*found, USAGE, at)


@pytest.mark.parametrize(("at", "rate", "since"), [
    (datetime(2025, 6, 1, tzinfo=UTC), "0.8", "2025-01-01"),
    (datetime(2026, 1, 1, tzinfo=UTC), "0.9125", "2026-01-01"),  # in force from its UTC day
    (datetime(2026, 12, 3, 23, 30, tzinfo=UTC), "0.9125", "2026-01-01"),
])
def test_catalog_prices_are_converted_with_the_rate_in_force_that_day(at, rate, since):
    model, route = claude()
    priced = Pricer("EUR", RATES).price(model, route, USAGE, at)
    assert priced.cost == usd(at) * Decimal(rate)
    assert priced.currency == "EUR"
    assert priced.price_ref.endswith(f"; 1 USD = {rate} EUR (rate since {since})")


def test_without_a_rate_in_force_the_price_is_unknown_and_the_warning_says_why(caplog):
    model, route = claude()
    before_any = datetime(2024, 12, 31, 23, 59, tzinfo=UTC)
    for pricer in (Pricer("EUR", RATES), Pricer("JPY", RATES)):
        at = before_any if pricer.currency == "EUR" else datetime.now(UTC)
        priced = pricer.price(model, route, USAGE, at)
        assert (priced.cost, priced.price_ref, priced.currency) == (None, None, pricer.currency)
        assert f"no USD->{pricer.currency} exchange rate in force" in caplog.text
    assert "since = 2024-12-31" in caplog.text  # the warning says what to add


def test_a_tariff_keeps_its_own_currency_and_is_never_converted():
    model, route = claude()
    price = Price(input=Decimal(2), output=Decimal(8), cache_read=Decimal("0.5"),
                  cache_write=Decimal(2), currency="CNY")
    priced = Pricer("EUR", RATES).price(dataclasses.replace(model, price=price), route, USAGE,
                                        datetime.now(UTC))
    assert priced.currency == "CNY" and priced.price_ref == "tariff:config"
    assert priced.cost == (25_000 * 2 + 10_000 * Decimal("0.5") + 5_000 * 2 + 2_000 * 8) \
        / Decimal(10**6)
    plain = dataclasses.replace(price, currency=None)
    assert Pricer("EUR").price(dataclasses.replace(model, price=plain), route, USAGE,
                               datetime.now(UTC)).currency == "EUR"
    # Reservations and routing compare amounts in the server currency only.
    foreign = dataclasses.replace(model, price=price)
    assert Pricer("EUR", RATES).estimate(foreign, route, USAGE, datetime.now(UTC)) is None
    assert Pricer("CNY").estimate(foreign, route, USAGE, datetime.now(UTC)) == priced.cost


@pytest.mark.parametrize(("toml", "error"), [
    ('[[exchange_rates]]\nfrom = "USD"\nto = "GBP"\nrate = 1\nsince = 2026-01-01\n',
     "exchange_rates[0].to: only rates to the server currency 'EUR' are used, got 'GBP'"),
    ('[[exchange_rates]]\nfrom = "CNY"\nto = "EUR"\nrate = 1\nsince = 2026-01-01\n',
     "exchange_rates[0].from: only rates from 'USD'"),
    ('[[exchange_rates]]\nfrom = "usd"\nto = "EUR"\nrate = 1\nsince = 2026-01-01\n',
     "exchange_rates[0].from: expected an ISO 4217 code"),
    ('[[exchange_rates]]\nfrom = "USD"\nto = "EUR"\nrate = 0\nsince = 2026-01-01\n',
     "exchange_rates[0].rate: must be positive"),
    ('[[exchange_rates]]\nfrom = "USD"\nto = "EUR"\nrate = -1\nsince = 2026-01-01\n',
     "exchange_rates[0].rate: cannot be negative"),
    ('[[exchange_rates]]\nfrom = "USD"\nto = "EUR"\nrate = 1\nsince = "2026-01-01"\n',
     "exchange_rates[0].since: expected a date like 2026-01-01 (unquoted)"),
    ('[[exchange_rates]]\nfrom = "USD"\nto = "EUR"\nrate = 1\nsince = 2026-01-01T00:00:00\n',
     "exchange_rates[0].since: expected a date"),
    ('[[exchange_rates]]\nfrom = "USD"\nto = "EUR"\nrate = 1\nsince = 2026-01-01\nfee = 1\n',
     "exchange_rates[0].fee: unknown key"),
    ('[[exchange_rates]]\nfrom = "USD"\nto = "EUR"\nrate = 1\nsince = 2026-01-01\n'
     '[[exchange_rates]]\nfrom = "USD"\nto = "EUR"\nrate = 2\nsince = 2026-01-01\n',
     "exchange_rates[1].since: a second USD->EUR rate from 2026-01-01"),
    ('[[models]]\nname = "m"\nroutes = [{ provider = "p" }]\n'
     'price = { input = 1, output = 2, currency = "yuan" }\n',
     "models[0].price.currency: expected an ISO 4217 code"),
    ('[[models]]\nname = "m"\nroutes = [{ provider = "p" }]\n'
     'price = { input = 1, output = 2, cache_write_1h = -1 }\n',
     "models[0].price.cache_write_1h: cannot be negative"),
])
def test_bad_rates_and_tariffs_are_refused_naming_the_key(tmp_path, toml, error):
    path = tmp_path / "t.toml"
    path.write_text('[server]\ncurrency = "EUR"\n[[providers]]\nname = "p"\napi = "openai"\n'
                    'base_url = "http://x"\n' + toml)
    with pytest.raises(ConfigError) as e:
        load(path, environ={})
    assert error in str(e.value)


def test_rates_and_tariff_keys_load(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[server]\ncurrency = "EUR"\n'
                    '[[providers]]\nname = "p"\napi = "openai"\nbase_url = "http://x"\n'
                    '[[models]]\nname = "m"\nroutes = [{ provider = "p" }]\n'
                    'price = { input = 3, output = 15, cache_write = 3.75, cache_write_1h = 6, '
                    'web_search = 10, currency = "CNY" }\n'
                    '[[exchange_rates]]\nfrom = "USD"\nto = "EUR"\nrate = 0.9125\n'
                    'since = 2026-01-01\n')
    s = load(path, environ={})
    assert s.models["m"].price == Price(Decimal(3), Decimal(15), Decimal(3), Decimal("3.75"),
                                        Decimal(6), Decimal(10), "CNY")
    assert s.exchange_rates == (ExchangeRate("USD", "EUR", Decimal("0.9125"),
                                             date(2026, 1, 1)),)


# --- amounts in different currencies are never added ------------------------------------------

BASE = Event(id="", time="", duration_ms=10.0, ttft_ms=None, key_id="k", tenant="acme", app="a",
             agent=None, task=None, end_user=None, consumer_region="DE", api="openai",
             operation="chat", stream=False, provider="p", provider_region="US",
             model_requested="m", model="gpt-4o-mini", model_origin="US", input_tokens=1000,
             cache_read_tokens=0, cache_write_tokens=0, output_tokens=100, reasoning_tokens=0,
             usage_source="reported", counted_input_tokens=None, counted_output_tokens=None,
             cost=None, currency="USD", price_ref=None, status=200, error_type=None,
             finish_reason="stop")
MIXED = [("USD", "1.25"), ("CNY", "7"), ("USD", "0.5"), ("CNY", "3.5"), ("EUR", "2")]
DAY = datetime(2026, 11, 30, 9, tzinfo=UTC)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    work = tmp_path_factory.mktemp("currency")
    events = [dataclasses.replace(BASE, id=new_event_id(), time=rfc3339(DAY), currency=c,
                                  cost=Decimal(v), agent="planner", task="t-1")
              for c, v in MIXED]

    async def fill() -> None:
        ledger = SQLiteLedger(work / "t.db", load_signer(work / "key.pem", None))
        ledger.start()
        for e in events:
            await ledger.append(e)
        await ledger.close()

    asyncio.run(fill())
    conn = open_store(work / "t.db")
    yield conn, events
    conn.close()


@pytest.mark.parametrize(("since", "grain"), [(None, "day"), ("2026-11-30T08:59:59.000Z", None)],
                         ids=["from-rollups", "from-events"])
def test_a_report_gives_a_row_per_currency(mixed, since, grain):
    conn, _ = mixed
    assert rollup_grain(["tenant", "currency"], since, None, None) == grain
    rows = report(conn, ["tenant"], since=since)
    got = {(r["tenant"], r["currency"]): (r["requests"], r["cost"]) for r in rows}
    assert got == {("acme", "USD"): (2, "1.75"), ("acme", "CNY"): (2, "10.5"),
                   ("acme", "EUR"): (1, "2")}


def test_rollups_are_keyed_by_currency(mixed):
    conn, _ = mixed
    for table in ("rollup_flows", "rollup_models", "rollup_tenant_models", "rollup_tenants"):
        rows = dict(conn.execute(f"SELECT currency, cost FROM {table} WHERE period = 'day'"))
        assert rows == {"USD": "1.75", "CNY": "10.5", "EUR": "2"}, table


def test_rankings_add_tokens_across_currencies(mixed):
    conn, _ = mixed
    rows = rankings(conn, "model", weeks=1, today=DAY.date())
    assert [(r["model"], r["tokens"], r["share"]) for r in rows] == [("gpt-4o-mini", 5500, 1.0)]


def test_a_budget_counts_only_events_in_its_currency(mixed):
    conn, events = mixed
    budget = Budget("b", Scope("tenant", "acme"), Decimal(100), "USD", "total")
    assert spent_in(conn, budget, None) == Decimal("1.75")
    assert [amount_of(budget, e) for e in events] == \
        [Decimal("1.25"), 0, Decimal("0.5"), 0, 0]
    tokens = Budget("t", Scope("tenant", "acme"), Decimal(10**6), "tokens", "total")
    assert spent_in(conn, tokens, None) == 5 * 1100  # tokens are tokens in any currency


def test_tasks_and_agents_give_a_row_per_currency(mixed):
    conn, _ = mixed
    assert {(r["task"], r["currency"]): (r["requests"], r["cost"]) for r in tasks(conn)} == \
        {("t-1", "USD"): (2, "1.75"), ("t-1", "CNY"): (2, "10.5"), ("t-1", "EUR"): (1, "2")}
    assert {(r["agent"], r["currency"]): r["cost"] for r in agents(conn)} == \
        {("planner", "USD"): "1.75", ("planner", "CNY"): "10.5", ("planner", "EUR"): "2"}
