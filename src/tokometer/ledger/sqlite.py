"""SQLite ledger: events are appended by one writer thread in group commits.

The event loop only enqueues and awaits a future; the thread drains whatever has queued
up, writes it in one transaction (WAL), and then resolves every waiting future at once.
So a request's response can wait until its event is durable, without the loop ever blocking
on disk and without one transaction per request. Checkpoints, which fsync the database file
(tens of ms on some disks), run on a thread of their own: passive ones, which never block the
writer, every second; and, only when sustained load has kept the WAL from restarting for
WAL_LIMIT_BYTES, one that waits for a gap between commits so the WAL can start over.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import queue
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..errors import LedgerError
from ..events import FIELDS, Event, decimal_str
from .schema import INSERT_EVENT, SCHEMA

log = logging.getLogger("tokometer.ledger")

_MAX_BATCH = 2048
_STOP = object()
CHECKPOINT_SECONDS = 1.0
WAL_LIMIT_BYTES = 128 * 1024 * 1024


def open_db(path: Path, *, durability: str = "process") -> sqlite3.Connection:
    """A connection with the schema in place; WAL so readers never block the writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is in the OS once it returns, so a killed process loses nothing;
        # FULL also fsyncs each (group) commit, for power loss.
        conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'power' else 'NORMAL'}")
        conn.executescript(SCHEMA)
    except sqlite3.Error as e:
        raise LedgerError(f"cannot open the store at {path}: {e}") from e
    conn.create_aggregate("decimal_sum", 1, _DecimalSum)
    return conn


class _DecimalSum:
    """SUM over decimal strings without passing through float."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total = (self.total or Decimal(0)) + Decimal(value)

    def finalize(self) -> str | None:
        return None if self.total is None else decimal_str(self.total)


_ALL_FIELDS = operator.attrgetter(*FIELDS)
_DECIMAL_COLUMNS = [FIELDS.index(name) for name in ("cost", "energy_wh", "co2e_g")]
_STREAM_COLUMN = FIELDS.index("stream")


def event_row(event: Event) -> list[Any]:
    """The event as column values: decimals as strings, booleans as integers."""
    row = list(_ALL_FIELDS(event))
    for i in _DECIMAL_COLUMNS:
        if row[i] is not None:
            row[i] = decimal_str(row[i])
    row[_STREAM_COLUMN] = int(row[_STREAM_COLUMN])
    return row


class SQLiteLedger:
    def __init__(self, path: Path, *, durability: str = "process"):
        self.path = path
        self._conn = open_db(path, durability=durability)
        self._conn.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint_forever
        self._conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for target, name in ((self._write_forever, "ledger-writer"),
                             (self._checkpoint_forever, "ledger-checkpoint")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    async def append(self, event: Event) -> None:
        """Returns once the event is committed; raises LedgerError if it could not be."""
        assert self._loop is not None, "SQLiteLedger.start() was not called"
        done = self._loop.create_future()
        self._queue.put((event_row(event), done))
        await done

    async def close(self) -> None:
        if self._threads:
            self._queue.put(_STOP)
            self._stopping.set()
            for thread in self._threads:
                await asyncio.to_thread(thread.join)
            self._threads = []
        self._conn.close()

    def _checkpoint_forever(self) -> None:
        """Copy the WAL into the database now and then, on a connection of its own."""
        conn = open_db(self.path)
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        try:
            while not self._stopping.wait(CHECKPOINT_SECONDS):
                try:
                    _, wal_pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if wal_pages * page_size > WAL_LIMIT_BYTES:
                        conn.execute("PRAGMA wal_checkpoint(RESTART)")
                except sqlite3.Error as e:
                    log.warning("WAL checkpoint failed (will retry): %s", e)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def _write_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            items = [item for item in batch if item is not _STOP]
            if items:
                self._commit(items)
            if stop:
                return

    def _commit(self, items: list[tuple[list[Any], asyncio.Future[None]]]) -> None:
        try:
            self._insert([row for row, _ in items])
        except sqlite3.Error as e:
            if len(items) > 1:  # one bad row must not sink its batch: retry them one by one
                for item in items:
                    self._commit([item])
                return
            log.error("could not record event %s: %s", items[0][0][0], e)
            self._settle(items, LedgerError(f"could not record the event: {e}"))
            return
        self._settle(items, None)

    def _insert(self, rows: list[list[Any]]) -> None:
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(INSERT_EVENT, rows)

    def _settle(self, items: list[tuple[list[Any], asyncio.Future[None]]],
                error: Exception | None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, [f for _, f in items], error)


def _resolve(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    for f in futures:
        if not f.done():
            if error is None:
                f.set_result(None)
            else:
                f.set_exception(error)
