"""Budgets and rate limits kept exact across the processes sharing one store: gateway
workers on one SQLite file, or replicas on one PostgreSQL.

Each process's Guard reserves in its own memory first (cheap, and it refuses what plainly
cannot fit); then its reservations are also written to the store, each budget and limit
under a lock of its own (`Store.lock`), all of a request's or none. The requests that ask
while a process's reservation transaction is under way go together in its next one: one set
of locks and one read of each budget and limit for all of them, judged in turn.


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
under the log's lock; a process that takes a budget up (at start, or while serving) raises
it to at least the ledger's sum, once its ledger has committed what it settled before (which
did not add to it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from ..config import Budget
from ..errors import LedgerError, PolicyError
from ..events import Event, decimal_str, rfc3339
from ..ledger.derive import LOG_LOCK
from ..ledger.store import Store, Writes
from ..ledger.writer import write_along
from .budgets import BudgetState, period_bounds, spent_in, taken
from .guard import Stored, Ticket, exhausted, rate_limited, too_big
from .limits import WINDOW_SECONDS, Window

log = logging.getLogger("tokometer.policy")
_T = TypeVar("_T")

# Each statement names its row first in its parameters: write_along runs a batch's rows in
# that order, so transactions touching the same rows lock them in one order.
_ADD_SPEND = ("UPDATE budget_spend SET spent = decimal_add(budget_spend.spent, added.amount) "
              "FROM (SELECT ? AS budget_id, ? AS period_start, ? AS amount) AS added "
              "WHERE budget_spend.budget_id = added.budget_id "
              "AND budget_spend.period_start = added.period_start")
_RELEASE = "DELETE FROM budget_holds WHERE budget_id = ? AND id = ?"
_USED = ("UPDATE rate_seconds SET tokens = rate_seconds.tokens + used.tokens "
         "FROM (SELECT ? AS limit_name, ? AS second, ? AS tokens) AS used "
         "WHERE rate_seconds.limit_name = used.limit_name AND rate_seconds.second = used.second")
_PRUNE_SECONDS = 1.0  # how often a process clears a limit's seconds older than its window
HOLD_SECONDS = 60.0  # a hold's life, unless its process renews it


@dataclass(slots=True)
class _Asking:
    """A request waiting for its reservations in the store."""

    ticket: Ticket
    stored: Stored
    answer: asyncio.Future[None]
    abandoned: bool = False  # the request was cancelled while it waited


@dataclass(slots=True)
class _Room:
    """A budget period's spend and holds, and a limit's last minute, as a batch finds them
    and as its requests take their share, one after the other."""

    spent: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    held: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    seconds: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)


class SharedGuard:
    def __init__(self, store: Store, hold_seconds: float = HOLD_SECONDS):
        self._store = store
        self._hold_seconds = hold_seconds
        self._lock = asyncio.Lock()  # one transaction at a time on this connection
        self._pruned: dict[str, float] = {}  # limit key → when this process last pruned it
        # event id → the holds (budget id, period, amount) of a request, until it settles
        self._live: dict[str, list[tuple[str, str, str]]] = {}
        self._waiting: list[_Asking] = []  # for the next reservation transaction
        self._batches: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    async def reserve(self, ticket: Ticket, event_id: str) -> None:
        """Hold the ticket's reservations in the store under the request's event id, or
        raise PolicyError (402 or 429)."""
        if not (ticket.holds or ticket.entries):
            return
        tokens = ticket.entries[0][1].tokens if ticket.entries else 0  # the same in each
        asking = _Asking(ticket, Stored(event_id, int(time.time()), tokens),
                         asyncio.get_running_loop().create_future())
        self._waiting.append(asking)
        if self._batches is None:
            self._batches = asyncio.create_task(self._reserve_waiting())
        try:
            await asyncio.shield(asking.answer)
        except asyncio.CancelledError:
            if not asking.answer.done():
                asking.abandoned = True  # its batch gives back what it reserves for it
            elif asking.answer.exception() is None:
                self._give_back(asking)
            raise
        ticket.stored = asking.stored
        if ticket.holds:
            self._live[event_id] = [(state.budget.id, _period(start), decimal_str(amount))
                                    for state, amount, start in ticket.holds]

    async def _reserve_waiting(self) -> None:
        """Reserve for the requests waiting, a batch per transaction, until none is left."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                refusals: list[Exception | None]
                try:
                    async with self._lock:
                        refusals = [*await _whole_in_thread(self._reserve, batch)]
                except Exception as e:  # the store failed: each request hears it
                    refusals = [e] * len(batch)
                for asking, refusal in zip(batch, refusals, strict=True):
                    if asking.abandoned:
                        if refusal is None:
                            self._give_back(asking)
                    elif refusal is None:
                        asking.answer.set_result(None)
                    else:
                        asking.answer.set_exception(refusal)
        finally:
            self._batches = None

    def _give_back(self, asking: _Asking) -> None:
        """Release what was reserved for a request cancelled while it waited."""
        asking.ticket.stored = asking.stored
        task = asyncio.create_task(self.release(asking.ticket, None))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

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
                await _whole_in_thread(self._write, stored.event_id,
                                       _settling(ticket, stored, event, covering))
        except (LedgerError, self._store.Error) as e:
            log.warning("request %s: its holds stay until they expire (%s)", stored.event_id, e)

    def charging(self, states: dict[str, BudgetState], event: Event) -> Writes:
        """What an event recorded with nothing reserved (a correction, an ingested reading)
        adds to the spend of the budgets covering it, for the ledger to commit with it."""
        return _spending([s for s in states.values() if s.budget.scope.covers(event)], event,
                         {})

    async def recount(self, budgets: Iterable[Budget]) -> None:
        """Raise the spend of budgets this process takes up to the ledger's sum, under the
        log's lock: another process may have started their period before this one knew them
        (or this one's previous run did), and what was recorded meanwhile did not add to
        it."""
        async with self._lock:
            await _whole_in_thread(self._recount, list(budgets))

    async def renew_forever(self) -> None:
        """Keep the holds of this process's requests alive while they run."""
        while True:
            await asyncio.sleep(self._hold_seconds / 4)
            try:
                async with self._lock:
                    await _whole_in_thread(self._renew, dict(self._live))
            except (LedgerError, self._store.Error) as e:
                log.warning("holds not renewed (will retry): %s", e)

    async def close(self) -> None:
        """Close the store's connection once a transaction under way has ended."""
        async with self._lock:
            self._store.close()

    def _write(self, event_id: str, writes: Writes) -> None:
        """A settling of its own, unless the event was recorded after all (its settling
        then committed with it): under the log's lock, which its recording holds."""
        with self._store.transaction():
            self._store.lock(LOG_LOCK)
            if self._store.execute("SELECT 1 FROM events WHERE id = ?",
                                   (event_id,)).fetchone() is None:
                write_along(self._store, writes)

    def _renew(self, live: dict[str, list[tuple[str, str, str]]]) -> None:
        """Extend the holds, and put back any another process swept as expired while the
        store was out of reach (unless the request has been recorded meanwhile)."""
        expires = time.time() + self._hold_seconds
        with self._store.transaction():
            self._store.lazy_commit()  # working state, like the holds themselves
            # Under the log's lock, a request being recorded is either committed (seen
            # below) or not yet begun (its settling then deletes the hold again).
            self._store.lock(LOG_LOCK)
            self._store.executemany(
                "INSERT INTO budget_holds (budget_id, id, period_start, amount, expires) "
                "SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM events WHERE id = ?) "
                "ON CONFLICT (budget_id, id) DO UPDATE SET expires = excluded.expires",
                sorted((budget_id, event_id, period, amount, expires, event_id)
                       for event_id, holds in live.items()
                       for budget_id, period, amount in holds))

    def _recount(self, budgets: list[Budget]) -> None:
        """Raise each budget's spend to the ledger's sum, never lower it: settling charged
        a request whose cost was unknown its whole reservation, which the ledger's sum of
        costs cannot see."""
        now = datetime.now(UTC)
        for budget in budgets:
            start, _ = period_bounds(budget.period, now)
            key = (budget.id, _period(start))
            with self._store.transaction():
                self._store.lock(LOG_LOCK)
                row = self._store.execute("SELECT spent FROM budget_spend "
                                          "WHERE budget_id = ? AND period_start = ?",
                                          key).fetchone()
                ledger = spent_in(self._store, budget, start)
                if row is not None and Decimal(row[0]) < ledger:
                    self._store.execute("UPDATE budget_spend SET spent = ? "
                                        "WHERE budget_id = ? AND period_start = ?",
                                        (decimal_str(ledger), *key))

    def _reserve(self, batch: list[_Asking]) -> list[PolicyError | None]:
        """Each request's refusal, or None: its reservations are held in the store."""
        periods = {(state.budget.id, start) for asking in batch
                   for state, _, start in asking.ticket.holds}
        for _ in periods:  # each try starts at least one period, or is the last
            try:
                return self._try_reserve(batch)
            except _NotStarted as first_use:
                self._start(first_use.budget, first_use.start)
        return self._try_reserve(batch)

    def _start(self, budget: Budget, start: datetime | None) -> None:
        """Start a budget's period from the ledger's sum, under the log's lock: an event
        recorded meanwhile is in the sum, or commits after the row exists and adds to it."""
        with self._store.transaction():
            self._store.lock(LOG_LOCK)
            self._store.execute(
                "INSERT INTO budget_spend (budget_id, period_start, spent) VALUES (?, ?, ?) "
                "ON CONFLICT (budget_id, period_start) DO NOTHING",
                (budget.id, _period(start), decimal_str(spent_in(self._store, budget, start))))

    def _try_reserve(self, batch: list[_Asking]) -> list[PolicyError | None]:
        now = time.time()
        budgets = {(state.budget.id, _period(start)): (state, start) for asking in batch
                   for state, _, start in asking.ticket.holds}
        limits = {window.limit.key for asking in batch for window, _ in asking.ticket.entries}
        since = min(asking.stored.second for asking in batch) - int(WINDOW_SECONDS)
        with self._store.transaction(), self._store.pipeline():
            self._store.lazy_commit()  # working state: a request's record is its settling's
            # Every lock first, in one order: processes never deadlock. Then every question
            # is sent before any answer is read (one round trip on PostgreSQL).
            for name in sorted({*(f"budget:{budget_id}" for budget_id, _ in budgets),
                                *(f"limit:{key}" for key in limits)}):
                self._store.lock(name)
            # In the order of their names too: each sweeps rows a settling may update.
            asked_budgets = {key: self._ask_budget(*key, now) for key in sorted(budgets)}
            asked_limits = {key: self._ask_limit(key, since, now) for key in sorted(limits)}
            room = _Room()
            for period, asked in asked_budgets.items():
                spent, held = asked.fetchone()
                if spent is None:  # the period's first request
                    raise _NotStarted(budgets[period][0].budget, budgets[period][1])
                room.spent[period], room.held[period] = Decimal(spent), Decimal(held or 0)
            for limit_key, asked in asked_limits.items():
                room.seconds[limit_key] = list(asked.fetchall())
            refusals = [_LEFT if asking.abandoned else _judge(asking, room, now)
                        for asking in batch]  # a request whose client left takes no room
            admitted = [a for a, refusal in zip(batch, refusals, strict=True) if refusal is None]
            self._store.executemany(
                "INSERT INTO budget_holds (budget_id, id, period_start, amount, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                [(state.budget.id, a.stored.event_id, _period(start), decimal_str(amount),
                  now + self._hold_seconds) for a in admitted
                 for state, amount, start in a.ticket.holds])
            counted = Counter[tuple[str, int]]()
            tokens = Counter[tuple[str, int]]()
            for a in admitted:
                for window, _ in a.ticket.entries:
                    counted[window.limit.key, a.stored.second] += 1
                    tokens[window.limit.key, a.stored.second] += a.stored.tokens
            self._store.executemany(
                "INSERT INTO rate_seconds (limit_name, second, requests, tokens) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (limit_name, second) DO UPDATE SET "
                "requests = rate_seconds.requests + excluded.requests, "
                "tokens = rate_seconds.tokens + excluded.tokens",
                [(key, second, n, tokens[key, second])
                 for (key, second), n in sorted(counted.items())])  # as the ledger's settling
        return refusals

    def _ask_budget(self, budget_id: str, period: str, now: float) -> Any:
        """Send the query of a budget period's spend and live holds (its cursor answers)."""
        self._store.execute("DELETE FROM budget_holds WHERE budget_id = ? AND expires <= ?",
                            (budget_id, now))  # of processes that died holding them
        return self._store.execute(  # one statement: one snapshot of both
            "SELECT (SELECT spent FROM budget_spend WHERE budget_id = ? AND period_start = ?),"
            " (SELECT decimal_sum(amount) FROM budget_holds WHERE budget_id = ?"
            " AND period_start = ?)", (budget_id, period, budget_id, period))

    def _ask_limit(self, key: str, since: int, now: float) -> Any:
        """Send the query of a limit's last minute, across processes, per second (its
        cursor answers); a whole second leaves the window at once: it is at most a second
        longer."""
        if now - self._pruned.get(key, 0.0) >= _PRUNE_SECONDS:
            self._store.execute("DELETE FROM rate_seconds WHERE limit_name = ? AND second <= ?",
                                (key, since))
            self._pruned[key] = now
        return self._store.execute(
            "SELECT second, requests, tokens FROM rate_seconds WHERE limit_name = ? "
            "AND second > ? ORDER BY second", (key, since))


