"""Budgets kept exact across replicas on one PostgreSQL store.

Each replica's Guard reserves in its own memory first (cheap, and it refuses what plainly
cannot fit); then every reservation is also a hold in the store, taken in one transaction
under each budget's lock only if the budget's spend in its period, its live holds and the new
hold fit the limit, all of a request's holds or none. Settling deletes the holds and adds what
the request took to the period's spend. Holds expire, so a replica that dies holding some
gives them back. The period's spend starts from the ledger's sum the first time a replica
needs it (a request settling at that moment can be counted twice: never too little).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal

from ..config import TOKENS
from ..events import Event, decimal_str, new_event_id, rfc3339
from ..ledger.store import Store
from .budgets import BudgetState, amount_of, spent_in
from .guard import Ticket, exhausted

_LOCK = "SELECT pg_advisory_xact_lock(hashtext(?))"


class SharedBudgets:
    def __init__(self, store: Store, hold_seconds: float):
        self._store = store
        self._hold = f"{int(hold_seconds)} seconds"
        self._lock = asyncio.Lock()  # one transaction at a time on this connection

    async def reserve(self, ticket: Ticket) -> None:
        """Hold every reservation of the ticket in the store, or raise PolicyError (402)."""
        if ticket.holds:
            async with self._lock:
                ticket.hold_ids = await asyncio.to_thread(self._reserve, ticket)

    async def settle(self, ticket: Ticket, event: Event | None) -> None:
        """Release the ticket's holds, adding what the event took to each period's spend."""
        if ticket.hold_ids:
            held, ticket.hold_ids = ticket.hold_ids, {}
            async with self._lock:
                await asyncio.to_thread(self._settle, ticket, held, event)

    def _reserve(self, ticket: Ticket) -> dict[str, str]:
        ids = {}
        with self._store.transaction():  # budgets locked in one order: replicas never deadlock
            for state, amount, start in sorted(ticket.holds, key=lambda h: h[0].budget.id):
                period = rfc3339(start) if start else ""
                self._store.execute(_LOCK, (state.budget.id,))
                spent = self._spent(state, start, period)
                held = Decimal(self._store.execute(
                    "SELECT COALESCE(SUM(amount::numeric), 0) FROM budget_holds "
                    "WHERE budget_id = ? AND period_start = ? AND expires > now()",
                    (state.budget.id, period)).fetchone()[0])
                if spent + held + amount > state.budget.limit:
                    raise exhausted(state, spent, held)
                hold_id = new_event_id()
                self._store.execute(
                    "INSERT INTO budget_holds (id, budget_id, period_start, amount, expires) "
                    f"VALUES (?, ?, ?, ?, now() + interval '{self._hold}')",
                    (hold_id, state.budget.id, period, decimal_str(amount)))
                ids[state.budget.id] = hold_id
        return ids

    def _spent(self, state: BudgetState, start: datetime | None, period: str) -> Decimal:
        row = self._store.execute("SELECT spent FROM budget_spend WHERE budget_id = ? "
                                  "AND period_start = ?", (state.budget.id, period)).fetchone()
        if row is not None:
            return Decimal(row[0])
        spent = spent_in(self._store, state.budget, start)
        self._store.execute("INSERT INTO budget_spend (budget_id, period_start, spent) "
                            "VALUES (?, ?, ?)", (state.budget.id, period, decimal_str(spent)))
        return spent

    def _settle(self, ticket: Ticket, held: dict[str, str], event: Event | None) -> None:
        with self._store.transaction():
            for state, amount, start in sorted(ticket.holds, key=lambda h: h[0].budget.id):
                self._store.execute(_LOCK, (state.budget.id,))
                self._store.execute("DELETE FROM budget_holds WHERE id = ?",
                                    (held[state.budget.id],))
                if event is None:
                    continue
                # A cost the meter could not work out spends the whole reservation.
                unknown = state.budget.unit != TOKENS and event.cost is None
                took = amount if unknown else amount_of(state.budget, event)
                self._store.execute(
                    "UPDATE budget_spend SET spent = trim_scale(spent::numeric + ?::numeric)::text "
                    "WHERE budget_id = ? AND period_start = ?",
                    (decimal_str(took), state.budget.id, rfc3339(start) if start else ""))
