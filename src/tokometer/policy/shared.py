"""Budgets and rate limits kept exact across the processes sharing one store: gateway
workers on one SQLite file, or replicas on one PostgreSQL.

Each process's Guard reserves in its own memory first (cheap, and it refuses what plainly
cannot fit); then its reservations are also written to the store, in one transaction, each
budget and limit under a lock of its own (`Store.lock`), all of a request's or none:

- a budget hold (under the request's event id), only if the period's spend, its live holds
  and the new hold fit the limit;
- a request counted in the current second of each rate limit (requests and tokens per second,
  so a limit's last minute is at most 60 rows whatever the traffic), only if the last 60
  seconds leave room for it.

A request settles in the transaction that records its event (`settling`, run by the ledger):
its holds go, what it took is added to each period's spend, and its second of each rate limit
counts the tokens it used instead of those it reserved. So a reading and its spend are never
one without the other, and settling takes no lock: a reservation reads a budget's spend and
holds in one statement, which sees a settling whole or not at all (and adds to a second's
counts, never sets them). Every budget that covers the request when it settles counts it,
in the period holding the event's time, as the ledger's sums do: one added while it was
under way too. A request that ends unrecorded settles on its own.
A hold lives HOLD_SECONDS unless its process renews it (every quarter of that while the
request runs, however long), so a process that dies gives its holds back within a minute.
Time is each process's wall clock, so replicas on several machines keep theirs in step
(NTP). A period's spend starts from the ledger's sum the first time a process needs it,
under the log's lock; a process that takes a budget up while serving sets it to the ledger's
sum again (the requests it recorded before then did not add to it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ..config import Budget
from ..errors import LedgerError, PolicyError
from ..events import Event, decimal_str, rfc3339
from ..ledger.derive import LOG_LOCK
from ..ledger.store import Store, Writes
from ..ledger.writer import write_along
from .budgets import BudgetState, period_bounds, spent_in, taken
from .guard import Stored, Ticket, exhausted, rate_limited
from .limits import WINDOW_SECONDS, Window

log = logging.getLogger("tokometer.policy")

_ADD_SPEND = ("UPDATE budget_spend SET spent = decimal_add(spent, ?) "
              "WHERE budget_id = ? AND period_start = ?")
_RELEASE = "DELETE FROM budget_holds WHERE budget_id = ? AND id = ?"
_USED = ("UPDATE rate_seconds SET tokens = tokens + ? "
         "WHERE limit_name = ? AND second = ?")
_PRUNE_SECONDS = 1.0  # how often a process clears a limit's seconds older than its window
HOLD_SECONDS = 60.0  # a hold's life, unless its process renews it


class SharedGuard:
    def __init__(self, store: Store, hold_seconds: float = HOLD_SECONDS):
        self._store = store
        self._hold_seconds = hold_seconds
        self._lock = asyncio.Lock()  # one transaction at a time on this connection
        self._pruned: dict[str, float] = {}  # limit key → when this process last pruned it
        self._live: dict[str, list[str]] = {}  # event id → budget ids it holds, until settled

    async def reserve(self, ticket: Ticket, event_id: str) -> None:
        """Hold the ticket's reservations in the store under the request's event id, or
        raise PolicyError (402 or 429)."""
        if ticket.holds or ticket.entries:
            tokens = ticket.entries[0][1].tokens if ticket.entries else 0  # the same in each
            stored = Stored(event_id, int(time.time()), tokens)
            async with self._lock:
                await asyncio.to_thread(self._reserve, ticket, stored)
            ticket.stored = stored
            if ticket.holds:
                self._live[event_id] = [state.budget.id for state, _, _ in ticket.holds]

    def settling(self, ticket: Ticket, event: Event,
                 covering: Iterable[BudgetState]) -> Writes:
        """The statements that settle the ticket with its event, for the ledger to commit
        with the event (once it has, the ticket's `stored` is cleared). `covering`: the
        budgets that apply to the request's consumer now (Guard.budgets_for)."""
        return _settling(ticket, ticket.stored, event, covering)

    def settled(self, ticket: Ticket) -> None:
        """The ledger committed the ticket's settling with its event."""
        if ticket.stored is not None:
            self._live.pop(ticket.stored.event_id, None)
            ticket.stored = None

    async def release(self, ticket: Ticket, event: Event | None,
                      covering: Iterable[BudgetState] = ()) -> None:
        """Settle a ticket whose event was not recorded (None: nothing was consumed). If the
        store cannot be reached, its holds stay until they expire."""
        if ticket.stored is None:
            return
        stored, ticket.stored = ticket.stored, None
        self._live.pop(stored.event_id, None)
        try:
            async with self._lock:
                await asyncio.to_thread(self._write,
                                        _settling(ticket, stored, event, covering))
        except (LedgerError, self._store.Error) as e:
            log.warning("request %s: its holds stay until they expire (%s)", stored.event_id, e)

    def correcting(self, states: dict[str, BudgetState], event: Event) -> Writes:
        """What a correction event changes in the spend of the budgets its original counted
        in, for the ledger to commit with it."""
        return _spending([s for s in states.values() if s.budget.scope.covers(event)], event,
                         {})

    async def recount(self, budgets: Iterable[Budget]) -> None:
        """Set the spend of budgets this process takes up while serving to the ledger's sum,
        under the log's lock: another process may have started their period before this one
        knew them, and what this one recorded meanwhile did not add to it."""
        async with self._lock:
            await asyncio.to_thread(self._recount, list(budgets))

    async def renew_forever(self) -> None:
        """Keep the holds of this process's requests alive while they run."""
        while True:
            await asyncio.sleep(self._hold_seconds / 4)
            try:
                async with self._lock:
                    await asyncio.to_thread(self._renew, dict(self._live))
            except (LedgerError, self._store.Error) as e:
                log.warning("holds not renewed (will retry): %s", e)

    async def close(self) -> None:
        """Close the store's connection once a transaction under way has ended."""
        async with self._lock:
            self._store.close()

    def _write(self, writes: Writes) -> None:
        with self._store.transaction():
            write_along(self._store, writes)

    def _renew(self, live: dict[str, list[str]]) -> None:
        expires = time.time() + self._hold_seconds
        with self._store.transaction():
            self._store.lazy_commit()  # working state, like the holds themselves
            self._store.executemany(
                "UPDATE budget_holds SET expires = ? WHERE budget_id = ? AND id = ?",
                [(expires, budget_id, event_id) for event_id, budget_ids in live.items()
                 for budget_id in budget_ids])

    def _recount(self, budgets: list[Budget]) -> None:
        now = datetime.now(UTC)
        for budget in budgets:
            start, _ = period_bounds(budget.period, now)
            with self._store.transaction():
                self._store.lock(LOG_LOCK)
                self._store.execute(
                    "UPDATE budget_spend SET spent = ? WHERE budget_id = ? AND period_start = ?",
                    (decimal_str(spent_in(self._store, budget, start)), budget.id,
                     _period(start)))

    def _reserve(self, ticket: Ticket, stored: Stored) -> None:
        for _ in ticket.holds:  # each try starts at least one period, or is the last
            try:
                return self._try_reserve(ticket, stored)
            except _NotStarted as first_use:
                self._start(first_use.budget, first_use.start)
        self._try_reserve(ticket, stored)

    def _start(self, budget: Budget, start: datetime | None) -> None:
        """Start a budget's period from the ledger's sum, under the log's lock: an event
        recorded meanwhile is in the sum, or commits after the row exists and adds to it."""
        with self._store.transaction():
            self._store.lock(LOG_LOCK)
            self._store.execute(
                "INSERT INTO budget_spend (budget_id, period_start, spent) VALUES (?, ?, ?) "
                "ON CONFLICT (budget_id, period_start) DO NOTHING",
                (budget.id, _period(start), decimal_str(spent_in(self._store, budget, start))))

    def _try_reserve(self, ticket: Ticket, stored: Stored) -> None:
        now = time.time()
        with self._store.transaction(), self._store.pipeline():
            self._store.lazy_commit()  # working state: a request's record is its settling's
            # Every lock first, in one order: processes never deadlock. Then every question
            # is sent before any answer is read (one round trip on PostgreSQL).
            for name in sorted([*(f"budget:{s.budget.id}" for s, _, _ in ticket.holds),
                                *(f"limit:{w.limit.key}" for w, _ in ticket.entries)]):
                self._store.lock(name)
            judges = [*(self._ask_budget(state, amount, start, now)
                        for state, amount, start in ticket.holds),
                      *(self._ask_limit(window, stored, now) for window, _ in ticket.entries)]
            refusal = next((r for judge in judges if (r := judge()) is not None), None)
            if refusal is None:  # all of them, or none; what was swept stays swept
                self._store.executemany(
                    "INSERT INTO budget_holds (budget_id, id, period_start, amount, expires) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(state.budget.id, stored.event_id, _period(start), decimal_str(amount),
                      now + self._hold_seconds) for state, amount, start in ticket.holds])
                self._store.executemany(
                    "INSERT INTO rate_seconds (limit_name, second, requests, tokens) "
                    "VALUES (?, ?, 1, ?) ON CONFLICT (limit_name, second) DO UPDATE SET "
                    "requests = rate_seconds.requests + 1, "
                    "tokens = rate_seconds.tokens + excluded.tokens",
                    [(w.limit.key, stored.second, stored.tokens) for w, _ in ticket.entries])
        if refusal is not None:
            raise refusal

    def _ask_budget(self, state: BudgetState, amount: Decimal, start: datetime | None,
                    now: float) -> Callable[[], PolicyError | None]:
        """Send what decides whether the period's spend and live holds leave room for
        `amount`; the function returned reads the answer and says."""
        budget_id, period = state.budget.id, _period(start)
        self._store.execute("DELETE FROM budget_holds WHERE budget_id = ? AND expires <= ?",
                            (budget_id, now))  # of processes that died holding them
        asked = self._store.execute(  # one statement: one snapshot of both
            "SELECT (SELECT spent FROM budget_spend WHERE budget_id = ? AND period_start = ?),"
            " (SELECT decimal_sum(amount) FROM budget_holds WHERE budget_id = ?"
            " AND period_start = ?)", (budget_id, period, budget_id, period))

        def judge() -> PolicyError | None:
            spent, held = asked.fetchone()
            if spent is None:  # the period's first request
                raise _NotStarted(state.budget, start)
            spent, held = Decimal(spent), Decimal(held or 0)
            return exhausted(state, spent, held) if spent + held + amount > state.budget.limit \
                else None
        return judge

    def _ask_limit(self, window: Window, stored: Stored,
                   now: float) -> Callable[[], PolicyError | None]:
        """Send what decides whether the limit's last minute, across processes, has room for
        the request (a whole second leaves the window at once: it is at most a second
        longer); the function returned reads the answer and says."""
        name = window.limit.key
        since = stored.second - int(WINDOW_SECONDS)
        if now - self._pruned.get(name, 0.0) >= _PRUNE_SECONDS:
            self._store.execute("DELETE FROM rate_seconds WHERE limit_name = ? AND second <= ?",
                                (name, since))
            self._pruned[name] = now
        asked = self._store.execute(
            "SELECT second, requests, tokens FROM rate_seconds WHERE limit_name = ? "
            "AND second > ? ORDER BY second", (name, since))
        return lambda: self._over_limit(window, stored, now, asked.fetchall())

    def _over_limit(self, window: Window, stored: Stored, now: float,
                    seconds: list[Any]) -> PolicyError | None:
        limit = window.limit
        requests = sum(n for _, n, _ in seconds)
        tokens = sum(t for _, _, t in seconds)
        if ((limit.rpm is None or requests < limit.rpm)
                and (limit.tpm is None or tokens + stored.tokens <= limit.tpm)):
            return None
        shared = Window(limit)  # the store's window, to say when the request would fit
        for second, n, used in seconds:
            for i in range(n):
                shared.add(second, used if i == 0 else 0)
        return rate_limited(shared, stored.tokens, now)


