"""Audit of enforced wallets: wallet() against an independent oracle of the documented rules
on random histories (SQLite and PostgreSQL), a wallet budget's limit kept under new spend,
and the gateway's numbers end to end. Each test written to fail before its fix."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FAKE_KEYS, make_event, providers_toml, start_gateway, stop_gateway
from processes import cli
from test_replicas import METERED_MODEL
from test_stores import append
from tokometer.config import Allowance, Scope
from tokometer.events import Event, rfc3339
from tokometer.ledger import open_store
from tokometer.ledger.read import iter_events
from tokometer.ledger.signer import load_signer
from tokometer.policy.budgets import amount_of, load_states
from tokometer.policy.wallets import WalletBudgets, lots_of, wallet, wallet_budget_id

T0 = datetime(2030, 1, 27, tzinfo=UTC)  # a Sunday: a week and a month begin within days
HOURS = 24 * 40
_tenants = itertools.count()


# --- the oracle: the README's rules, worked out naively ------------------------------------

@dataclass
class OLot:
    lot_id: str
    amount: Decimal
    currency: str
    priority: int
    created: str
    expires: str | None
    used: Decimal = Decimal(0)


@dataclass
class Oracle:
    lots: dict[str, OLot]
    owed: dict[str, Decimal] = field(default_factory=dict)
    spent: dict[str, Decimal] = field(default_factory=dict)
    allowance_used: Decimal = Decimal(0)
    unpriced: int = 0
    forfeited: dict[str, Decimal] = field(default_factory=dict)

    def left(self, lot_id: str) -> Decimal:
        lot = self.lots[lot_id]
        return lot.amount - lot.used - self.forfeited.get(lot_id, Decimal(0))

    def balance(self, currency: str) -> Decimal:
        return sum((self.left(i) for i, lot in self.lots.items() if lot.currency == currency),
                   Decimal(0))


def period_key(period: str, when: datetime) -> tuple[int, ...]:
    """Which calendar period (UTC) holds `when`, as a key: not the code's bounds."""
    d: date = when.astimezone(UTC).date()
    if period == "day":
        return (d.year, d.month, d.day)
    if period == "week":
        year, week, _ = d.isocalendar()
        return (year, week)
    return (d.year, d.month)


def period_start(period: str, when: datetime) -> datetime:
    d = when.astimezone(UTC).date()
    if period == "week":
        d = d - timedelta(days=d.isoweekday() - 1)
    elif period == "month":
        d = d.replace(day=1)
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def oracle(lots: list[OLot], events: list[Event], now: datetime,
           allowance: tuple[str, Decimal] | None) -> Oracle:
    o = Oracle({lot.lot_id: OLot(**{**lot.__dict__}) for lot in lots})
    starts = [lot.created for lot in lots]
    if allowance is not None:
        starts.append(rfc3339(period_start(allowance[0], now)))
    if not starts:
        return o  # no wallet
    start = min(starts)
    times = {e.id: e.time for e in events}
    used: dict[tuple[int, ...], Decimal] = {}
    for e in sorted(events, key=lambda e: (e.time, e.id)):
        spend = e.charge if e.charge is not None else e.cost
        if spend is not None and spend > 0:  # a wallet budget counts no refund
            o.spent[e.currency] = o.spent.get(e.currency, Decimal(0)) + spend
        if e.time < start:
            continue
        if e.corrects is not None and e.corrects in times and times[e.corrects] < start:
            continue
        if spend is None:
            o.unpriced += 1
            continue
        when = datetime.fromisoformat(e.time)
        usable = sorted((lot for lot in o.lots.values() if lot.currency == e.currency
                         and lot.created <= e.time
                         and (lot.expires is None or e.time < lot.expires)),
                        key=lambda lot: (lot.priority, lot.expires or "~", lot.created,
                                         lot.lot_id))
        key = None if allowance is None or e.currency != "USD" else period_key(
            allowance[0], when)
        if spend >= 0:
            rest = spend
            if key is not None:
                take = min(rest, allowance[1] - used.get(key, Decimal(0)))
                used[key] = used.get(key, Decimal(0)) + take
                rest -= take
            for lot in usable:
                take = min(rest, lot.amount - lot.used)
                lot.used += take
                rest -= take
            o.owed[e.currency] = o.owed.get(e.currency, Decimal(0)) + rest
        else:
            back = -spend
            debt = o.owed.get(e.currency, Decimal(0))
            paid = min(debt, back)
            o.owed[e.currency] = debt - paid
            back -= paid
            if key is not None:
                paid = min(back, used.get(key, Decimal(0)))
                used[key] = used.get(key, Decimal(0)) - paid
                back -= paid
            for lot in usable:
                paid = min(back, lot.used)
                lot.used -= paid
                back -= paid
    if allowance is not None:
        o.allowance_used = used.get(period_key(allowance[0], now), Decimal(0))
    for lot in o.lots.values():
        if lot.expires is not None and lot.expires <= rfc3339(now):
            o.forfeited[lot.lot_id] = lot.amount - lot.used
    return o


