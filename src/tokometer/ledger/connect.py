"""Opening a SQLite store: the file created for its owner only, WAL, decimal SQL functions,
and the schema brought up to date (migrate.py); and the Store protocol over the connection."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..errors import LedgerError
from ..events import decimal_str
from .migrate import migrate

SMALL_CACHE_KIB = 256  # for connections that read a few rows now and then


def open_sqlite(path: Path, *, create: bool = False, durability: str = "process",
                cache_kib: int | None = None) -> SQLiteStore:
    """A connection with the schema in place; WAL so readers never block the writer.

    Only `create=True` makes a missing store (readable by its owner only; SQLite gives its -wal
    and -shm files the same mode); otherwise a missing store is a LedgerError, so reading never
    leaves an empty store behind. `cache_kib` caps the page cache (SQLite's default is 2 MB per
    connection).
    """
    conn = None
    try:
        if not path.exists():
            if not create:
                raise LedgerError(f"there is no store at {path} (server.store in the config): "
                                  "start the gateway once to create it, or check the path")
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # O_EXCL: and never through a symlink
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is in the OS once it returns, so a killed process loses nothing;
        # FULL also fsyncs each (group) commit, for power loss.
        conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'power' else 'NORMAL'}")
        if cache_kib is not None:
            conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        # typeshed's aggregate protocol allows only int values; SQLite passes any value.
        conn.create_aggregate("decimal_sum", 1, _DecimalSum)  # type: ignore[arg-type]
        conn.create_function("decimal_add", 2, _decimal_add, deterministic=True)
        conn.create_function("week_start", 1, _week_start, deterministic=True)
        conn.create_function("epoch_ms", 1, _epoch_ms, deterministic=True)
        store = SQLiteStore(conn, path)
        migrate(store)
    except (sqlite3.Error, OSError) as e:
        if conn is not None:  # a file that is not a store fails after the connection is made
            conn.close()
        raise LedgerError(f"cannot open the store at {path}: {e}") from e
    return store


class SQLiteStore:
    """The Store protocol (store.py) over one SQLite connection; `with` closes it."""

    Error = sqlite3.Error

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None):
        self.conn = conn
        self._path = path  # None: a connection opened elsewhere, whose writers do not queue
        self._queue: int | None = None  # its own descriptor of the writers' queue file

    def execute(self, sql: str,
                params: Sequence[Any] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        return self.conn.executemany(sql, rows)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Any]:
        return iter(self.conn.execute(sql, params))  # sqlite3 steps through rows lazily

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """IMMEDIATE: the write lock is taken at the start, so the transaction never fails
        half-way for want of it. Writers first take turns on a kernel lock (held by a
        connection, gone with its process), tried again within a millisecond: SQLite's own
        wait for its write lock sleeps 1, 2, 5, 10... ms between tries, so writers of
        several processes (serve's workers) idled for a fifth of their time waiting for
        commits of a few hundred microseconds."""
        queue = self._writers_queue()
        if queue is not None:
            self._take_turn(queue)
        try:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                yield
        finally:
            if queue is not None:
                fcntl.flock(queue, fcntl.LOCK_UN)

    def _take_turn(self, queue: int) -> None:
        """The queue's lock, waking within a millisecond of its release; after the
        connection's busy timeout, SQLite's own 'database is locked' (a writer that stopped
        while holding it must not hang the others for ever)."""
        pause, deadline = 0.0001, None
        while True:
            try:
                fcntl.flock(queue, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                now = time.monotonic()
                if deadline is None:
                    (busy_ms,) = self.conn.execute("PRAGMA busy_timeout").fetchone()
                    deadline = now + busy_ms / 1000
                elif now > deadline:
                    raise sqlite3.OperationalError("database is locked (another writer holds "
                                                   "its -writers file)") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.001)

    def _writers_queue(self) -> int | None:
        """The file beside the store that its writers queue on, opened at the first write
        (a store only read needs none); made by root, it is given the store's owner, as
        SQLite gives its -wal and -shm files."""
        if self._queue is None and self._path is not None:
            real = self._path.resolve()
            try:
                self._queue = os.open(real.with_name(real.name + "-writers"),
                                      os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                                      0o600)
                if os.geteuid() == 0:
                    owner = os.stat(real)
                    os.fchown(self._queue, owner.st_uid, owner.st_gid)
            except OSError as e:
                raise LedgerError(f"cannot write to the store at {self._path}: {e}") from e
        return self._queue

    def pipeline(self) -> contextlib.nullcontext[None]:
        """Nothing to gather: SQLite has no round trips."""
        return contextlib.nullcontext()

    def lazy_commit(self) -> None:
        """Nothing to change: the store's `durability` holds for every commit."""

    def lock(self, name: str) -> None:
        """Nothing more to take: a transaction here holds the whole file's write lock."""

    def close(self) -> None:
        self.conn.close()
        if self._queue is not None:
            os.close(self._queue)
            self._queue = None

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _week_start(day: str) -> str:
    """The Monday on or before an ISO date (PostgreSQL's is in postgres.py)."""
    start = date.fromisoformat(day)
    return (start - timedelta(days=start.weekday())).isoformat()


def _epoch_ms(at: str) -> float:
    return datetime.fromisoformat(at).timestamp() * 1000


def _decimal_add(a: str | None, b: str | None) -> str:
    return decimal_str(Decimal(a or 0) + Decimal(b or 0))


class _DecimalSum:
    """SUM over decimal strings without passing through float."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total = (self.total or Decimal(0)) + Decimal(value)

    def finalize(self) -> str | None:
        return None if self.total is None else decimal_str(self.total)