def _judge(asking: _Asking, room: _Room, now: float) -> PolicyError | None:
    """Whether the request's reservations fit in what the batch left of each budget and
    limit; if they do, they take their share."""
    ticket, stored = asking.ticket, asking.stored
    for state, amount, start in ticket.holds:
        key = (state.budget.id, _period(start))
        spent, held = room.spent[key], room.held[key]
        if spent + held >= state.budget.limit:
            return exhausted(state, spent, held)
        if spent + held + amount > state.budget.limit:
            return too_big(state, spent, held, amount)
    for window, _ in ticket.entries:
        minute = [s for s in room.seconds[window.limit.key]
                  if s[0] > stored.second - int(WINDOW_SECONDS)]
        if (refusal := _over_limit(window, stored, now, minute)) is not None:
            return refusal
    for state, amount, start in ticket.holds:
        room.held[state.budget.id, _period(start)] += amount
    for window, _ in ticket.entries:
        room.seconds[window.limit.key].append((stored.second, 1, stored.tokens))
    return None


def _over_limit(window: Window, stored: Stored, now: float,
                seconds: list[tuple[int, int, int]]) -> PolicyError | None:
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


async def _whole_in_thread(function: Callable[..., _T], *args: Any) -> _T:
    """asyncio.to_thread, except that a cancelled caller still waits for the thread: the
    lock it holds is never released while a transaction is under way on the connection."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


_LEFT = PolicyError("the client left before its reservation", status=499,
                    type="client_disconnected", code="client_disconnected")


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
        *((_USED, (window.limit.key, stored.second, tokens - stored.tokens))
          for window, _ in ticket.entries))


def _spending(covering: Iterable[BudgetState], event: Event,
              held: Mapping[str, Decimal]) -> Writes:
    """What `event` adds to the spend of each budget covering it, in the period holding its
    time: a period not started yet finds the event in the ledger instead (`_start`)."""
    at = datetime.fromisoformat(event.time)
    return tuple(
        (_ADD_SPEND, (s.budget.id, _period(period_bounds(s.budget.period, at)[0]),
                      decimal_str(taken(s.budget, held.get(s.budget.id, Decimal(0)), event))))
        for s in covering)


def _period(start: datetime | None) -> str:
    """How budget_spend and budget_holds name a budget's period: its start, '' for all time."""
    return rfc3339(start) if start else ""
