"""Price plans: every event carries `charge` beside `cost` (a markup on the cost, or a sell
tariff per model), through the gateway, corrections and ingest, on SQLite and PostgreSQL;
reports show the charge and the margin per group, from the rollups and from the events alike,
equal to the sums worked out here; a group no plan covers has neither (null, never 0)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from conftest import (
    FAKE_KEYS,
    MODELS_TOML,
    Gateway,
    providers_toml,
    start_gateway,
    stop_gateway,
    tariff_cost,
)
from processes import cli
from tokometer.config import PostgresURL, load
from tokometer.errors import ConfigError
from tokometer.ledger import open_store

ADMIN = "plans-admin"
SELL = {"input": Decimal("4"), "cache_read": Decimal("2"), "cache_write": Decimal("4"),
        "output": Decimal("16")}
PLANS = """
[[plans]]
tenant = "acme"
markup = 0.25

[[plans]]
tenant = "globex"
markup = 0.5
[plans.tariffs]
"gpt-4o-mini" = { input = 4, cache_read = 2, output = 16 }
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(request: pytest.FixtureRequest, upstream: Any,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    store = PostgresURL(request.getfixturevalue("postgres").new_database()) \
        if request.param == "postgresql" else None
    gateway = start_gateway(tmp_path_factory.mktemp("plans"),
                            f'admin_token_env = "PLANS_ADMIN"\n{providers_toml(upstream)}'
                            f"{MODELS_TOML}{PLANS}", store=store,
                            env={**FAKE_KEYS, "PLANS_ADMIN": ADMIN})
    yield gateway
    stop_gateway(gateway)


def sell(inp: int, cache_read: int, out: int) -> Decimal:
    """The globex tariff worked out here: per 1M tokens, cache reads at their own price."""
    return ((inp - cache_read) * SELL["input"] + cache_read * SELL["cache_read"]
            + out * SELL["output"]) / 1_000_000


def chat(gw: Gateway, key: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello"}])
    return gw.event(answer.headers["x-tokometer-event-id"])


def test_each_event_is_charged_under_its_tenants_plan(gw):
    acme = chat(gw, gw.key)
    cost = tariff_cost(acme["input_tokens"], acme["cache_read_tokens"],
                       acme["cache_write_tokens"], acme["output_tokens"])
    assert Decimal(acme["cost"]) == cost
    assert Decimal(acme["charge"]) == cost * Decimal("1.25")

    globex = chat(gw, gw.new_key("globex")[0])
    assert Decimal(globex["charge"]) == sell(globex["input_tokens"],
                                             globex["cache_read_tokens"],
                                             globex["output_tokens"])
    other = chat(gw, gw.new_key("globex")[0], "gpt-4.1")  # no sell tariff: the markup
    assert Decimal(other["charge"]) == Decimal(other["cost"]) * Decimal("1.5")

    initech = chat(gw, gw.new_key("initech")[0])  # no plan
    assert initech["cost"] is not None and initech["charge"] is None


def test_a_correction_and_an_ingested_reading_are_charged_too(gw):
    original = chat(gw, gw.key)
    refund = gw.post("/admin/corrections", {"event_id": original["id"], "reason": "refund",
                                            "output_tokens": -original["output_tokens"],
                                            "cost": "-0.001"}, key=ADMIN)
    assert refund.status_code == 201, refund.text
    assert Decimal(gw.event(refund.json()["id"])["charge"]) == Decimal("-0.00125")

    key = gw.new_key("globex")[0]
    answer = gw.post("/v1/events", [{
        "specversion": "1.0", "id": "plan-1", "source": "/job", "type": "tokometer.usage.v1",
        "data": {"provider": "fake-openai", "model": "gpt-4o-mini", "input_tokens": 5000,
                 "cache_read_tokens": 1000, "output_tokens": 700}}], key=key)
    event = gw.event(answer.json()["data"][0]["event_id"])
    assert Decimal(event["charge"]) == sell(5000, 1000, 700)


def test_reports_show_the_charge_and_the_margin_from_rollups_and_events_alike(gw):
    for tenant in ("acme", "globex", "initech"):
        chat(gw, gw.new_key(tenant)[0])
    gw.wait_rolled_up()
    with open_store(gw.store) as s:
        rows = s.execute("SELECT tenant, cost, charge, currency FROM events").fetchall()
    expected: dict[str, tuple[Decimal, Decimal, int]] = {}
    for tenant, cost, charge, _ in rows:
        if charge is not None:
            total, margin, n = expected.get(tenant, (Decimal(0), Decimal(0), 0))
            expected[tenant] = (total + Decimal(charge),
                                margin + Decimal(charge) - Decimal(cost), n + 1)
    by_rollup = json.loads(cli(gw.config, "report", "--by", "tenant", "--format",
                               "json").stdout)
    by_events = json.loads(cli(gw.config, "report", "--by", "tenant", "--since",
                               "2020-01-01T00:00:01Z", "--format", "json").stdout)
    for rows_seen in (by_rollup, by_events):
        seen = {r["tenant"]: r for r in rows_seen}
        for tenant, (charge, margin, _) in expected.items():
            assert Decimal(seen[tenant]["charge"]) == charge
            assert Decimal(seen[tenant]["margin"]) == margin
        assert seen["initech"]["charge"] is None and seen["initech"]["margin"] is None
    table = cli(gw.config, "report", "--by", "tenant").stdout
    assert "charge" in table.splitlines()[0] and "margin" in table.splitlines()[0]


@pytest.mark.parametrize("toml, error", [
    ('[[plans]]\ntenant = "a"\n', "a plan needs a markup, tariffs, or both"),
    ('[[plans]]\ntenant = "a"\nmarkup = -0.5\n', "markup"),
    ('[[plans]]\nmarkup = 0.1\n', "exactly one of tenant, app, key_id"),
    ('[[plans]]\ntenant = "a"\n[plans.tariffs]\nm = { input = 1, output = 2, '
     'currency = "EUR" }\n', "sell tariff is in the server currency"),
    ('[[plans]]\ntenant = "a"\n[plans.tariffs]\nm = { input = 1 }\n', "output"),
])
def test_bad_plans_are_refused_naming_the_key(tmp_path, toml, error):
    (tmp_path / "t.toml").write_text(toml)
    with pytest.raises(ConfigError, match=error):
        load(tmp_path / "t.toml")