def o_available(o: Oracle, allowance: tuple[str, Decimal] | None, currency: str) -> Decimal:
    allowed = allowance[1] - o.allowance_used if allowance and currency == "USD" else 0
    return allowed + o.balance(currency) - o.owed.get(currency, Decimal(0))


# --- random histories ----------------------------------------------------------------------

money = st.integers(-300, 900).map(lambda c: Decimal(c) / 100)
POSITIVE = st.integers(0, 900).map(lambda c: Decimal(c) / 100)


@st.composite
def histories(draw: Any) -> dict[str, Any]:
    lots = []
    for i in range(draw(st.integers(0, 4))):
        created = draw(st.integers(0, HOURS))
        expires = draw(st.one_of(st.none(), st.integers(created + 1, HOURS + 48)))
        lots.append(OLot(f"lot{i}", Decimal(draw(st.integers(1, 1200))) / 100,
                         draw(st.sampled_from(["USD", "USD", "EUR"])),
                         draw(st.integers(0, 2)), rfc3339(T0 + timedelta(hours=created)),
                         None if expires is None else rfc3339(T0 + timedelta(hours=expires))))
    events: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 14))):
        hour = draw(st.integers(0, HOURS))
        cost = draw(st.one_of(st.none(), money))
        charge = draw(st.one_of(st.none(), st.none(), money))
        corrects = None
        earlier = [i for i, e in enumerate(events) if e["hour"] <= hour]
        if earlier and draw(st.booleans()):
            corrects = draw(st.sampled_from(earlier))
        events.append({"hour": hour, "cost": cost, "charge": charge, "corrects": corrects,
                       "currency": draw(st.sampled_from(["USD", "USD", "USD", "EUR"]))})
    allowance = draw(st.one_of(st.none(), st.tuples(
        st.sampled_from(["day", "week", "month"]),
        st.integers(0, 500).map(lambda c: Decimal(c) / 100))))
    now = T0 + timedelta(hours=draw(st.integers(0, HOURS + 72)))
    return {"lots": lots, "events": events, "allowance": allowance, "now": now}


def store_history(store: Any, signer: Any, tenant: str, history: dict[str, Any]
                  ) -> list[Event]:
    for lot in history["lots"]:
        store.execute("INSERT INTO wallet_lots (lot_id, tenant, amount, currency, priority, "
                      "expires, created, note) VALUES (?,?,?,?,?,?,?,NULL)",
                      (f"{tenant}-{lot.lot_id}", tenant, str(lot.amount), lot.currency,
                       lot.priority, lot.expires, lot.created))
    events: list[Event] = []
    for spec in history["events"]:
        corrects = None if spec["corrects"] is None else events[spec["corrects"]].id
        events.append(make_event(tenant=tenant, time=rfc3339(T0 + timedelta(
            hours=spec["hour"])), cost=spec["cost"], charge=spec["charge"],
            currency=spec["currency"], corrects=corrects))
    if events:
        append(store, events, signer)
    return events


def compare(store: Any, tenant: str, history: dict[str, Any], events: list[Event],
            now: datetime) -> None:
    allowance = history["allowance"]
    allowed = None if allowance is None else Allowance(Scope("tenant", tenant), allowance[1],
                                                       allowance[0], "USD")
    lots = [OLot(**{**lot.__dict__, "lot_id": f"{tenant}-{lot.lot_id}"})
            for lot in history["lots"]]
    want = oracle(lots, events, now, allowance)
    got = wallet(store, tenant, now, allowed)
    assert {s.lot.lot_id: (s.used, s.forfeited, s.left) for s in got.lots} == {
        i: (lot.used, want.forfeited.get(i, Decimal(0)), want.left(i))
        for i, lot in want.lots.items()}
    assert {c: v for c, v in got.owed.items() if v} == {
        c: v for c, v in want.owed.items() if v}
    assert got.unpriced == want.unpriced
    if allowance is not None:
        assert got.allowance_used == want.allowance_used
    for currency in ("USD", "EUR"):
        assert got.available(currency) == o_available(want, allowance, currency)
        assert got.limit(currency) == want.spent.get(currency, Decimal(0)) + o_available(
            want, allowance, currency)


COMPARED = {"n": 0}


