"""Attacks on issue 13's latest mends (the third attack round): the shared guard's hold
renewal, write_along's lock order, the SQLite writers' queue and the provider-input mends.
Each failing test names what breaks and why it matters; probes say they are probes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

import test_attack_batch
import test_replicas
from conftest import make_event, start_gateway, stop_gateway, wait_for_event
from scripted_upstream import Script
from test_attack_batch import chat_toml, streamed
from tokometer.config import Budget, PostgresURL, Scope
from tokometer.errors import LedgerError
from tokometer.events import new_event_id
from tokometer.ledger import open_store
from tokometer.ledger.connect import open_sqlite
from tokometer.policy import Ticket
from tokometer.policy.budgets import BudgetState, load_states
from tokometer.policy.shared import SharedGuard

sharing = test_replicas.sharing  # the fixture: three replicas, or two workers, on one store
plain = test_attack_batch.plain  # one gateway on SQLite over the scripted provider


def _answer(**fields: Any) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"},
         "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, **fields}


# --- 1. provider input the mends now let through ----------------------------------------------

@pytest.mark.parametrize("field", ["model", "finish_reason", "service_tier"])
def test_a_lone_surrogate_in_a_provider_label_does_not_lose_the_event(plain, scripted, field):
    """usage.body.parse_json now falls back to Python's json for what orjson refuses, so a
    lone surrogate escape ("\\ud83d") is read, not only in the answer's text (which the mend
    meant) but in the labels the event stores: `model`, `finish_reason`, `service_tier`.
    relay.py passes them to the event as str holding a lone surrogate (call.clip drops NULs,
    not surrogates), and the store cannot encode such a str (sqlite3 and psycopg encode
    UTF-8 strictly): the ledger writer's append fails, so the provider's billed answer is a
    5xx to the client and no event is recorded. Nothing lost: the event must be stored,
    the bad character replaced or dropped."""
    tag = f"surrogate-{field}"
    fields: dict[str, Any] = {"model": "m\ud83d"} if field == "model" else (
        {"service_tier": "default\ud83d"} if field == "service_tier" else {})
    body = _answer(**fields)
    if field == "finish_reason":
        body["choices"][0]["finish_reason"] = "stop\ud83d"
    scripted.scripts[tag] = Script(body=body)
    r = plain.chat("chat", user=tag)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    event = wait_for_event(plain, r.headers["x-tokometer-event-id"])
    assert (event["input_tokens"], event["output_tokens"]) == (10, 5)


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_a_deeply_nested_answer_is_a_recorded_502_not_a_500(plain, scripted):
    """A provider's (broken or hostile) JSON answer nested deeper than orjson's limit (1024)
    makes parse_json fall back to Python's json, which raises RecursionError (not a
    ValueError) past about a thousand levels: relay.py:56-58 catches only ValueError, so
    the exception escapes the pipeline. Before the mend it was a 502 upstream_malformed,
    recorded; now the client gets a bare 500 and no event says a provider answered. A
    malformed answer must stay a recorded 502."""
    tag = "deep-body"
    scripted.scripts[tag] = Script(raw=b'{"usage":{"prompt_tokens":1},"x":' + _deep(50_000)
                                   + b"}")
    r = plain.chat("chat", user=tag)
    assert r.status_code == 502, (r.status_code, r.text[:300])
    event = wait_for_event(plain, r.headers["x-tokometer-event-id"])
    assert event["status"] == 502


def test_a_deeply_nested_stream_event_does_not_cut_the_stream(plain, scripted):
    """A streamed answer whose usage chunk holds something nested deeper than orjson allows:
    usage/stream.py's `_object` (which must turn a provider's bad event into {}, "a bad event
    must not stop the stream or the reading") catches only ValueError, and Python's json
    raises RecursionError. The tap's exception escapes the relay: the client's stream is cut
    without its end and the tokens it received are never recorded (no event, budgets
    unsettled). The stream must end normally and its event be recorded."""
    tag = "deep-stream"
    scripted.scripts[tag] = Script(events=[
        b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":'
        b'[{"index":0,"delta":{"content":"hello"},"finish_reason":"stop"}]}',
        b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6,"x":'
        + _deep(50_000) + b"}}",
        b"data: [DONE]"])
    event_id, received = streamed(plain, tag)
    assert b"[DONE]" in received, received[-300:]
    event = wait_for_event(plain, event_id)
    assert event["status"] == 200


# --- 2. hold renewal racing a settling (PostgreSQL) -------------------------------------------

ACME_DAY = Budget("b-acme3", Scope("tenant", "acme"), Decimal("1.00"), "USD", "day")


def _state(store: Any, budget: Budget = ACME_DAY) -> BudgetState:
    return load_states(store, [budget], datetime.now(UTC))[budget.id]


def _poll(condition: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} never came about"
        time.sleep(0.01)  # readiness poll of other connections


def _race(test: Any, transactions: list[Callable[[], None]], what: str) -> None:
    """Run the transactions at once, each paused after its first row (the triggers wait on
    advisory lock 4242, held here) until all of them are, then let them go on."""
    test.execute("SELECT pg_advisory_lock(4242)")
    threads = [threading.Thread(target=t) for t in transactions]
    for thread in threads:
        thread.start()
    try:
        _poll(lambda: _lock_waits(test) >= len(threads), what)
    finally:
        test.execute("SELECT pg_advisory_unlock(4242)")
        for thread in threads:
            thread.join(20)


def _lock_waits(store: Any) -> int:
    return int(store.execute("SELECT COUNT(*) FROM pg_locks WHERE NOT granted").fetchone()[0])


def test_a_renewal_racing_its_requests_settling_does_not_bring_the_hold_back(postgres):
    """A long request's process renews its holds (shared.py `_renew`, every quarter of
    HOLD_SECONDS) at the moment the ledger's transaction that records the request and
    deletes its hold is under way. The renewal's upsert is guarded by `NOT EXISTS (SELECT 1
    FROM events WHERE id = ?)`, but on PostgreSQL (READ COMMITTED) that guard reads the
    statement's snapshot, taken before the ledger commits; the INSERT then meets the hold
    row the ledger deleted, waits for that transaction, and once it commits finds no
    conflict and inserts the hold again. The settled request's hold is resurrected: nobody
    renews or releases it (the request has left `_live`), so for HOLD_SECONDS (a minute)
    every process counts a reservation nobody holds, and refuses requests the budget has
    room for (false 402s near the limit, on every replica). The hold must stay gone once
    its request is recorded."""
    from tokometer.ledger.derive import LOG_LOCK, insert_leaves
    from tokometer.ledger.log import leaf_count
    from tokometer.ledger.rows import event_row
    from tokometer.ledger.writer import write_along

    url = PostgresURL(postgres.new_database())
    open_store(url, create=True).close()
    with open_store(url) as store, open_store(url) as ledger, open_store(url) as watcher:
        guard, state = SharedGuard(store, hold_seconds=600), _state(store)
        ticket = Ticket([(state, Decimal("0.10"), state.start)])
        event = make_event(tenant="acme", cost=Decimal("0.05"))
        asyncio.run(guard.reserve(ticket, event.id))
        live = dict(guard._live)  # what the renewal reads when it starts
        settling = guard.settling(ticket, event, [state])
        written, commit = threading.Event(), threading.Event()
        failures: list[BaseException] = []

        def record() -> None:  # as LogWriter._write, held open until the renewal waits
            try:
                with ledger.transaction():
                    ledger.lock(LOG_LOCK)
                    insert_leaves(ledger, [event_row(event)], leaf_count(ledger))
                    write_along(ledger, settling)
                    written.set()
                    commit.wait(20)
            except BaseException as e:
                failures.append(e)
                written.set()

        def renew() -> None:
            try:
                guard._renew(live)
            except BaseException as e:
                failures.append(e)

        recording = threading.Thread(target=record)
        recording.start()
        assert written.wait(10)
        renewing = threading.Thread(target=renew)
        renewing.start()
        try:
            _poll(lambda: _lock_waits(watcher) > 0 or not renewing.is_alive(),
                  "the renewal waiting on the ledger's transaction")
        finally:
            commit.set()
            recording.join(20)
            renewing.join(20)
        assert not failures, failures
        holds = watcher.execute("SELECT amount FROM budget_holds WHERE id = ?",
                                (event.id,)).fetchall()
        assert holds == [], f"the recorded request's hold came back: {holds}"


# --- 3. write_along's one lock order (PostgreSQL) ---------------------------------------------

def test_two_settlings_of_a_usd_and_a_tokens_budget_do_not_deadlock(postgres):
    """write_along sorts each statement's rows "in their parameters' order" so that two
    transactions updating the same rows lock them in one order (writer.py:206-215). But
    `_ADD_SPEND` (shared.py) takes the amount first and the budget second: its rows are
    sorted by amount, as strings. A tenant with a USD budget and a tokens budget: request
    R1 (42 tokens, $0.1) adds "0.1" to the USD row and "42" to the tokens row, USD first;
    R2 (3 tokens, $5) adds "3" and "5", tokens first. Two transactions settling them lock
    the two rows in opposite orders. The ledger's settlings serialise on the log's lock,
    but SharedGuard.release (a request whose append failed: tokens delivered, spend added
    without the log's lock) does not: it and a ledger batch deadlock, PostgreSQL aborts
    one, and if it is the release its spend is lost (logged, never retried): the budget
    under-counts what was delivered. Here a trigger pauses each transaction after its
    first row (fault injection) so the interleaving is certain; both must commit."""
    from tokometer.ledger.writer import write_along

    tokens = Budget("a-tokens", Scope("tenant", "acme"), Decimal(10**9), "tokens", "total")
    usd = Budget("b-usd", Scope("tenant", "acme"), Decimal(1000), "USD", "total")
    url = PostgresURL(postgres.new_database())
    open_store(url, create=True).close()
    with open_store(url) as one, open_store(url) as two, open_store(url) as test:
        guard = SharedGuard(test, hold_seconds=600)
        covering = list(load_states(test, [tokens, usd], datetime.now(UTC)).values())
        with test.transaction():
            test.executemany("INSERT INTO budget_spend (budget_id, period_start, spent) "
                             "VALUES (?, '', '0')", [("a-tokens",), ("b-usd",)])
            test.execute("CREATE FUNCTION pause_after_update() RETURNS trigger AS $$ BEGIN "
                         "PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$ "
                         "LANGUAGE plpgsql")
            test.execute("CREATE TRIGGER pause AFTER UPDATE ON budget_spend FOR EACH ROW "
                         "EXECUTE FUNCTION pause_after_update()")
        r1 = guard.settling(Ticket(), make_event(tenant="acme", input_tokens=12,
                                                 output_tokens=30, cost=Decimal("0.1")),
                            covering)
        r2 = guard.settling(Ticket(), make_event(tenant="acme", input_tokens=1,
                                                 output_tokens=2, cost=Decimal("5")), covering)
        failures: list[BaseException] = []

        def settle(store: Any, writes: Any) -> None:
            try:
                with store.transaction():
                    write_along(store, writes)
            except BaseException as e:
                failures.append(e)

        _race(test, [lambda: settle(one, r1), lambda: settle(two, r2)],
              "both settlings holding their first row")
        assert not failures, f"a settling failed: {failures}"
        spent = dict(test.execute("SELECT budget_id, spent FROM budget_spend").fetchall())
        assert (Decimal(spent["a-tokens"]), Decimal(spent["b-usd"])) == (45, Decimal("5.1"))


# --- 4. the SQLite writers' queue -------------------------------------------------------------

def test_a_writer_stuck_holding_the_queue_is_a_timeout_not_a_hang(tmp_path):
    """SQLiteStore.transaction (connect.py:84-98) queues on flock(<store>-writers, LOCK_EX)
    before BEGIN IMMEDIATE, and that wait has no bound: a process that stops while holding
    it (SIGSTOP, a debugger, a CLI command at a prompt or paused in a pipe, a worker stuck
    in a slow disk) makes every other writer of the store wait forever. Before the queue,
    SQLite's busy timeout (30 s, `timeout=` in open_sqlite) turned the wait into an error:
    the gateway answered 503s and recovered once the holder went; now the ledger writer
    thread and every request behind it hang with no error at all. The wait for the queue
    must end as SQLite's own does, after the connection's busy timeout (1 s here)."""
    path = tmp_path / "tokometer.db"
    open_sqlite(path, create=True).close()
    stuck = os.open(str(path) + "-writers", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(stuck, fcntl.LOCK_EX)  # another writer, stopped mid-transaction
    store = open_sqlite(path)
    store.conn.execute("PRAGMA busy_timeout = 1000")
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            with store.transaction():
                store.execute("INSERT INTO ledger_meta (key, value) VALUES ('probe', '1')")
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        writer.join(5)  # five times the busy timeout
        assert not writer.is_alive(), "the writer still waits for the queue, with no bound"
        assert isinstance(outcome[0], LedgerError | sqlite3.Error), outcome
    finally:
        fcntl.flock(stuck, fcntl.LOCK_UN)
        os.close(stuck)
        writer.join(10)
        store.close()


# --- 5. a stop with a stream in flight ---------------------------------------------------------

def test_a_stream_in_flight_when_the_gateway_stops_is_recorded(scripted, tmp_path):
    """SIGTERM to `tokometer serve` while a stream is relayed whose provider keeps it open
    (a long answer): granian waits `stop_timeout` (3 s here) and then kills the worker
    (serve.py:126, `workers_kill_timeout`). The client has received tokens, but the worker
    dies before the relay records anything: no event, no spend settled (on PostgreSQL its
    holds stay a minute). Every rolling restart under long streams leaves readings out of
    the meter, the tokens delivered and billed by the provider but never charged. Before
    the kill the gateway must end the stream (an error event) and record what reached the
    client, as it does for a provider that cuts a stream."""
    linger = threading.Event()
    tag = "in-flight-at-stop"
    scripted.scripts[tag] = Script(events=[
        b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":'
        b'[{"index":0,"delta":{"content":"hello there"},"finish_reason":null}]}'],
        linger=linger)
    body = chat_toml(scripted, "stop_timeout = 3\n")
    gw = start_gateway(tmp_path / "stop", body)
    try:
        request = {"model": "chat", "stream": True, "user": tag,
                   "messages": [{"role": "user", "content": "hi"}]}
        with gw.stream("/v1/chat/completions", request) as r:
            assert r.status_code == 200
            event_id = r.headers["x-tokometer-event-id"]
            chunks = r.iter_bytes()
            assert b"hello there" in next(chunks)  # the client has its first tokens
            gw.process.send_signal(signal.SIGTERM)
            gw.process.wait(20)  # at most stop_timeout, then the kill
            with contextlib.suppress(httpx.HTTPError):
                for _ in chunks:
                    pass
    finally:
        linger.set()
        stop_gateway(gw)
    with open_store(gw.store) as store:
        found = store.execute("SELECT status FROM events WHERE id = ?",
                              (event_id,)).fetchall()
    assert found, "the stream in flight at the stop left no event"


# --- 6. _USED's UPDATE ... FROM on both stores (probe) ----------------------------------------

@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_used_tokens_settle_every_shape_of_row(store_location):
    """(Probe.) `_USED` (shared.py) as an UPDATE ... FROM (SELECT ? AS ...), through
    write_along's sorted executemany: a negative delta (a request that used less than it
    reserved), a second already pruned (no row: nothing happens, nothing fails), a limit key
    with quotes, a percent sign, a placeholder-like `?`/`%s` and non-ASCII text, and a count
    near MAX_TOKENS; only the named rows change."""
    from tokometer.ledger.writer import write_along
    from tokometer.policy.shared import _USED
    from tokometer.usage.dialects import MAX_TOKENS

    odd = "limit:tenant='a''b' %s ? %(x)s é\u202e"
    with open_store(store_location, create=True) as store:
        with store.transaction():
            store.executemany("INSERT INTO rate_seconds (limit_name, second, requests, tokens) "
                              "VALUES (?, ?, ?, ?)",
                              [(odd, 100, 1, 500), (odd, 101, 1, 7), ("plain", 100, 1, 500)])
        with store.transaction():
            write_along(store, [(_USED, (odd, 100, -480)), (_USED, (odd, 99, 5)),
                                (_USED, (odd, 101, MAX_TOKENS)), (_USED, (odd, 100, 3))])
        rows = sorted(store.execute("SELECT limit_name, second, requests, tokens "
                                    "FROM rate_seconds").fetchall())
    assert rows == sorted([(odd, 100, 1, 23), (odd, 101, 1, 7 + MAX_TOKENS),
                           ("plain", 100, 1, 500)])


# --- 7. a recording cancelled while its append is queued --------------------------------------

def test_a_recording_cancelled_while_its_append_is_queued_settles_once(tmp_path):
    """pipeline._record queues the event with its settling (`ledger.append(event,
    shared.settling(...))`) and, in `finally`, calls `shared.release(ticket, event)` unless
    `settled()` ran. If the task is cancelled while it awaits the append (relay.py says a
    cancel from outside is the server shutting down), the append is not withdrawn: the
    writer still commits the event with its settling, and the release settles it a second
    time in a transaction of its own (its hold, its spend, its tokens). budget_spend then
    counts the request twice: every process sharing the store refuses requests the budget
    has room for until a process restarts and recounts. A request must settle once.
    Here the writers' queue is held (another process committing) so the append is still
    queued when the cancel comes."""
    from tokometer.gateway import pipeline
    from tokometer.ledger import open_ledger
    from tokometer.ledger.signer import load_signer

    path = tmp_path / "tokometer.db"
    open_sqlite(path, create=True).close()

    async def run(store: Any) -> None:
        ledger = open_ledger(path, load_signer(tmp_path / "key.pem"))
        ledger.start()
        try:
            await ledger.append(make_event(tenant="globex"))  # the writer is ready
            guard, state = SharedGuard(store, hold_seconds=600), _state(store)
            ticket = Ticket([(state, Decimal("0.10"), state.start)])
            event = make_event(tenant="acme", cost=Decimal("0.05"))
            await guard.reserve(ticket, event.id)

            async def metered(*_: Any) -> Any:
                return event

            deps = SimpleNamespace(meter=SimpleNamespace(event=metered),
                                   metrics=SimpleNamespace(observe=lambda _: None),
                                   guard=SimpleNamespace(budgets_for=lambda _: [state]),
                                   ledger=ledger, shared=guard, registry=None)
            queue = os.open(str(path) + "-writers", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(queue, fcntl.LOCK_EX)  # another process is committing
            try:
                recording = asyncio.create_task(pipeline._record(
                    SimpleNamespace(consumer=None), None, deps, ticket, event.id))
                await asyncio.sleep(0)  # it ran to its append's await: the event is queued
                recording.cancel()
            finally:
                fcntl.flock(queue, fcntl.LOCK_UN)
                os.close(queue)
            with contextlib.suppress(asyncio.CancelledError):
                await recording
            await ledger.committed()
        finally:
            await ledger.close()

    with open_sqlite(path) as store:
        asyncio.run(run(store))
        spent = store.execute("SELECT spent FROM budget_spend WHERE budget_id = ?",
                              (ACME_DAY.id,)).fetchone()[0]
        recorded = store.execute("SELECT COUNT(*) FROM events WHERE tenant = 'acme'"
                                 ).fetchone()[0]
    assert (recorded, Decimal(spent)) == (1, Decimal("0.05")), (
        f"{recorded} event(s) of acme recorded, budget_spend counts {spent}")


@pytest.mark.skipif(os.geteuid() != 0, reason="root writing a store another user owns")
def test_the_writers_queue_made_by_root_belongs_to_the_stores_owner(tmp_path):
    """The gateway runs as a service user who owns the store; an operator runs a writing
    CLI command (`tokometer keys create`, `budgets set`) as root before the gateway's first
    write (or after a restore that brought back only the .db file). The first writer makes
    `<store>-writers` (connect.py:104-110) owned by root, mode 0600, and from then on the
    gateway cannot open it: every transaction is a LedgerError ("cannot write to the store")
    and nothing is recorded. SQLite itself guards against this: run as root, it gives the
    -wal and -shm files it makes the database file's owner (shown below). The queue's file
    must belong to the store's owner too."""
    path = tmp_path / "tokometer.db"
    open_sqlite(path, create=True).close()
    service = 65534  # nobody: the gateway's user
    os.chown(path, service, service)
    os.chown(tmp_path, service, service)
    with open_sqlite(path) as store:  # root, writing first
        with store.transaction():
            store.execute("INSERT INTO ledger_meta (key, value) VALUES ('by-root', 1)")
        owners = {suffix: Path(f"{path}{suffix}").stat().st_uid
                  for suffix in ("-wal", "-shm", "-writers")}
    assert owners == {"-wal": service, "-shm": service, "-writers": service}, owners


def test_a_request_that_ends_within_stop_timeout_is_answered_and_recorded(scripted, tmp_path):
    """(Probe.) SIGTERM to `tokometer serve` while a non-streamed request waits on its
    provider; the provider answers once the stop has begun, well within `stop_timeout`
    (10 s): the client gets its 200 and the event is in the store once the server is gone
    (the worker drains before its lifespan shutdown closes the ledger)."""
    hold = threading.Event()
    tag = "answered-during-stop"
    scripted.scripts[tag] = Script(body=_answer(), hold=hold)
    body = chat_toml(scripted, "stop_timeout = 10\n")
    gw = start_gateway(tmp_path / "drain", body)
    log = tmp_path / "drain" / "gateway.log"
    answers: list[httpx.Response | BaseException] = []

    def ask() -> None:
        try:
            answers.append(gw.chat("chat", user=tag))
        except BaseException as e:
            answers.append(e)

    client = threading.Thread(target=ask)
    try:
        client.start()
        _poll(lambda: any(a.get("user") == tag for a in scripted.arrived),
              "the request reaching the provider")
        gw.process.send_signal(signal.SIGTERM)
        _poll(lambda: b"Stopping worker" in log.read_bytes(), "the stop beginning")
        hold.set()
        client.join(20)
        gw.process.wait(20)
    finally:
        hold.set()
        stop_gateway(gw)
    (answer,) = answers
    assert isinstance(answer, httpx.Response) and answer.status_code == 200, answer
    with open_store(gw.store) as store:
        found = store.execute("SELECT status FROM events WHERE id = ?",
                              (answer.headers["x-tokometer-event-id"],)).fetchall()
    assert found == [(200,)]


def test_a_reservation_pruning_two_limits_and_an_old_requests_settling_do_not_deadlock(
        postgres):
    """A request with two rate limits (say its tenant's and its key's) that ran a minute
    settles: `_USED` updates its second's row of each limit, sorted by key (write_along).
    Meanwhile a reservation of another request under the same two limits prunes each
    limit's seconds older than the window (`_ask_limit`, shared.py:317-323), one limit after
    the other in the order of a Python set (`limits`, shared.py:265, 275): hash order, not sorted.
    When that order is the reverse of the keys', the two transactions take the two old rows
    in opposite orders and deadlock; PostgreSQL aborts one: a whole reservation batch then
    fails with a raw DeadlockDetected (500s), or the ledger's batch is retried. Long streams
    under two limits make the window real (the old second is pruned within about a second
    of leaving the window). Here triggers pause each transaction after its first row so the
    interleaving is certain; the reservation must be admitted and the settling committed."""
    from tokometer.config import Limit
    from tokometer.ledger.writer import write_along
    from tokometer.policy.limits import Entry, Window
    from tokometer.policy.shared import _USED

    # Two tenants whose limit keys a set yields in the reverse of their sorted order.
    k1, k2 = next((a, b) for i in range(1000)
                  for a, b in [(f"tenant:a{i}", f"tenant:b{i}")]
                  if [*{k for k in (a, b)}] == [b, a])
    w1, w2 = (Window(Limit(f"rpm-{k}", Scope("tenant", k.split(":")[1]), rpm=1000, tpm=None))
              for k in (k1, k2))
    old = int(time.time()) - 70  # a second that has left every window
    url = PostgresURL(postgres.new_database())
    open_store(url, create=True).close()
    with open_store(url) as reserving, open_store(url) as settling, open_store(url) as test:
        with test.transaction():
            test.executemany("INSERT INTO rate_seconds (limit_name, second, requests, tokens) "
                             "VALUES (?, ?, 1, 10)", [(k1, old), (k2, old)])
            test.execute("CREATE FUNCTION pause_after_row() RETURNS trigger AS $$ BEGIN "
                         "PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$ "
                         "LANGUAGE plpgsql")
            test.execute("CREATE TRIGGER pause AFTER UPDATE OR DELETE ON rate_seconds "
                         "FOR EACH ROW EXECUTE FUNCTION pause_after_row()")
        guard = SharedGuard(reserving, hold_seconds=600)
        failures: list[BaseException] = []

        def reserve() -> None:
            try:
                asyncio.run(guard.reserve(Ticket([], [(w1, Entry(0.0, 10)),
                                                      (w2, Entry(0.0, 10))]), new_event_id()))
            except BaseException as e:
                failures.append(e)

        def settle() -> None:
            try:
                with settling.transaction():
                    write_along(settling, [(_USED, (k1, old, 5)), (_USED, (k2, old, 5))])
            except BaseException as e:
                failures.append(e)

        _race(test, [settle, reserve], "both holding their first old row")
        assert not failures, f"failed: {failures}"


# --- 8. a client's absurd max_tokens under a shared rate limit ---------------------------------

def test_an_absurd_max_tokens_under_a_shared_rpm_limit_is_a_400_not_a_500(sharing):
    """A client asks for `max_tokens` = 2^63 - 1 (orjson reads it as an int; worst_output,
    meter.py:303, bounds it below only) on a key under an RPM-only limit (no TPM to refuse
    it in memory). On processes sharing a store its reservation counts its worst case in
    `rate_seconds.tokens` (shared.py `_try_reserve`), and input + 2^63 - 1 does not fit a
    64-bit integer: SQLite's OverflowError or PostgreSQL's "bigint out of range" escapes as
    a 500, and fails every other request reserved in the same batch with it (`refusals =
    [e] * len(batch)`, shared.py:136): one client makes its neighbours' requests fail. Such
    a bound must be refused up front (400), or clipped, and the store never asked to hold it.
    (The ledger's own counts were bounded at 2^40 by the last mends; this is the request's.)"""
    gateways = sharing('[[limits]]\ntenant = "acme"\nrpm = 1000\n')
    r = gateways[0].chat("metered", max_tokens=2**63 - 1)
    assert r.status_code in (400, 429), (r.status_code, r.text[:300])
    again = gateways[-1].chat("metered", max_tokens=5)
    assert again.status_code == 200, (again.status_code, again.text[:300])


# --- 9. a recount at start against what settling counted --------------------------------------

@pytest.mark.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)
def test_a_process_start_keeps_the_spend_of_a_request_whose_cost_was_unknown(
        store_location, tmp_path):
    """A request reserved $0.10 under a USD budget; its cost could not be worked out when it
    was recorded (cost null: e.g. the provider answered with a model or tier no tariff
    prices), so settling spent the whole reservation, as budgets.taken means to ("a cost the
    meter could not work out spends the whole reservation"). Since the last mends every
    process recounts every budget it takes up at start (sync.py `_recount`, shared.py
    `_recount`), setting the spend to the ledger's `decimal_sum(cost)` (budgets.spent_in),
    in which that request counts nothing. So each worker or replica start (a rolling deploy,
    a respawned worker) wipes such spend from the budget every process shares, and what was
    held back to cover the unknown cost can be spent again. A recount must count what
    settling counted."""
    from tokometer.ledger import open_ledger
    from tokometer.ledger.signer import load_signer

    async def run(store: Any) -> None:
        ledger = open_ledger(store_location, load_signer(tmp_path / "key.pem"))
        ledger.start()
        try:
            guard, state = SharedGuard(store, hold_seconds=600), _state(store)
            ticket = Ticket([(state, Decimal("0.10"), state.start)])
            event = make_event(tenant="acme", cost=None, currency=None)
            await guard.reserve(ticket, event.id)
            await ledger.append(event, guard.settling(ticket, event, [state]))
            guard.settled(ticket)
            settled = _spent(store)
            await guard.recount([ACME_DAY])  # as a process starting does
            assert _spent(store) == settled, (
                f"settling counted {settled}, the recount at a start left {_spent(store)}")
        finally:
            await ledger.close()

    def _spent(store: Any) -> Decimal:
        return Decimal(store.execute("SELECT spent FROM budget_spend WHERE budget_id = ?",
                                     (ACME_DAY.id,)).fetchone()[0])

    open_store(store_location, create=True).close()
    with open_store(store_location) as store:
        asyncio.run(run(store))
