"""The store's side of budgets shared by processes (policy/shared.py), on each store: what a
process that died holding reservations leaves behind."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from conftest import make_event
from tokometer.config import Budget, Scope
from tokometer.errors import PolicyError
from tokometer.events import new_event_id
from tokometer.ledger import Store, open_store
from tokometer.ledger.rows import event_row
from tokometer.ledger.schema import INSERT_EVENT
from tokometer.policy import Ticket
from tokometer.policy.budgets import BudgetState, load_states
from tokometer.policy.shared import SharedGuard

BUDGET = Budget("b-acme", Scope("tenant", "acme"), Decimal("1.00"), "USD", "day")
RESERVED = Decimal("0.30")


def _state(store: Store) -> BudgetState:
    return load_states(store, [BUDGET], datetime.now(UTC))[BUDGET.id]


def _spend(store: Store) -> Decimal:
    (spent,) = store.execute("SELECT spent FROM budget_spend WHERE budget_id = ?",
                             (BUDGET.id,)).fetchone()
    return Decimal(spent)


def _record(store: Store, event_id: str, cost: str) -> None:
    with store.transaction():
        store.execute(INSERT_EVENT, event_row(make_event(id=event_id, tenant="acme",
                                                         cost=Decimal(cost))))


@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_holds_of_a_process_that_died_are_spent_if_their_request_was_recorded(store_location):
    """Process A reserved twice and died: one request recorded (0.25), one not. Its holds
    expire; the next reservation spends the recorded one and releases both."""
    with open_store(store_location, create=True) as store:
        dead = SharedGuard(store, hold_seconds=-1)  # its holds are expired at once
        recorded, lost = new_event_id(), new_event_id()
        state = _state(store)
        asyncio.run(dead.reserve(Ticket([(state, RESERVED, state.start)]), recorded))
        _record(store, recorded, "0.25")  # ...and A never settled it
        asyncio.run(dead.reserve(Ticket([(state, RESERVED, state.start)]), lost))

        alive = SharedGuard(store, hold_seconds=600)
        state = _state(store)
        ticket = Ticket([(state, RESERVED, state.start)])
        asyncio.run(alive.reserve(ticket, new_event_id()))
        assert _spend(store) == Decimal("0.25")  # from its expired hold, once
        (held,) = store.execute("SELECT COUNT(*) FROM budget_holds").fetchone()
        assert held == 1  # only the live one

        asyncio.run(alive.settle(ticket, make_event(tenant="acme", cost=Decimal("0.10"))))
        assert _spend(store) == Decimal("0.35")
        assert store.execute("SELECT COUNT(*) FROM budget_holds").fetchone() == (0,)


@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_an_expired_hold_is_spent_when_its_request_was_recorded_after_first_use(
        store_location):
    """The spend started before the dead process's request was recorded: its cost is added
    when its hold expires, so the budget refuses what would go past the limit."""
    with open_store(store_location, create=True) as store:
        alive = SharedGuard(store, hold_seconds=600)
        state = _state(store)
        first = Ticket([(state, RESERVED, state.start)])
        asyncio.run(alive.reserve(first, new_event_id()))  # the spend starts at 0
        asyncio.run(alive.settle(first, None))
        dead, recorded = SharedGuard(store, hold_seconds=-1), new_event_id()
        asyncio.run(dead.reserve(Ticket([(state, RESERVED, state.start)]), recorded))
        _record(store, recorded, "0.80")
        with pytest.raises(PolicyError) as refused:  # 0.80 spent + 0.30 > 1.00
            asyncio.run(alive.reserve(Ticket([(state, RESERVED, state.start)]),
                                      new_event_id()))
        assert refused.value.status == 402
        assert _spend(store) == Decimal("0.80")