@settings(max_examples=int(os.environ.get("AUDIT_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(history=histories(), others=st.lists(st.integers(0, HOURS + 72), max_size=3))
def _check_wallet(store: Any, signer: Any, history: dict[str, Any], others: list[int]
                  ) -> None:
    tenant = f"t{next(_tenants)}"
    events = store_history(store, signer, tenant, history)
    for now in [history["now"], *(T0 + timedelta(hours=h) for h in others)]:
        compare(store, tenant, history, events, now)
        COMPARED["n"] += 1


def test_wallet_agrees_with_an_oracle_of_the_rules(store_location, tmp_path):
    with open_store(store_location, create=True) as store:
        _check_wallet(store, load_signer(tmp_path / "key.pem"))


@settings(max_examples=int(os.environ.get("AUDIT_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(history=histories(), new=st.lists(st.tuples(st.integers(0, 3), POSITIVE,
                                                   st.one_of(st.none(), POSITIVE),
                                                   st.booleans()), min_size=1, max_size=4))
def _check_limit(store: Any, signer: Any, history: dict[str, Any],
                 new: list[tuple[int, Decimal, Decimal | None, bool]]) -> None:
    """Spend appended at `now` (or minutes after: no expiry, top-up or period between)
    leaves a fresh working-out of the limit where it was."""
    now = history["now"]
    kept = [i for i, e in enumerate(history["events"])
            if T0 + timedelta(hours=e["hour"]) <= now]
    renumbered = {old: new for new, old in enumerate(kept)}
    history = {**history,
               "lots": [lot for lot in history["lots"] if lot.created <= rfc3339(now)],
               "events": [{**history["events"][i],
                           "corrects": renumbered.get(history["events"][i]["corrects"])}
                          for i in kept]}
    tenant = f"t{next(_tenants)}"
    events = store_history(store, signer, tenant, history)
    allowance = history["allowance"]
    allowed = [] if allowance is None else [Allowance(Scope("tenant", tenant), allowance[1],
                                                      allowance[0], "USD")]
    before = {b.id: b.limit for b in WalletBudgets(allowed, "USD").budgets(store, now)}
    if wallet_budget_id(tenant) not in before:
        return
    # new spend: no later than a lot's expiry or the period's end
    ends = [datetime.fromisoformat(lot.expires) for lot in history["lots"]
            if lot.expires is not None and lot.expires > rfc3339(now)]
    if allowance is not None:
        ends.append(period_start(allowance[0], period_start(allowance[0], now)
                                 + timedelta(days=32 if allowance[0] == "month" else 8)))
    last = min([*ends, now + timedelta(minutes=4)]) - timedelta(milliseconds=1)
    starts = [lot.created for lot in history["lots"]]
    if allowance is not None:
        starts.append(rfc3339(period_start(allowance[0], now)))
    ours = [e for e in events if e.time >= min(starts)]  # corrections of pre-wallet spend
    added = [make_event(tenant=tenant, time=rfc3339(min(now + timedelta(minutes=m), last)),
                        cost=cost, charge=charge,  # move it: documented
                        corrects=ours[-1].id if correcting and ours else None)
             for m, cost, charge, correcting in new]
    if any(e.time < rfc3339(now) for e in added):
        return
    append(store, added, signer)
    after = {b.id: b.limit for b in WalletBudgets(allowed, "USD").budgets(store, now)}
    COMPARED["n"] += 1
    key = wallet_budget_id(tenant)
    assert after[key] == before[key], (history, new)


def test_a_wallets_limit_is_kept_under_new_spend(store_location, tmp_path):
    with open_store(store_location, create=True) as store:
        _check_limit(store, load_signer(tmp_path / "key.pem"))


def test_a_refund_the_wallet_cannot_take_back_moves_its_limit(store_location, tmp_path):
    """Spent yesterday from yesterday's allowance, refunded today: the wallet takes nothing
    back (today's allowance is unused, there is no lot), so the budget, which counts the
    refund as less spend, must leave what the wallet has, not 5 more."""
    now = datetime.now(UTC)
    signer = load_signer(tmp_path / "key.pem")
    daily = Allowance(Scope("tenant", "acme"), Decimal(5), "day", "USD")
    with open_store(store_location, create=True) as store:
        spend = make_event(tenant="acme", time=rfc3339(now - timedelta(days=1)),
                           cost=Decimal(5))
        append(store, [spend], signer)
        wallets = WalletBudgets([daily], "USD")
        [budget] = wallets.budgets(store, now)
        state = load_states(store, [budget], now)[budget.id]
        refund = make_event(tenant="acme", time=rfc3339(now), cost=Decimal(-5),
                            corrects=spend.id)
        append(store, [refund], signer)
        state.spent += amount_of(budget, refund)  # as Guard.charge counts it
        [state.budget] = wallets.budgets(store, now)  # as the sync takes it up
        left = wallet(store, "acme", now, daily).available("USD")
    assert left == 5
    assert state.budget.limit - state.spent == left


TARIFFED = METERED_MODEL + """
[[plans]]
tenant = "acme"
markup = 1
[plans.tariffs]
"gpt-4o-mini-delayed" = { input = 0, cache_read = 0, cache_write = 0, output = 1 }
"""


def test_a_request_reserves_at_least_what_it_is_charged_when_another_model_answers(
        upstream, tmp_path):
    """The plan's tariff names the route's model, but the provider says another answered
    (gpt-4o-mini-2024-07-18), so the event is charged the markup: 300 output tokens at 10
    per 1M, doubled. The reservation priced the tariff (1 per 1M) and let a wallet holding
    less than the charge pay for it: the wallet ended owing."""
    gw = start_gateway(tmp_path, f'admin_token_env = "WALLET_ADMIN"\n'
                       f'{providers_toml(upstream)}{TARIFFED}',
                       env={**FAKE_KEYS, "WALLET_ADMIN": "wallet-admin"})
    try:
        charge = 2 * Decimal(300) * 10 / 1_000_000
        gw.post("/admin/wallets/acme", {"amount": str(charge / 2)},
                key="wallet-admin").raise_for_status()
        answer = gw.chat("metered", max_tokens=300)
        shown = gw.get("/admin/wallets/acme", key="wallet-admin").json()
        assert answer.status_code == 402, (answer.status_code, shown)
        assert answer.headers["x-tokometer-balance"] == f"{charge / 2} USD"
        assert shown["owed"] == {}
    finally:
        stop_gateway(gw)


def test_the_gateways_numbers_agree_with_the_oracle(upstream, tmp_path):
    """Requests (plain, streamed, n=2) under a markup until the wallet refuses: the charges
    recorded sum to what the wallet used, and the admin API, `wallet show`, `budgets status`,
    the dashboard and the 402's header all say what the oracle says is left."""
    gw = start_gateway(tmp_path, f'admin_token_env = "WALLET_ADMIN"\n'
                       f'{providers_toml(upstream)}{TARIFFED}'
                       '[[allowances]]\ntenant = "acme"\namount = 0.001\nperiod = "day"\n',
                       env={**FAKE_KEYS, "WALLET_ADMIN": "wallet-admin"})
    try:
        gw.post("/admin/wallets/acme", {"amount": "0.02"}, key="wallet-admin").raise_for_status()
        codes = [gw.chat("metered", max_tokens=300, **extra).status_code
                 for extra in ({}, {"stream": True}, {"n": 2}, {}, {}, {"stream": True})]
        refused = gw.chat("metered", max_tokens=300)
        assert refused.status_code == 402 and codes.count(200) == 3, codes
        shown = gw.get("/admin/wallets/acme", key="wallet-admin").json()
        status = [json.loads(line) for line in
                  cli(gw.config, "budgets", "status", "--json").stdout.splitlines()]
        table = cli(gw.config, "wallet", "show", "--tenant", "acme").stdout
        page = gw.get("/wallets", key="wallet-admin").text
        with open_store(gw.store) as store:
            events = list(iter_events(store))
            now = datetime.now(UTC)
            lots = [OLot(lot.lot_id, lot.amount, lot.currency, lot.priority, lot.created,
                         lot.expires) for lot in lots_of(store, "acme")]
        recorded = [Event(**{**e, "cost": None if e["cost"] is None else Decimal(e["cost"]),
                             "charge": None if e["charge"] is None else Decimal(e["charge"])})
                    for e in events]
        want = oracle(lots, recorded, now, ("day", Decimal("0.001")))
        left = o_available(want, ("day", Decimal("0.001")), "USD")
        charged = sum(Decimal(e["charge"]) for e in events if e["charge"] is not None)
        assert charged == want.allowance_used + sum(lot.used for lot in want.lots.values())
        assert refused.headers["x-tokometer-balance"] == f"{left} USD"
        assert Decimal(shown["balances"]["USD"]) + Decimal(shown["allowance"]["left"]) == left
        assert shown["owed"] == {}
        [wallet_status] = [s for s in status if s["budget_id"] == "wallet:acme"]
        assert Decimal(wallet_status["remaining"]) == left
        assert f"balance {shown['balances']['USD']} USD" in table
        assert f">{shown['balances']['USD']}<" in page
    finally:
        stop_gateway(gw)
