"""The gate before a request goes out: residency rules, rate limits and budgets.

`admit` checks every limit and budget that applies before it reserves anything, with no
await in between, so concurrent requests see each other's reservations; a request is admitted
only if its worst case fits in what is left. The Ticket it returns settles them from the
request's event. Nothing here does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from ..config import ENERGY_UNITS, TOKENS, Budget, Rule, Settings
from ..errors import PolicyError
from ..events import Event, decimal_str
from .budgets import BudgetState, amount_of, taken
from .keys import Consumer
from .limits import Entry, Window, retry_after


@dataclass(frozen=True, slots=True)
class Need:
    """The most a request may take: tokens (input counted + output allowed), and their cost,
    charge, energy and CO2e on the dearest route it may take (None when a route has no known
    price, or no energy figure)."""

    tokens: int
    cost: Decimal | None
    energy_wh: Decimal | None = None
    co2e_g: Decimal | None = None
    charge: Decimal | None = None  # what it may be charged (its cost where no plan charges)


@dataclass(frozen=True, slots=True)
class Stored:
    """Where a ticket's reservations are in a store processes share (shared.py)."""

    event_id: str  # its budget holds are kept under the request's event id
    second: int  # its rate limits counted it in this second (Unix time)...
    tokens: int  # ...as this many tokens, until it settles


@dataclass(slots=True)
class Ticket:
    holds: list[tuple[BudgetState, Decimal, datetime | None]] = field(default_factory=list)
    entries: list[tuple[Window, Entry]] = field(default_factory=list)
    settled: bool = False
    stored: Stored | None = None  # where a store processes share holds them (shared.py)

    def release(self) -> None:
        """Give back what the request reserved: it consumed nothing, or was not recorded."""
        self._close(0)

    def withdraw(self) -> None:
        """Undo the admission of a request refused after all (by a store processes share):
        as if it had never been admitted."""
        if self._close(0):
            for window, entry in self.entries:
                window.remove(entry)

    def settle(self, event: Event, covering: Iterable[BudgetState]) -> None:
        """Turn reservations into spend. `covering` are the budgets that apply to the
        request's consumer now (Guard.budgets_for): each counts what the request took in the
        period holding its time, as the ledger's sums do, whether the request holds part of
        it or the budget was added while it was under way."""
        if self._close(event.input_tokens + event.output_tokens):
            held = {state.budget.id: amount for state, amount, _ in self.holds}
            for state in covering:
                if state.holds_time(event.time):
                    state.spent += taken(state.budget, held.get(state.budget.id, Decimal(0)),
                                         event)

    def _close(self, tokens: int) -> bool:
        """Give back the reservations, the rate windows counting `tokens` instead; False if
        the ticket was closed before."""
        if self.settled:
            return False
        self.settled = True
        for state, amount, _ in self.holds:
            state.reserved -= amount
        for window, entry in self.entries:
            window.settle(entry, tokens)
        return True


@dataclass(frozen=True, slots=True)
class _Applicable:
    rules: tuple[Rule, ...]
    windows: tuple[Window, ...]
    budgets: tuple[BudgetState, ...]


class Guard:
    def __init__(self, settings: Settings, states: dict[str, BudgetState]):
        self._rules = settings.rules
        self._windows = [Window(limit) for limit in settings.limits]
        self.states = states
        self._cache: dict[str | None, _Applicable] = {}

    def _applicable(self, who: Consumer) -> _Applicable:
        found = self._cache.get(who.key_id)
        if found is None:
            found = self._cache[who.key_id] = _Applicable(
                tuple(r for r in self._rules if r.scope.covers(who)),
                tuple(w for w in self._windows if w.limit.scope.covers(who)),
                tuple(s for s in self.states.values() if s.budget.scope.covers(who)))
        return found

    def rules_for(self, who: Consumer) -> tuple[Rule, ...]:
        return self._applicable(who).rules

    def budgets_for(self, who: Consumer) -> tuple[BudgetState, ...]:
        return self._applicable(who).budgets

    def meters(self, who: Consumer) -> bool:
        """Whether a rate limit or budget applies, so `admit` needs the request's Need."""
        applicable = self._applicable(who)
        return bool(applicable.windows or applicable.budgets)

    def admit(self, who: Consumer, wants: Need | None, at: datetime) -> Ticket:
        """Reserve what the request, which started `at`, may take, or raise PolicyError
        (429 or 402)."""
        applicable = self._applicable(who)
        if not applicable.windows and not applicable.budgets:
            return Ticket()
        assert wants is not None, "meters(who) said yes: the Need is required"
        now = time.monotonic()
        for window in applicable.windows:
            if window.wait(now, wants.tokens) is not None:
                raise rate_limited(window, wants.tokens, now)
        holds = []
        for state in applicable.budgets:
            state.roll(at)
            amount = _reservation(state.budget, wants)
            if state.exhausted:
                raise exhausted(state, state.spent, state.reserved)
            if state.spent + state.reserved + amount > state.budget.limit:
                raise too_big(state, state.spent, state.reserved, amount)
            holds.append((state, amount, state.start))
        ticket = Ticket(holds, [(w, w.add(now, wants.tokens)) for w in applicable.windows])
        for state, amount, _ in holds:
            state.reserved += amount
        return ticket

    def charge(self, event: Event) -> None:
        """An event recorded with nothing reserved (a correction, an ingested reading) adds
        to the spend of every budget covering it whose current period holds its time. A
        budget nothing was admitted to since its period ended starts the new one first (as
        `admit` would), or a reading of today would miss it and then be reset away."""
        now = datetime.now(UTC)
        for state in self.states.values():
            if state.budget.scope.covers(event):
                state.roll(now)
                if state.holds_time(event.time):
                    state.spent += amount_of(state.budget, event)

    def update_budgets(self, wanted: dict[str, Budget], fresh: dict[str, BudgetState]) -> None:
        """Keep the state (spend, reservations) of budgets that stay; add `fresh` ones."""
        states = {}
        for budget_id, budget in wanted.items():
            state = self.states.get(budget_id) or fresh.get(budget_id)
            if state is not None:
                state.budget = budget  # a new limit takes effect; spend stays
                states[budget_id] = state
        self.states = states
        self._cache.clear()

    def missing(self, budgets: Iterable[Budget]) -> list[Budget]:
        return [b for b in budgets if b.id not in self.states]


