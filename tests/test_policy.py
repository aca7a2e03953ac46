"""Budgets, rate-limit windows, residency rules and their config, without a gateway."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import MINIMAL_CONFIG as BASE
from conftest import make_event
from tokometer import ConfigError, load
from tokometer.config import EU, Budget, Limit, Provider, Route, Rule, Scope, Server, Settings
from tokometer.errors import PolicyError
from tokometer.events import Event
from tokometer.policy import Consumer, Guard, Need
from tokometer.policy.budgets import BudgetState, period_bounds
from tokometer.policy.limits import Window
from tokometer.policy.residency import breach

WHO = Consumer("k1", "acme", "bot", "DE")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("period", "now", "start", "end"), [
    ("day", "2026-11-28T13:05:00", "2026-11-28T00:00:00", "2026-11-29T00:00:00"),
    ("week", "2026-11-28T13:05:00", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),  # Monday
    ("month", "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ("month", "2026-02-15T00:00:00", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
])
def test_periods_are_utc_calendar_periods(period, now, start, end):
    assert period_bounds(period, at(now)) == (at(start), at(end))


def test_total_never_resets():
    assert period_bounds("total", at("2026-11-28T00:00:00")) == (None, None)


# --- rate-limit windows -------------------------------------------------------------------------

def test_rpm_window_counts_requests_and_says_when_one_fits():
    w = Window(Limit("limits[0]", Scope("app", "bot"), rpm=2, tpm=None))
    w.add(100.0, 0)
    w.add(110.0, 0)
    assert w.wait(120.0, 0) == pytest.approx(40.0)  # the first expires at 160
    assert w.wait(160.0, 0) is None


def test_tpm_window_settles_reservations_to_actual_tokens():
    w = Window(Limit("limits[0]", Scope("app", "bot"), rpm=None, tpm=1000))
    entry = w.add(0.0, 800)
    assert w.wait(1.0, 300) == pytest.approx(59.0)
    w.settle(entry, 100)  # it used far less than it reserved
    assert w.wait(1.0, 300) is None
    assert w.wait(1.0, 1001) == 60.0  # never fits: more than the whole limit
    assert "more than its 1000 tokens per minute" in w.describe(1001)


def test_settling_an_expired_entry_changes_nothing_in_the_window():
    w = Window(Limit("limits[0]", Scope("app", "bot"), rpm=None, tpm=1000))
    old = w.add(0.0, 500)
    w.wait(61.0, 0)  # prunes it
    w.settle(old, 900)
    assert w.tokens == 0


# --- budgets through the guard --------------------------------------------------------------------

def guard_with(budget: Budget, spent: Decimal = Decimal(0)) -> Guard:
    start, end = period_bounds(budget.period, datetime.now(UTC))
    no_rules = Settings(path=Path("t.toml"), server=Server(), providers={})
    return Guard(no_rules, {budget.id: BudgetState(budget, start, end, spent)})


def event_costing(cost: Decimal | None, tokens: int = 0) -> Event:
    return make_event(cost=cost, input_tokens=tokens, output_tokens=0)


def test_a_budget_admits_only_what_fits_in_what_is_left():
    g = guard_with(Budget("b", Scope("tenant", "acme"), Decimal("1"), "USD", "month"))
    first = g.admit(WHO, Need(10, Decimal("0.6")))
    g.admit(WHO, Need(10, Decimal("0.3")))  # 0.9 reserved
    with pytest.raises(PolicyError) as e:
        g.admit(WHO, Need(10, Decimal("0.2")))  # its worst case does not fit in what is left
    assert e.value.status == 402
    assert "may take 0.2 USD" in e.value.message and "than the 0.1 left" in e.value.message
    g.admit(WHO, Need(10, Decimal("0.1")))  # exactly what is left
    with pytest.raises(PolicyError) as e:
        g.admit(WHO, Need(10, Decimal("0.01")))
    assert "0 spent and 1 reserved of 1 USD" in e.value.message
    first.settle(event_costing(Decimal("0.1")))  # it cost far less than its worst case
    g.admit(WHO, Need(10, Decimal("0.5")))  # 0.1 spent + 0.4 reserved + 0.5 = 1
    assert g.states["b"].spent == Decimal("0.1")


def test_a_request_whose_cost_is_unknown_spends_its_whole_reservation():
    g = guard_with(Budget("b", Scope("tenant", "acme"), Decimal("1"), "USD", "month"))
    g.admit(WHO, Need(10, Decimal("0.4"))).settle(event_costing(None))  # the meter failed
    assert (g.states["b"].spent, g.states["b"].reserved) == (Decimal("0.4"), Decimal(0))


def test_a_budget_only_applies_to_its_scope():
    g = guard_with(Budget("b", Scope("tenant", "other"), Decimal("0"), "USD", "month"))
    g.admit(WHO, Need(10, Decimal("5")))  # not acme's budget: no refusal


def test_an_unpriced_model_cannot_pass_a_money_budget():
    g = guard_with(Budget("b", Scope("app", "bot"), Decimal("100"), "USD", "day"))
    with pytest.raises(PolicyError) as e:
        g.admit(WHO, Need(10, None))
    assert e.value.status == 402 and "no known price" in e.value.message


def test_a_token_budget_counts_input_and_output():
    g = guard_with(Budget("b", Scope("key_id", "k1"), Decimal("100"), "tokens", "total"))
    ticket = g.admit(WHO, Need(80, None))
    ticket.settle(event_costing(Decimal(0), tokens=120))
    state = g.states["b"]
    assert (state.spent, state.reserved) == (Decimal(120), Decimal(0))
    with pytest.raises(PolicyError):
        g.admit(WHO, Need(1, None))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 50), st.integers(0, 100)),
                min_size=1, max_size=60))
def test_spend_never_passes_a_budget(steps):
    """Any interleaving of admissions and settlements (actual ≤ reserved): spend stays within
    the limit."""
    limit = Decimal(100)
    g = guard_with(Budget("b", Scope("tenant", "acme"), limit, "USD", "total"))
    open_tickets = []
    for settle_one, reserve, used_pct in steps:
        if settle_one and open_tickets:
            ticket, reserved = open_tickets.pop(0)
            actual = reserved * used_pct / 100
            ticket.settle(event_costing(actual))
        else:
            try:
                ticket = g.admit(WHO, Need(1, Decimal(reserve)))
            except PolicyError:
                continue
            open_tickets.append((ticket, Decimal(reserve)))
    for ticket, reserved in open_tickets:
        ticket.settle(event_costing(reserved))
    assert g.states["b"].spent <= limit
    assert g.states["b"].reserved == 0


def test_a_reservation_from_last_period_does_not_count_in_the_new_one():
    budget = Budget("b", Scope("tenant", "acme"), Decimal("10"), "USD", "day")
    g = guard_with(budget)
    ticket = g.admit(WHO, Need(1, Decimal("2")))
    state = g.states["b"]
    state.start, state.end = at("2020-01-01T00:00:00"), at("2020-01-02T00:00:00")
    ticket.holds = [(state, Decimal("2"), state.start)]
    state.roll(datetime.now(UTC))  # a new day begins while the request is in flight
    ticket.settle(event_costing(Decimal("2")))
    assert (state.spent, state.reserved) == (Decimal(0), Decimal(0))


# --- residency ---------------------------------------------------------------------------------

def route(region: str | None) -> Route:
    return Route(Provider("prov", "openai", "http://x", None, None, region, None, None), "m")


def rule(**sets) -> Rule:
    return Rule("rules[0]", Scope("tenant", "acme"), sets.get("allow_regions"),
                sets.get("deny_regions", frozenset()), sets.get("allow_origins"),
                sets.get("deny_origins", frozenset()))


@pytest.mark.parametrize(("the_rule", "region", "origin", "kept"), [
    (rule(deny_regions=frozenset({"CN"})), "CN", "US", False),
    (rule(deny_regions=frozenset({"CN"})), "US", "CN", True),
    (rule(deny_regions=frozenset({"CN"})), None, "US", False),  # unknown: fails closed
    (rule(allow_regions=EU), "DE", "US", True),
    (rule(allow_regions=EU), "US", "US", False),
    (rule(allow_origins=EU), "US", "FR", True),
    (rule(allow_origins=EU), "US", None, False),
    (rule(deny_origins=frozenset({"CN"})), "US", "CN", False),
])
def test_residency_and_origin_rules(the_rule, region, origin, kept):
    assert (breach(the_rule, route(region), origin) is None) is kept


# --- config -------------------------------------------------------------------------------------

def test_budgets_limits_and_rules_load_from_the_config(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(BASE + """
[[budgets]]
tenant = "acme"
limit = 100.50
unit = "USD"
period = "month"
[[limits]]
app = "bot"
rpm = 600
tpm = 100000
[[rules]]
key_id = "k1"
allow_regions = ["EU", "CH"]
""")
    s = load(path, environ={})
    assert s.budgets == (Budget("config-0", Scope("tenant", "acme"), Decimal("100.50"), "USD",
                                "month"),)
    assert (s.limits[0].rpm, s.limits[0].tpm) == (600, 100000)
    assert s.rules[0].allow_regions == EU | {"CH"}


@pytest.mark.parametrize(("text", "fragment"), [
    ('[[budgets]]\nlimit = 1\nunit = "USD"\nperiod = "day"', "budgets[0].tenant: exactly one"),
    ('[[budgets]]\ntenant = "a"\napp = "b"\nlimit = 1\nunit = "USD"\nperiod = "day"',
     "budgets[0].app: exactly one"),
    ('[[budgets]]\ntenant = "a"\nlimit = 1\nunit = "EUR"\nperiod = "day"',
     "budgets[0].unit: expected the server currency 'USD'"),
    ('[[budgets]]\ntenant = "a"\nlimit = 1\nunit = "USD"\nperiod = "year"',
     "budgets[0].period: expected one of day, week, month, total"),
    ('[[budgets]]\ntenant = "a"\nlimit = -5\nunit = "USD"\nperiod = "day"',
     "budgets[0].limit: cannot be negative"),
    ('[[limits]]\napp = "a"', "limits[0].rpm: a limit needs rpm, tpm or both"),
    ('[[limits]]\napp = "a"\nrpm = 0', "limits[0].rpm: 0 is out of range"),
    ('[[rules]]\ntenant = "a"', "rules[0].allow_regions: a rule needs"),
    ('[[rules]]\ntenant = "a"\ndeny_regions = ["China"]', "rules[0].deny_regions: expected ISO"),
    ('[[rules]]\ntenant = "a"\ndeny_regions = "CN"', "rules[0].deny_regions: expected a list"),
    ('[[models]]\nname = "x"\nroutes = [{ provider = "p" }]\nstrategy = "fastest"',
     "models[1].strategy: expected one of order, price, latency"),
])
def test_bad_policy_config_names_the_key(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(BASE + text)
    with pytest.raises(ConfigError) as e:
        load(path, environ={})
    assert fragment in str(e.value)
