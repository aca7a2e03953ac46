"""Budgets and rate limits kept exact across the processes sharing one store: gateway
workers on one SQLite file, or replicas on one PostgreSQL.

Each process's Guard reserves in its own memory first (cheap, and it refuses what plainly
cannot fit); then its reservations are also written to the store, in one transaction, each
budget and limit under a lock of its own (`Store.lock`), all of a request's or none:

- a budget hold, only if the period's spend, its live holds and the new hold fit the limit;
- a rate entry, only if the limit's last minute of entries leaves room for it.

Settling deletes the holds, adds what the request took to each period's spend, and sets each
rate entry to the tokens used. Holds expire, so a process that dies holding some gives them
back; rate entries leave the window after a minute. Time is each process's wall clock, so
replicas on several machines keep theirs in step (NTP). The period's spend starts from the
ledger's sum the first time a process needs it (a request settling at that moment can be
counted twice: never too little).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import partial

from ..config import TOKENS
from ..events import Event, decimal_str, new_event_id, rfc3339
from ..ledger.store import Store
from .budgets import BudgetState, amount_of, spent_in
from .guard import Ticket, exhausted, rate_limited
from .limits import WINDOW_SECONDS, Entry, Window


class SharedGuard:
    def __init__(self, store: Store, hold_seconds: float):
        self._store = store
        self._hold_seconds = hold_seconds
        self._lock = asyncio.Lock()  # one transaction at a time on this connection

    async def reserve(self, ticket: Ticket) -> None:
        """Hold the ticket's reservations in the store, or raise PolicyError (402 or 429)."""
        if ticket.holds or ticket.entries:
            async with self._lock:
                ticket.stored = await asyncio.to_thread(self._reserve, ticket)

    async def settle(self, ticket: Ticket, event: Event | None) -> None:
        """Release the ticket's holds, adding what the event took to each period's spend."""
        if ticket.stored:
            stored, ticket.stored = ticket.stored, {}
            async with self._lock:
                await asyncio.to_thread(self._settle, ticket, stored, event)

    def _reserve(self, ticket: Ticket) -> dict[str, str]:
        now = time.time()
        steps: list[tuple[str, Callable[[], str]]] = [
            *((f"budget:{state.budget.id}", partial(self._hold, state, amount, start, now))
              for state, amount, start in ticket.holds),
            *((f"limit:{window.limit.name}", partial(self._enter, window, entry, now))
              for window, entry in ticket.entries)]
        stored = {}
        with self._store.transaction():  # locks taken in one order: processes never deadlock
            for name, step in sorted(steps, key=lambda s: s[0]):
                self._store.lock(name)
                stored[name] = step()
        return stored

    def _hold(self, state: BudgetState, amount: Decimal, start: datetime | None,
              now: float) -> str:
        budget_id, period = state.budget.id, rfc3339(start) if start else ""
        self._store.execute("DELETE FROM budget_holds WHERE budget_id = ? AND expires <= ?",
                            (budget_id, now))
        spent = self._spent(state, start, period)
        (held,) = self._store.execute(
            "SELECT decimal_sum(amount) FROM budget_holds WHERE budget_id = ? "
            "AND period_start = ?", (budget_id, period)).fetchone()
        held = Decimal(held or 0)
        if spent + held + amount > state.budget.limit:
            raise exhausted(state, spent, held)
        hold_id = new_event_id()
        self._store.execute(
            "INSERT INTO budget_holds (id, budget_id, period_start, amount, expires) "
            "VALUES (?, ?, ?, ?, ?)",
            (hold_id, budget_id, period, decimal_str(amount), now + self._hold_seconds))
        return hold_id

    def _spent(self, state: BudgetState, start: datetime | None, period: str) -> Decimal:
        row = self._store.execute("SELECT spent FROM budget_spend WHERE budget_id = ? "
                                  "AND period_start = ?", (state.budget.id, period)).fetchone()
        if row is not None:
            return Decimal(row[0])
        spent = spent_in(self._store, state.budget, start)
        self._store.execute("INSERT INTO budget_spend (budget_id, period_start, spent) "
                            "VALUES (?, ?, ?)", (state.budget.id, period, decimal_str(spent)))
        return spent

    def _enter(self, window: Window, entry: Entry, now: float) -> str:
        """The request's entry in the limit's shared window, if the last minute has room."""
        name, limit = window.limit.name, window.limit
        self._store.execute("DELETE FROM rate_entries WHERE limit_name = ? AND at <= ?",
                            (name, now - WINDOW_SECONDS))
        count, used = self._store.execute(
            "SELECT COUNT(*), COALESCE(SUM(tokens), 0) FROM rate_entries WHERE limit_name = ?",
            (name,)).fetchone()
        if ((limit.rpm is not None and count >= limit.rpm)
                or (limit.tpm is not None and used + entry.tokens > limit.tpm)):
            shared = Window(limit)  # the store's window, to say when the request would fit
            for at, tokens in self._store.execute(
                    "SELECT at, tokens FROM rate_entries WHERE limit_name = ? ORDER BY at",
                    (name,)):
                shared.add(at, tokens)
            raise rate_limited(shared, entry.tokens, now)
        entry_id = new_event_id()
        self._store.execute("INSERT INTO rate_entries (id, limit_name, at, tokens) "
                            "VALUES (?, ?, ?, ?)", (entry_id, name, now, entry.tokens))
        return entry_id

    def _settle(self, ticket: Ticket, stored: dict[str, str], event: Event | None) -> None:
        with self._store.transaction():
            for state, amount, start in sorted(ticket.holds, key=lambda h: h[0].budget.id):
                self._store.lock(name := f"budget:{state.budget.id}")
                self._store.execute("DELETE FROM budget_holds WHERE id = ?", (stored[name],))
                if event is None:
                    continue
                # A cost the meter could not work out spends the whole reservation.
                unknown = state.budget.unit != TOKENS and event.cost is None
                took = amount if unknown else amount_of(state.budget, event)
                self._store.execute(
                    "UPDATE budget_spend SET spent = decimal_add(spent, ?) "
                    "WHERE budget_id = ? AND period_start = ?",
                    (decimal_str(took), state.budget.id, rfc3339(start) if start else ""))
            tokens = event.input_tokens + event.output_tokens if event is not None else 0
            self._store.executemany("UPDATE rate_entries SET tokens = ? WHERE id = ?", [
                (tokens, stored[f"limit:{window.limit.name}"]) for window, _ in ticket.entries])