def _reservation(budget: Budget, wants: Need) -> Decimal:
    if budget.unit == TOKENS:
        return Decimal(wants.tokens)
    if budget.unit in ENERGY_UNITS:
        worst: Decimal | None = getattr(wants, ENERGY_UNITS[budget.unit])
        if worst is None:
            raise PolicyError(f"{budget} cannot be kept: a route the request may take has no "
                              "energy figure to reserve before it runs (EcoLogits does not "
                              "know its model: size it with [models.impact] params; or it is "
                              "a local server whose energy is measured, unbounded until then)",
                              status=402, type="insufficient_quota", code="budget_exceeded")
        return worst
    worst = wants.charge if budget.wallet else wants.cost
    if worst is None:
        raise PolicyError(f"{budget} cannot be kept: the model has no known price on every "
                          "route it may take; give it a price in the config",
                          status=402, type="insufficient_quota", code=_code(budget))
    return worst


def too_big(state: BudgetState, spent: Decimal, reserved: Decimal,
            amount: Decimal) -> PolicyError:
    """402 for a request whose worst case is more than what `spent` and `reserved` leave."""
    left = state.budget.limit - spent - reserved
    if state.budget.wallet:
        return _balance_error(
            f"{state.budget} cannot cover this request: it may be charged up to "
            f"{decimal_str(amount)} {state.budget.unit} (its input, and its max_tokens for "
            f"each of its n choices), more than the {decimal_str(left)} "
            f"{state.budget.unit} left; top it up, or lower max_tokens or n", state, left)
    return PolicyError(
        f"{state.budget} cannot cover this request: at most it may take {decimal_str(amount)} "
        f"{state.budget.unit} (its input, and its max_tokens for each of its n choices), more "
        f"than the {decimal_str(left)} left; lower max_tokens or n",
        status=402, type="insufficient_quota", code="budget_exceeded")


def rate_limited(window: Window, tokens: int, now: float) -> PolicyError:
    """429 for a request of `tokens` the window has no room for at `now`."""
    return PolicyError(window.describe(tokens), status=429, type="rate_limit_error",
                       code="rate_limit_exceeded",
                       retry_after=retry_after(window.wait(now, tokens) or 1.0))


def exhausted(state: BudgetState, spent: Decimal, reserved: Decimal) -> PolicyError:
    if state.budget.wallet:
        left = state.budget.limit - spent - reserved
        return _balance_error(
            f"{state.budget} is empty: {decimal_str(left)} {state.budget.unit} left of its "
            f"credit and allowance, {decimal_str(reserved)} of it held by requests under "
            "way; top it up", state, left)
    limit = decimal_str(state.budget.limit)
    return PolicyError(
        f"{state.budget} is exhausted: {decimal_str(spent)} spent and "
        f"{decimal_str(reserved)} reserved of {limit} {state.budget.unit}; "
        f"{state.resets()}",
        status=402, type="insufficient_quota", code="budget_exceeded")


def _balance_error(message: str, state: BudgetState, left: Decimal) -> PolicyError:
    """402 from a wallet, with what it has left (`x-tokometer-balance`)."""
    return PolicyError(message, status=402, type="insufficient_quota",
                       code=_code(state.budget),
                       balance=f"{decimal_str(left)} {state.budget.unit}")


def _code(budget: Budget) -> str:
    return "insufficient_balance" if budget.wallet else "budget_exceeded"