class _NotStarted(Exception):
    """A budget's period has no spend in the store yet: start it, then reserve again."""

    def __init__(self, budget: Budget, start: datetime | None):
        self.budget, self.start = budget, start


def _settling(ticket: Ticket, stored: Stored | None, event: Event | None,
              covering: Iterable[BudgetState]) -> Writes:
    spending = () if event is None else _spending(
        covering, event, {state.budget.id: amount for state, amount, _ in ticket.holds})
    if stored is None:
        return spending
    tokens = event.input_tokens + event.output_tokens if event is not None else 0
    return (
        *((_RELEASE, (state.budget.id, stored.event_id)) for state, _, _ in ticket.holds),
        *spending,
        *((_USED, (tokens - stored.tokens, window.limit.key, stored.second))
          for window, _ in ticket.entries))


def _spending(covering: Iterable[BudgetState], event: Event,
              held: Mapping[str, Decimal]) -> Writes:
    """What `event` adds to the spend of each budget covering it, in the period holding its
    time: a period not started yet finds the event in the ledger instead (`_start`)."""
    at = datetime.fromisoformat(event.time)
    return tuple(
        (_ADD_SPEND, (decimal_str(taken(s.budget, held.get(s.budget.id, Decimal(0)), event)),
                      s.budget.id, _period(period_bounds(s.budget.period, at)[0])))
        for s in covering)


def _period(start: datetime | None) -> str:
    """How budget_spend and budget_holds name a budget's period: its start, '' for all time."""
    return rfc3339(start) if start else ""
