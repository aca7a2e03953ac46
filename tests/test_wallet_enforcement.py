"""Wallets enforced: requests reserve their worst-case charge against what a tenant's wallet
has left (this period's allowance first, then its credit lots) and settle what they were
charged; an empty wallet is a 402 saying the balance. On one process, on two workers sharing
a SQLite file and on three replicas sharing PostgreSQL; figures worked out by hand."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import (
    FAKE_KEYS,
    MINIMAL_CONFIG,
    Gateway,
    make_event,
    providers_toml,
    start_gateway,
    stop_gateway,
)
from processes import cli
from test_replicas import METERED_MODEL
from test_stores import append
from tokometer.config import Allowance, PostgresURL, Scope
from tokometer.events import rfc3339
from tokometer.ledger import open_store
from tokometer.ledger.read import iter_events
from tokometer.ledger.signer import load_signer
from tokometer.policy.wallets import WalletBudgets, top_up, wallet

COST = Decimal(300) * 10 / 1_000_000  # the fixture's 300 output tokens at 10 per 1M; input free
CHARGE = 2 * COST  # under a markup of 1
ADMIN = "wallet-admin"
METERED = METERED_MODEL + '[[plans]]\ntenant = "acme"\nmarkup = 1\n'


def lot(store: Any, tenant: str, amount: str, created: str, priority: int = 0,
        expires: str | None = None) -> None:
    """A lot bought at a chosen time (top_up stamps it now)."""
    store.execute("INSERT INTO wallet_lots (lot_id, tenant, amount, currency, priority, "
                  "expires, created, note) VALUES (?,?,?,?,?,?,?,NULL)",
                  (f"lot-{created}-{amount}", tenant, amount, "USD", priority, expires, created))


def test_the_allowance_is_spent_before_the_lots_and_starts_again_each_period(store_location,
                                                                             tmp_path):
    daily = Allowance(Scope("tenant", "acme"), Decimal(5), "day", "USD")
    with open_store(store_location, create=True) as store:
        lot(store, "acme", "10", "2030-03-10T00:00:00.000Z")
        append(store, [
            make_event(tenant="acme", time="2030-03-09T23:00:00.000Z", cost=Decimal(8)),
            make_event(tenant="acme", time="2030-03-10T01:00:00.000Z", cost=Decimal(3)),
            make_event(tenant="acme", time="2030-03-10T02:00:00.000Z", cost=Decimal(9),
                       charge=Decimal(4)),  # allowance 2, lot 2
            make_event(tenant="acme", time="2030-03-10T03:00:00.000Z", cost=Decimal(-1),
                       corrects="x"),  # back to today's allowance
            make_event(tenant="acme", time="2030-03-11T01:00:00.000Z", cost=Decimal(6))],
            load_signer(tmp_path / "key.pem"))  # a new day: allowance 5, lot 1
        on_the_11th = wallet(store, "acme", datetime(2030, 3, 11, 5, tzinfo=UTC), daily)
        on_the_12th = wallet(store, "acme", datetime(2030, 3, 12, 0, 30, tzinfo=UTC), daily)
        on_the_10th = wallet(store, "acme", datetime(2030, 3, 10, 4, tzinfo=UTC), daily)
    assert on_the_11th.allowance_used == 5 and on_the_11th.lots[0].used == 3
    assert on_the_11th.available("USD") == 7
    assert on_the_10th.allowance_used == 4  # 3 + 2 - 1
    assert on_the_12th.allowance_used == 0  # what was left of a day never carries over
    assert on_the_12th.available("USD") == 5 + 7
    # As a budget: all the spend (the 8 before the wallet too) but the refund, plus what is
    # left (which holds what the refund gave back).
    assert on_the_11th.limit("USD") == 8 + 3 + 4 + 6 + 7
    summary = on_the_12th.summary()
    assert summary["allowance"] == {"amount": "5", "currency": "USD", "period": "day",
                                    "used": "0", "left": "5"}
    assert summary["balances"] == {"USD": "7"} and summary["owed"] == {}


def test_a_wallets_limit_moves_only_with_top_ups_expiries_and_periods(store_location,
                                                                      tmp_path):
    """Spend lowers what the wallet has left as much as it raises the spend the budget
    counts: worked out afresh, the limit is the one kept; a top-up and an expiry move it."""
    now = datetime.now(UTC)
    soon = rfc3339(now + timedelta(minutes=30))
    with open_store(store_location, create=True) as store:
        append(store, [make_event(tenant="acme", time=rfc3339(now - timedelta(hours=1)),
                                  cost=Decimal(7))], load_signer(tmp_path / "key.pem"))
        top_up(store, "acme", "10", "USD", expires=soon)
        top_up(store, "acme", "5", "USD", priority=1)
        wallets = WalletBudgets([], "USD")
        [budget] = wallets.budgets(store, now)
        assert (budget.id, budget.scope.value, budget.limit, budget.wallet) == (
            "wallet:acme", "acme", 7 + 15, True)
        later = rfc3339(now + timedelta(minutes=1))
        append(store, [make_event(tenant="acme", time=later, cost=Decimal(2),
                                  charge=Decimal(3)),
                       make_event(tenant="acme", time=later, cost=Decimal(1))],
               load_signer(tmp_path / "key.pem"))
        assert wallets.budgets(store, now) == [budget]  # kept: nothing moved it
        assert WalletBudgets([], "USD").budgets(store, now) == [budget]  # and it is right
        top_up(store, "acme", "5", "USD")
        assert wallets.budgets(store, now)[0].limit == 7 + 20
        # The expiring lot paid the 4 (its priority number is the lowest); its 6 forfeit.
        after = now + timedelta(minutes=31)
        assert wallets.budgets(store, after)[0].limit == 7 + 4 + 10
        assert wallet(store, "acme", after).balance("USD") == 10


@pytest.fixture(params=["one", "workers", "replicas"])
def prepaid(request, upstream, tmp_path) -> Any:
    """Start gateways on a store whose tenant acme has `credit` in a lot, and an allowance of
    `allowance` a day: one process, two workers on SQLite, or three PostgreSQL replicas."""
    started: list[Gateway] = []

    def start(credit: Decimal, allowance: Decimal) -> list[Gateway]:
        body = (f'admin_token_env = "WALLET_ADMIN"\n{providers_toml(upstream)}{METERED}'
                f'[[allowances]]\ntenant = "acme"\namount = {allowance}\nperiod = "day"\n')
        env = {**FAKE_KEYS, "WALLET_ADMIN": ADMIN}
        if request.param == "replicas":
            store: Any = PostgresURL(request.getfixturevalue("postgres").new_database())
        else:
            (tmp_path / "w").mkdir()
            store = tmp_path / "w" / "tokometer.db"
        with open_store(store, create=True) as opened:
            top_up(opened, "acme", credit, "USD", note="prepaid")
        if request.param == "replicas":
            for i in range(3):
                started.append(start_gateway(
                    tmp_path / f"r{i}", f'signing_key = "{tmp_path / "log-key.pem"}"\n' + body,
                    env=env, store=store))
        else:
            started.append(start_gateway(tmp_path / "w", body, env=env,
                                         workers=2 if request.param == "workers" else 1))
        return started

    try:
        yield start
    finally:
        for gw in started:
            stop_gateway(gw)


async def _streamed(gateways: list[Gateway], n: int) -> list[httpx.Response]:
    """n streamed chats at once, round robin over the gateways, each read to its end."""
    body = {"model": "metered", "max_tokens": 300, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:
        return await asyncio.gather(*(
            client.post(gateways[i % len(gateways)].url + "/v1/chat/completions", json=body,
                        headers={"Authorization": f"Bearer {gateways[i % len(gateways)].key}"})
            for i in range(n)))


def test_fifty_concurrent_streamed_requests_never_take_a_wallet_below_zero(prepaid):
    """Credit for 10 requests' charges (4 from the allowance, 6 from a lot): exactly 10 are
    answered, each reserving what it is then charged; the rest are 402s saying the
    balance; the allowance and the lot end used up, nothing owed."""
    gateways = prepaid(credit=6 * CHARGE, allowance=4 * CHARGE)
    answers = asyncio.run(_streamed(gateways, 50))
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 10 and codes.count(402) == 40, codes
    assert all(b"[DONE]" in r.content for r in answers if r.status_code == 200)
    for refused in (r for r in answers if r.status_code == 402):
        error = refused.json()["error"]
        assert error["code"] == "insufficient_balance"
        assert "the wallet of tenant 'acme'" in error["message"]
        left = Decimal(refused.headers["x-tokometer-balance"].removesuffix(" USD"))
        assert 0 <= left < CHARGE
    with open_store(gateways[0].store) as store:
        charged = [Decimal(e["charge"]) for e in iter_events(store) if e["status"] == 200]
        daily = Allowance(Scope("tenant", "acme"), 4 * CHARGE, "day", "USD")
        found = wallet(store, "acme", allowance=daily)
    assert charged == [CHARGE] * 10
    assert found.allowance_used == 4 * CHARGE and found.balance("USD") == 0
    assert found.owed == {}  # never below zero


def test_a_top_up_is_there_for_the_next_request_and_an_empty_wallet_says_so(upstream,
                                                                             tmp_path):
    gw = start_gateway(tmp_path, f'admin_token_env = "WALLET_ADMIN"\n'
                       f'{providers_toml(upstream)}{METERED}',
                       env={**FAKE_KEYS, "WALLET_ADMIN": ADMIN})
    try:
        assert gw.chat("metered", max_tokens=300).status_code == 200  # no wallet: no limit
        added = gw.post("/admin/wallets/acme", {"amount": str(CHARGE)}, key=ADMIN)
        assert added.status_code == 201, added.text
        assert gw.chat("metered", max_tokens=300).status_code == 200
        empty = gw.chat("metered", max_tokens=300)
        assert empty.status_code == 402 and empty.headers["x-tokometer-balance"] == "0 USD"
        assert "is empty: 0 USD left" in empty.json()["error"]["message"]
        gw.post("/admin/wallets/acme", {"amount": str(CHARGE)}, key=ADMIN).raise_for_status()
        too_big = gw.chat("metered", max_tokens=600)  # may be charged twice what is left
        assert too_big.status_code == 402, too_big.text
        assert too_big.headers["x-tokometer-balance"] == f"{CHARGE} USD"
        message = too_big.json()["error"]["message"]
        assert f"charged up to {2 * CHARGE} USD" in message and "top it up" in message
        assert gw.chat("metered", max_tokens=300).status_code == 200
        shown = gw.get("/admin/wallets/acme", key=ADMIN).json()
        assert shown["balances"] == {"USD": "0"} and shown["owed"] == {}
        status = [json.loads(line) for line in
                  cli(gw.config, "budgets", "status", "--json").stdout.splitlines()]
        assert [(s["budget_id"], s["remaining"]) for s in status] == [("wallet:acme", "0")]
    finally:
        stop_gateway(gw)


def test_a_bad_allowance_is_a_config_error(tmp_path: Path):
    config = tmp_path / "bad.toml"
    for table, says in (('tenant = "a"\namount = 1\nperiod = "total"', "period"),
                        ('tenant = "a"\namount = -1\nperiod = "day"', "amount"),
                        ('tenant = "a"\namount = 1\nperiod = "day"\ncurrency = "EUR"',
                         "currency")):
        config.write_text(f"{MINIMAL_CONFIG}[[allowances]]\n{table}\n")
        done = cli(config, "budgets", "status")
        assert done.returncode != 0 and says in done.stderr, done.stderr
