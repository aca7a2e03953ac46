"""Budgets and rate limits kept exact across the processes sharing one store: gateway
workers on one SQLite file, or replicas on one PostgreSQL.

Each process's Guard reserves in its own memory first (cheap, and it refuses what plainly
cannot fit); then its reservations are also written to the store, in one transaction, each
budget and limit under a lock of its own (`Store.lock`), all of a request's or none, kept
under the request's event id:

- a budget hold, only if the period's spend, its live holds and the new hold fit the limit;
- a rate entry, only if the limit's last minute of entries leaves room for it.

Settling deletes the holds, adds what the request took to each period's spend, and sets each
rate entry to the tokens used. Holds expire, so a process that dies holding some gives them
back, and what its requests recorded before it died is then spent (the hold names the event).
Rate entries leave the window after a minute. Time is each process's wall clock, so replicas
on several machines keep theirs in step (NTP). Where the two ways of counting meet, a request
may be counted twice, never too little: the period's spend starts from the ledger's sum the
first time a process needs it, which can include a request about to settle; and a hold that
expires between its request's record and its settling is spent twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from decimal import Decimal
from itertools import chain

from ..errors import LedgerError, PolicyError
from ..events import Event, decimal_str, rfc3339
from ..ledger.store import Store
from .budgets import BudgetState, spent_in, taken
from .guard import Ticket, exhausted, rate_limited
from .limits import WINDOW_SECONDS, Entry, Window

log = logging.getLogger("tokometer.policy")


class SharedGuard:
    def __init__(self, store: Store, hold_seconds: float):
        self._store = store
        self._hold_seconds = hold_seconds
        self._lock = asyncio.Lock()  # one transaction at a time on this connection

    async def reserve(self, ticket: Ticket, event_id: str) -> None:
        """Hold the ticket's reservations in the store under the request's event id, or
        raise PolicyError (402 or 429)."""
        if ticket.holds or ticket.entries:
            async with self._lock:
                await asyncio.to_thread(self._reserve, ticket, event_id)
            ticket.stored_as = event_id

    async def settle(self, ticket: Ticket, event: Event | None) -> None:
        """Release the ticket's holds, adding what the event took to each period's spend.
        If the store cannot be reached, the holds stay until they expire and are spent then
        from the ledger: the request is answered (or refused) as if it had settled."""
        if ticket.stored_as is not None:
            event_id, ticket.stored_as = ticket.stored_as, None
            try:
                async with self._lock:
                    await asyncio.to_thread(self._settle, ticket, event_id, event)
            except (LedgerError, self._store.Error) as e:
                log.warning("request %s: its budget holds stay until they expire (%s)",
                            event_id, e)

    def _reserve(self, ticket: Ticket, event_id: str) -> None:
        now = time.time()
        with self._store.transaction():
            # Every lock first, in one order: processes never deadlock.
            for name in sorted([*(f"budget:{s.budget.id}" for s, _, _ in ticket.holds),
                                *(f"limit:{w.limit.name}" for w, _ in ticket.entries)]):
                self._store.lock(name)
            refusal = next(chain(
                (r for state, amount, start in ticket.holds
                 if (r := self._over_budget(state, amount, start, now))),
                (r for window, entry in ticket.entries
                 if (r := self._over_limit(window, entry, now)))), None)
            if refusal is None:  # all of them, or none; what was swept stays swept
                self._store.executemany(
                    "INSERT INTO budget_holds (budget_id, id, period_start, amount, expires) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(state.budget.id, event_id, _period(start), decimal_str(amount),
                      now + self._hold_seconds) for state, amount, start in ticket.holds])
                self._store.executemany(
                    "INSERT INTO rate_entries (limit_name, id, at, tokens) VALUES (?, ?, ?, ?)",
                    [(w.limit.name, event_id, now, entry.tokens) for w, entry in ticket.entries])
        if refusal is not None:
            raise refusal

    def _over_budget(self, state: BudgetState, amount: Decimal, start: datetime | None,
                     now: float) -> PolicyError | None:
        """Whether the period's spend and live holds leave no room for `amount`."""
        period = _period(start)
        self._spend_expired(state, now)
        spent = self._spent(state, start, period)
        (held,) = self._store.execute(
            "SELECT decimal_sum(amount) FROM budget_holds WHERE budget_id = ? "
            "AND period_start = ?", (state.budget.id, period)).fetchone()
        held = Decimal(held or 0)
        return exhausted(state, spent, held) if spent + held + amount > state.budget.limit \
            else None

    def _spend_expired(self, state: BudgetState, now: float) -> None:
        """Holds whose process died before settling them: each request's event, if it was
        recorded, is spent (a request that delivered tokens is never free); then they go."""
        expired = self._store.execute(
            "SELECT h.period_start, h.amount, e.input_tokens + e.output_tokens, e.cost, "
            "e.currency FROM budget_holds h JOIN events e ON e.id = h.id "
            "WHERE h.budget_id = ? AND h.expires <= ?", (state.budget.id, now)).fetchall()
        for period, amount, tokens, cost, currency in expired:
            took = taken(state.budget, Decimal(amount), tokens,
                         None if cost is None else Decimal(cost), currency)
            self._add_spend(state, period, took)
        self._store.execute("DELETE FROM budget_holds WHERE budget_id = ? AND expires <= ?",
                            (state.budget.id, now))

    def _spent(self, state: BudgetState, start: datetime | None, period: str) -> Decimal:
        row = self._store.execute("SELECT spent FROM budget_spend WHERE budget_id = ? "
                                  "AND period_start = ?", (state.budget.id, period)).fetchone()
        if row is not None:
            return Decimal(row[0])
        spent = spent_in(self._store, state.budget, start)
        self._store.execute("INSERT INTO budget_spend (budget_id, period_start, spent) "
                            "VALUES (?, ?, ?)", (state.budget.id, period, decimal_str(spent)))
        return spent

    def _add_spend(self, state: BudgetState, period: str, amount: Decimal) -> None:
        self._store.execute("UPDATE budget_spend SET spent = decimal_add(spent, ?) "
                            "WHERE budget_id = ? AND period_start = ?",
                            (decimal_str(amount), state.budget.id, period))

    def _over_limit(self, window: Window, entry: Entry, now: float) -> PolicyError | None:
        """Whether the limit's last minute, across processes, has no room for the request."""
        name, limit = window.limit.name, window.limit
        self._store.execute("DELETE FROM rate_entries WHERE limit_name = ? AND at <= ?",
                            (name, now - WINDOW_SECONDS))
        count, used = self._store.execute(
            "SELECT COUNT(*), COALESCE(SUM(tokens), 0) FROM rate_entries WHERE limit_name = ?",
            (name,)).fetchone()
        if ((limit.rpm is None or count < limit.rpm)
                and (limit.tpm is None or used + entry.tokens <= limit.tpm)):
            return None
        shared = Window(limit)  # the store's window, to say when the request would fit
        for at, tokens in self._store.execute(
                "SELECT at, tokens FROM rate_entries WHERE limit_name = ? ORDER BY at", (name,)):
            shared.add(at, tokens)
        return rate_limited(shared, entry.tokens, now)

    def _settle(self, ticket: Ticket, event_id: str, event: Event | None) -> None:
        with self._store.transaction():
            for state, amount, start in sorted(ticket.holds, key=lambda h: h[0].budget.id):
                self._store.lock(f"budget:{state.budget.id}")
                self._store.execute("DELETE FROM budget_holds WHERE budget_id = ? AND id = ?",
                                    (state.budget.id, event_id))
                if event is not None:
                    self._add_spend(state, _period(start), taken(
                        state.budget, amount, event.input_tokens + event.output_tokens,
                        event.cost, event.currency))
            tokens = event.input_tokens + event.output_tokens if event is not None else 0
            self._store.executemany(
                "UPDATE rate_entries SET tokens = ? WHERE limit_name = ? AND id = ?",
                [(tokens, window.limit.name, event_id) for window, _ in ticket.entries])


def _period(start: datetime | None) -> str:
    """How budget_spend and budget_holds name a budget's period: its start, '' for all time."""
    return rfc3339(start) if start else ""
