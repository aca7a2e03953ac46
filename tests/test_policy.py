"""Budgets, rate-limit windows, residency rules and their config, without a gateway."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
from tokometer.events import Event, rfc3339
from tokometer.policy import Consumer, Guard, Need
from tokometer.policy.budgets import BudgetState, period_bounds
from tokometer.policy.limits import Window
from tokometer.policy.residency import breach

WHO = Consumer("k1", "acme", "bot", "DE")
NOW = datetime.now(UTC)  # when the guards' requests start


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
    start, end = period_bounds(budget.period, NOW)
    no_rules = Settings(path=Path("t.toml"), server=Server(), providers={})
    return Guard(no_rules, {budget.id: BudgetState(budget, start, end, spent)})


def event_costing(cost: Decimal | None, tokens: int = 0, time: datetime | None = None) -> Event:
    return make_event(cost=cost, input_tokens=tokens, output_tokens=0,
                      time=rfc3339(time or NOW))


def test_a_budget_admits_only_what_fits_in_what_is_left():
    g = guard_with(Budget("b", Scope("tenant", "acme"), Decimal("1"), "USD", "month"))
    first = g.admit(WHO, Need(10, Decimal("0.6")), NOW)
    g.admit(WHO, Need(10, Decimal("0.3")), NOW)  # 0.9 reserved
    with pytest.raises(PolicyError) as e:
        g.admit(WHO, Need(10, Decimal("0.2")), NOW)  # its worst case does not fit what is left
    assert e.value.status == 402
    assert "may take 0.2 USD" in e.value.message and "than the 0.1 left" in e.value.message
    g.admit(WHO, Need(10, Decimal("0.1")), NOW)  # exactly what is left
    with pytest.raises(PolicyError) as e:
        g.admit(WHO, Need(10, Decimal("0.01")), NOW)
    assert "0 spent and 1 reserved of 1 USD" in e.value.message
    first.settle(event_costing(Decimal("0.1")), g.budgets_for(WHO))  # far below its worst case
    g.admit(WHO, Need(10, Decimal("0.5")), NOW)  # 0.1 spent + 0.4 reserved + 0.5 = 1
    assert g.states["b"].spent == Decimal("0.1")


def test_a_request_whose_cost_is_unknown_spends_its_whole_reservation():
    g = guard_with(Budget("b", Scope("tenant", "acme"), Decimal("1"), "USD", "month"))
    ticket = g.admit(WHO, Need(10, Decimal("0.4")), NOW)
    ticket.settle(event_costing(None), g.budgets_for(WHO))  # the meter failed
    assert (g.states["b"].spent, g.states["b"].reserved) == (Decimal("0.4"), Decimal(0))


def test_a_budget_only_applies_to_its_scope():
    g = guard_with(Budget("b", Scope("tenant", "other"), Decimal("0"), "USD", "month"))
    g.admit(WHO, Need(10, Decimal("5")), NOW)  # not acme's budget: no refusal


def test_an_unpriced_model_cannot_pass_a_money_budget():
    g = guard_with(Budget("b", Scope("app", "bot"), Decimal("100"), "USD", "day"))
    with pytest.raises(PolicyError) as e:
        g.admit(WHO, Need(10, None), NOW)
    assert e.value.status == 402 and "no known price" in e.value.message


def test_a_token_budget_counts_input_and_output():
    g = guard_with(Budget("b", Scope("key_id", "k1"), Decimal("100"), "tokens", "total"))
    ticket = g.admit(WHO, Need(80, None), NOW)
    ticket.settle(event_costing(Decimal(0), tokens=120), g.budgets_for(WHO))
    state = g.states["b"]
    assert (state.spent, state.reserved) == (Decimal(120), Decimal(0))
    with pytest.raises(PolicyError):
        g.admit(WHO, Need(1, None), NOW)


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
            ticket.settle(event_costing(actual), g.budgets_for(WHO))
        else:
            try:
                ticket = g.admit(WHO, Need(1, Decimal(reserve)), NOW)
            except PolicyError:
                continue
            open_tickets.append((ticket, Decimal(reserve)))
    for ticket, reserved in open_tickets:
        ticket.settle(event_costing(reserved), g.budgets_for(WHO))
    assert g.states["b"].spent <= limit
    assert g.states["b"].reserved == 0


def test_a_request_counts_in_the_period_holding_its_time():
    """A request that started before midnight and ended after counts in the day it
    started, as the ledger's sums by event time do; the new day's spend starts at 0."""
    budget = Budget("b", Scope("tenant", "acme"), Decimal("10"), "USD", "day")
    g = guard_with(budget)
    yesterday = NOW - timedelta(days=1)
    state = g.states["b"]
    state.start, state.end = period_bounds("day", yesterday)
    ticket = g.admit(WHO, Need(1, Decimal("2")), yesterday)
    state.roll(NOW)  # a new day begins while the request is in flight
    ticket.settle(event_costing(Decimal("2"), time=yesterday), g.budgets_for(WHO))
    assert (state.spent, state.reserved) == (Decimal(0), Decimal(0))
    g.admit(WHO, Need(1, Decimal("1")), NOW).settle(event_costing(Decimal("1"), time=NOW),
                                                    g.budgets_for(WHO))
    assert state.spent == Decimal(1)


def test_a_budget_added_while_a_request_was_under_way_counts_it():
    """It holds no part of the new budget, yet its spend is the budget's, as in the ledger."""
    g = guard_with(Budget("old", Scope("tenant", "acme"), Decimal("10"), "USD", "day"))
    ticket = g.admit(WHO, Need(1, Decimal("2")), NOW)
    added = Budget("new", Scope("app", "bot"), Decimal("10"), "USD", "total")
    g.update_budgets({"old": g.states["old"].budget, "new": added},
                     {"new": BudgetState(added, None, None, Decimal(0))})
    ticket.settle(event_costing(Decimal("1.5")), g.budgets_for(WHO))
    assert (g.states["old"].spent, g.states["new"].spent) == (Decimal("1.5"), Decimal("1.5"))


