"""The store's side of budgets and rate limits shared by processes (policy/shared.py), on each
store: a request settles in the transaction that records it, and what a process that died
holding reservations leaves behind."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import make_event
from tokometer.config import Budget, Limit, Scope
from tokometer.errors import LedgerError, PolicyError
from tokometer.events import Event, new_event_id, rfc3339
from tokometer.ledger import Store, open_ledger, open_store
from tokometer.ledger.signer import load_signer
from tokometer.policy import Ticket
from tokometer.policy.budgets import BudgetState, load_states
from tokometer.policy.limits import Entry, Window
from tokometer.policy.shared import SharedGuard

BUDGET = Budget("b-acme", Scope("tenant", "acme"), Decimal("1.00"), "USD", "day")
LIMIT = Limit("tpm-acme", Scope("tenant", "acme"), rpm=None, tpm=10_000)
RESERVED = Decimal("0.30")


def _state(store: Store) -> BudgetState:
    return load_states(store, [BUDGET], datetime.now(UTC))[BUDGET.id]


def _ticket(state: BudgetState, window: Window) -> Ticket:
    return Ticket([(state, RESERVED, state.start)], [(window, Entry(0.0, 500))])


def _one(store: Store, sql: str) -> Any:
    return store.execute(sql).fetchone()[0]


def _event(event_id: str, cost: str) -> Event:
    return make_event(id=event_id, tenant="acme", cost=Decimal(cost), input_tokens=12,
                      output_tokens=30)


def _record(location: Any, tmp_path: Path, *appends: tuple[Event, Any]) -> None:
    """Append events through the ledger, each with the statements to commit along."""
    async def run() -> None:
        ledger = open_ledger(location, load_signer(tmp_path / "key.pem"))
        ledger.start()
        try:
            for event, along in appends:
                await ledger.append(event, along)
        finally:
            await ledger.close()
    asyncio.run(run())


@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_a_request_settles_in_the_transaction_that_records_it(store_location, tmp_path):
    """Its hold goes, its cost is spent, its rate entry becomes its tokens: with the event,
    never without it (an event the store refuses takes its settling down with it)."""
    with open_store(store_location, create=True) as store:
        guard, window = SharedGuard(store, hold_seconds=600), Window(LIMIT)
        state = _state(store)
        ticket, event_id = _ticket(state, window), new_event_id()
        asyncio.run(guard.reserve(ticket, event_id))
        assert _one(store, "SELECT COUNT(*) FROM budget_holds") == 1
        assert _one(store, "SELECT requests || ' ' || tokens FROM rate_seconds") == "1 500"
        settling = guard.settling(ticket, _event(event_id, "0.25"), [state])
        taken = new_event_id()
        _record(store_location, tmp_path, (_event(taken, "0.25"), ()))
        with pytest.raises(LedgerError):  # the store refuses the event (its id is taken)...
            _record(store_location, tmp_path, (_event(taken, "0.25"), settling))
        assert _one(store, "SELECT COUNT(*) FROM budget_holds") == 1  # ...and its settling
        assert Decimal(_one(store, "SELECT spent FROM budget_spend")) == 0
        _record(store_location, tmp_path, (_event(event_id, "0.25"), settling))
        assert Decimal(_one(store, "SELECT spent FROM budget_spend")) == Decimal("0.25")
        assert _one(store, "SELECT COUNT(*) FROM budget_holds") == 0
        assert _one(store, "SELECT requests || ' ' || tokens FROM rate_seconds") == "1 42"


@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_holds_of_a_process_that_died_expire_and_free_the_budget(store_location):
    """A process reserved 0.90 of 1.00 and died: while its hold lives, nothing more fits;
    once expired, the hold is gone and the budget is free again (nothing was recorded)."""
    with open_store(store_location, create=True) as store:
        state, window = _state(store), Window(LIMIT)
        dying = SharedGuard(store, hold_seconds=0.5)
        big = Ticket([(state, Decimal("0.90"), state.start)])
        asyncio.run(dying.reserve(big, new_event_id()))
        alive = SharedGuard(store, hold_seconds=600)
        with pytest.raises(PolicyError) as refused:
            asyncio.run(alive.reserve(_ticket(state, window), new_event_id()))
        assert refused.value.status == 402 and "than the 0.1 left" in refused.value.message
        expires = _one(store, "SELECT expires FROM budget_holds")
        while datetime.now(UTC).timestamp() <= expires:  # until the hold's own expiry
            asyncio.run(asyncio.sleep(0.05))
        asyncio.run(alive.reserve(_ticket(state, window), new_event_id()))
        assert _one(store, "SELECT COUNT(*) FROM budget_holds") == 1  # only the new one
        assert Decimal(_one(store, "SELECT spent FROM budget_spend")) == 0


@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_a_request_not_recorded_releases_its_holds_and_counts_what_it_took(store_location):
    """The ledger failed after the provider answered: the spend still counts (tokens may
    have been delivered); a request that never reached a provider spends nothing."""
    with open_store(store_location, create=True) as store:
        guard, window = SharedGuard(store, hold_seconds=600), Window(LIMIT)
        state = _state(store)
        answered, cancelled = _ticket(state, window), _ticket(state, window)
        asyncio.run(guard.reserve(answered, new_event_id()))
        asyncio.run(guard.reserve(cancelled, new_event_id()))
        asyncio.run(guard.release(answered, _event(new_event_id(), "0.25"), [state]))
        asyncio.run(guard.release(cancelled, None))
        asyncio.run(guard.release(cancelled, None))  # twice: nothing more
        assert Decimal(_one(store, "SELECT spent FROM budget_spend")) == Decimal("0.25")
        assert _one(store, "SELECT COUNT(*) FROM budget_holds") == 0
        (requests, tokens), = store.execute("SELECT SUM(requests), SUM(tokens) FROM rate_seconds")
        assert (requests, tokens) == (2, 42)  # each counted; one used 42 tokens, one none


@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_a_rate_limits_minute_is_shared_by_every_process(store_location):
    """Two processes (two connections) under one limit of 3 requests a minute: the fourth
    request is refused whichever process takes it, with a Retry-After within the minute."""
    rpm = Limit("rpm-acme", Scope("tenant", "acme"), rpm=3, tpm=None)
    with open_store(store_location, create=True) as first, open_store(store_location) as other:
        guards = [SharedGuard(first, hold_seconds=600), SharedGuard(other, hold_seconds=600)]
        windows = [Window(rpm), Window(rpm)]  # each process's own (local) window

        def request(i: int) -> None:
            ticket = Ticket([], [(windows[i % 2], Entry(0.0, 10))])
            asyncio.run(guards[i % 2].reserve(ticket, new_event_id()))

        for i in range(3):
            request(i)
        for i in (3, 4):
            with pytest.raises(PolicyError) as refused:
                request(i)
            assert refused.value.status == 429
            assert refused.value.retry_after is not None
            assert 1 <= refused.value.retry_after <= 61
        assert _one(first, "SELECT SUM(requests) FROM rate_seconds") == 3


@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_a_period_started_while_requests_are_recorded_counts_each_of_them_once(
        store_location, tmp_path):
    """Requests admitted before their process took a budget up hold nothing on it, yet the
    budget covers them when they settle: while they are recorded, another process starts
    the budget's period from the ledger. Each event is counted once: in the ledger's sum, or
    added when it settles; and only in the period holding its time."""
    yesterday = rfc3339(datetime.now(UTC) - timedelta(days=1))
    with open_store(store_location, create=True) as store, \
            open_store(store_location) as other:
        state = _state(store)
        recording, starting = SharedGuard(store, hold_seconds=600), SharedGuard(other, 600)

        async def run() -> list[Event]:
            ledger = open_ledger(store_location, load_signer(tmp_path / "key.pem"))
            ledger.start()
            events = [_event(new_event_id(), "0.001") for _ in range(300)]
            events[::7] = [replace(e, time=yesterday) for e in events[::7]]

            async def record(event: Event) -> None:
                await ledger.append(event, recording.settling(Ticket(), event, [state]))
            try:
                first = asyncio.gather(*(record(e) for e in events[:150]))
                await asyncio.sleep(0)  # the first appends are under way
                await starting.reserve(Ticket([(state, Decimal("0.01"), state.start)]),
                                       new_event_id())
                await first
                await asyncio.gather(*(record(e) for e in events[150:]))
            finally:
                await ledger.close()
            return events

        events = asyncio.run(run())
        today = sum(Decimal(e.cost or 0) for e in events if e.time != yesterday)
        assert Decimal(_one(store, "SELECT spent FROM budget_spend")) == today
        assert _one(store, "SELECT COUNT(*) FROM budget_spend") == 1  # yesterday never began


@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_a_running_request_keeps_its_hold_however_long_it_runs(store_location):
    """A stream longer than a hold's life: its process renews the hold, so another process
    can neither sweep it nor spend what it holds; once its process stops renewing (it died),
    the hold expires."""
    with open_store(store_location, create=True) as store, \
            open_store(store_location) as other:
        state = _state(store)
        running, another = SharedGuard(store, hold_seconds=0.4), SharedGuard(other, 600)

        async def run() -> None:
            await running.reserve(Ticket([(state, Decimal("0.90"), state.start)]),
                                  new_event_id())
            renewing = asyncio.create_task(running.renew_forever())
            first_expiry = _one(other, "SELECT expires FROM budget_holds")
            while datetime.now(UTC).timestamp() <= first_expiry + 0.4:
                await asyncio.sleep(0.05)  # past its first life, and a renewal's worth more
            with pytest.raises(PolicyError):  # 0.90 of 1.00 still held
                await another.reserve(_ticket(state, Window(LIMIT)), new_event_id())
            renewing.cancel()  # the process died
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            expiry = _one(other, "SELECT expires FROM budget_holds")
            assert expiry > first_expiry
            while datetime.now(UTC).timestamp() <= expiry:
                await asyncio.sleep(0.05)
            await another.reserve(_ticket(state, Window(LIMIT)), new_event_id())

        asyncio.run(run())


@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_requests_reserving_at_once_share_what_is_left_exactly(store_location):
    """25 requests of one process ask at once (they go in a few transactions together):
    a budget with room for 10 admits exactly 10, a limit of 7 requests a minute exactly 7,
    and each refused request learns why."""
    rpm = Limit("rpm-acme", Scope("tenant", "acme"), rpm=7, tpm=None)
    with open_store(store_location, create=True) as store:
        guard, state = SharedGuard(store, hold_seconds=600), _state(store)

        async def ask(ticket: Ticket) -> int:
            try:
                await guard.reserve(ticket, new_event_id())
            except PolicyError as refused:
                return refused.status
            return 200

        async def run(tickets: list[Ticket]) -> list[int]:
            return await asyncio.gather(*(ask(t) for t in tickets))

        budgeted = asyncio.run(run([Ticket([(state, Decimal("0.10"), state.start)])
                                    for _ in range(25)]))
        assert sorted(budgeted) == [200] * 10 + [402] * 15
        assert _one(store, "SELECT COUNT(*) FROM budget_holds") == 10
        window = Window(rpm)
        limited = asyncio.run(run([Ticket([], [(window, Entry(0.0, 10))]) for _ in range(25)]))
        assert sorted(limited) == [200] * 7 + [429] * 18
        assert _one(store, "SELECT SUM(requests) FROM rate_seconds") == 7


@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_a_request_cancelled_while_it_reserves_gives_its_hold_back(store_location):
    """The client left while its request waited for the store: whatever the store reserved
    for it is released, at once, not when the hold expires."""
    with open_store(store_location, create=True) as store:
        guard, state = SharedGuard(store, hold_seconds=600), _state(store)

        async def run() -> None:
            asking = [asyncio.create_task(guard.reserve(
                Ticket([(state, Decimal("0.10"), state.start)]), new_event_id()))
                for _ in range(6)]
            await asyncio.sleep(0)  # all are waiting
            for task in asking[::2]:
                task.cancel()
            await asyncio.gather(*asking, return_exceptions=True)
            deadline = time.monotonic() + 10
            while (_one(store, "SELECT COUNT(*) FROM budget_holds") != 3
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.02)  # readiness poll: the releases are under way

        asyncio.run(run())
        assert _one(store, "SELECT COUNT(*) FROM budget_holds") == 3


@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_the_ledger_says_when_what_was_appended_before_is_committed(store_location, tmp_path):
    """A process that takes a budget up sets its spend to the ledger's sum only once what it
    settled before is in the store (`Ledger.committed`): appends still queued then would
    be missing from the sum and never add to it."""
    async def run() -> int:
        ledger = open_ledger(store_location, load_signer(tmp_path / "key.pem"))
        ledger.start()
        try:
            appending = [asyncio.create_task(ledger.append(_event(new_event_id(), "0.001")))
                         for _ in range(200)]
            await asyncio.sleep(0)  # all of them queued
            await ledger.committed()
            with open_store(store_location) as store:
                stored = _one(store, "SELECT COUNT(*) FROM events")
            await asyncio.gather(*appending)
            return stored
        finally:
            await ledger.close()

    assert asyncio.run(run()) == 200