def test_a_request_refused_after_admission_leaves_no_trace_in_its_rate_window():
    """A store processes share refused it: it never counts against this process's rpm."""
    no_rules = Settings(path=Path("t.toml"), server=Server(), providers={},
                        limits=(Limit("limits[0]", Scope("app", "bot"), rpm=1, tpm=None),))
    g = Guard(no_rules, {})
    g.admit(WHO, Need(1, None), NOW).withdraw()
    g.admit(WHO, Need(1, None), NOW)
    with pytest.raises(PolicyError):
        g.admit(WHO, Need(1, None), NOW)


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
    (budget,) = s.budgets
    assert budget == Budget(budget.id, Scope("tenant", "acme"), Decimal("100.50"), "USD",
                            "month")
    assert (s.limits[0].rpm, s.limits[0].tpm) == (600, 100000)
    assert s.rules[0].allow_regions == EU | {"CH"}


def test_a_config_budget_is_named_by_what_it_counts_not_by_its_place(tmp_path):
    """Its id keys the spend a store keeps: moving or editing other budgets, or its limit,
    keeps it; changing what it counts gives a new one."""
    def ids(budgets: str) -> list[str]:
        path = tmp_path / "b.toml"
        path.write_text(BASE + budgets)
        return [b.id for b in load(path, environ={}).budgets]

    def budget(tenant: str, limit: int = 5, period: str = "day") -> str:
        return (f'[[budgets]]\ntenant = "{tenant}"\nlimit = {limit}\nunit = "USD"\n'
                f'period = "{period}"\n')

    a, b = ids(budget("a") + budget("b"))
    assert ids(budget("b") + budget("a", limit=9)) == [b, a]
    assert len({a, b, *ids(budget("a", period="month") + budget("c"))}) == 4


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
    ('[[limits]]\napp = "a"\nrpm = 1\n[[limits]]\napp = "a"\ntpm = 9',
     "limits[1].app: the same scope: give it rpm and tpm together as limits[0]"),
    ('[[budgets]]\napp = "a"\nlimit = 1\nunit = "USD"\nperiod = "day"\n' * 2,
     "budgets[1].app: the same scope, unit and period as budgets[0]"),
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
