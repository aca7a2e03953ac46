"""SQLite ledger: events are appended by one writer thread in group commits.

The event loop only enqueues and awaits a future; the thread drains whatever has queued
up, writes it in one transaction (WAL), and then resolves every waiting future at once, so a
response can wait until its event is durable without the loop ever blocking on disk and
without one transaction per request. An event and its Merkle leaf land together in that
commit; the tree nodes above the leaves and the rollups are derived data, written by the same
thread ten times a second (and before every signed tree head) in a transaction of their own,
so the commit a response waits for stays small. A crash in between loses nothing: at the next
start they are derived again from the stored leaves and events, and readers fold a node not
yet stored from the ones below it. The thread signs a tree head every few seconds while events
arrive, and on demand.
Checkpoints, which fsync the database file (tens of ms on some disks), run on a thread of
their own: passive ones, which never block the writer, every second; and, only when sustained
load has kept the WAL from restarting for WAL_LIMIT_BYTES, one that waits for a gap between
commits so the WAL can start over.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LedgerError
from ..events import FIELDS, Event
from .connect import SMALL_CACHE_KIB, open_sqlite
from .derive import LOGGED, ROLLED_UP, fold, grow_log, meta, set_meta, sign_head
from .log import INSERT_NODE, MerkleLog, leaf_count
from .rows import LEAF_COLUMN, event_row, leaf_of
from .schema import INSERT_EVENT

if TYPE_CHECKING:  # cryptography loads where signing happens, not in every CLI command
    from .signer import Signer, TreeHead

log = logging.getLogger("tokometer.ledger")

_MAX_BATCH = 2048
_STOP = object()  # the last message: write what is queued, sign, and end


@dataclass(frozen=True, slots=True)
class _Append:
    """An event's row to commit; `done` resolves once it is durable."""

    row: list[Any]
    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class _Sign:
    """A tree head to sign now; `done` resolves with it."""

    done: asyncio.Future[TreeHead]


CHECKPOINT_SECONDS = 1.0
TREE_HEAD_SECONDS = 2.0  # a signed tree head at least this often while events arrive
# The Merkle log and the rollups catch up with the events this often: in small steps, since
# a step holds the GIL for every event it folds (a second's events at once showed in p99).
DERIVE_SECONDS = 0.1
WAL_LIMIT_BYTES = 128 * 1024 * 1024


class SQLiteLedger:
    def __init__(self, path: Path, signer: Signer, *, durability: str = "process"):
        self.path = path
        self.signer = signer
        self._store = open_sqlite(path, create=True, durability=durability)
        logged = meta(self._store, LOGGED)
        if logged is None:  # a store from before this watermark holds them all; a new one none
            logged = leaf_count(self._store)
            set_meta(self._store, LOGGED, logged)
        self._log = MerkleLog.load(self._store, logged)
        self._signed_size, self._signed_at = -1, 0.0
        self._unlogged: list[bytes] = []  # committed leaves whose tree nodes are not stored yet
        self._unrolled: list[list[Any]] = []  # committed events not yet in the rollups
        self._derived_at = 0.0
        self._store.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint_forever
        self._store.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
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
        self._queue.put(_Append(event_row(event), done))
        await done

    async def sign_now(self) -> TreeHead:
        """A tree head signed over everything committed so far (the latest, if it already is)."""
        assert self._loop is not None, "SQLiteLedger.start() was not called"
        done: asyncio.Future[TreeHead] = self._loop.create_future()
        self._queue.put(_Sign(done))
        return await done

    async def close(self) -> None:
        if self._threads:
            self._queue.put(_STOP)
            self._stopping.set()
            for thread in self._threads:
                await asyncio.to_thread(thread.join)
            self._threads = []
        self._store.close()

    def _checkpoint_forever(self) -> None:
        """Copy the WAL into the database now and then, on a connection of its own."""
        with open_sqlite(self.path, cache_kib=SMALL_CACHE_KIB) as store:  # it only checkpoints
            page_size = store.execute("PRAGMA page_size").fetchone()[0]
            while not self._stopping.wait(CHECKPOINT_SECONDS):
                try:
                    _, wal_pages, _ = store.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if wal_pages * page_size > WAL_LIMIT_BYTES:
                        store.execute("PRAGMA wal_checkpoint(RESTART)")
                except sqlite3.Error as e:
                    log.warning("WAL checkpoint failed (will retry): %s", e)
            store.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _write_forever(self) -> None:
        self._backfill()
        while True:
            try:
                batch = [self._queue.get(timeout=DERIVE_SECONDS)]
            except queue.Empty:
                batch = []
            while 0 < len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(message is _STOP for message in batch)
            signs = [message.done for message in batch if isinstance(message, _Sign)]
            appends = [message for message in batch if isinstance(message, _Append)]
            if appends:
                self._commit(appends)
            sign = signs or stop or time.monotonic() - self._signed_at >= TREE_HEAD_SECONDS
            if sign or time.monotonic() - self._derived_at >= DERIVE_SECONDS:
                self._derive()
            if sign:
                self._sign(signs)
            if stop:
                return

    def _derive(self) -> None:
        """Add the leaves committed since the last time to the Merkle log's tree, and their
        events to the rollups, in one transaction (kept out of the commits responses wait for)."""
        unlogged, unrolled = self._unlogged, self._unrolled
        if unlogged or unrolled:
            try:
                with self._store.transaction():
                    grown = grow_log(self._store, self._log, unlogged)
                    if unrolled:
                        fold(self._store, unrolled)
            except sqlite3.Error as e:
                log.warning("the Merkle log and rollups are behind (will retry): %s", e)
                return
            self._log, self._unlogged, self._unrolled = grown, [], []
        self._derived_at = time.monotonic()

    def _sign(self, waiting: list[asyncio.Future[TreeHead]]) -> None:
        """Sign the current head if it grew (or someone asked), and hand it to those waiting."""
        tree = self._log
        assert self._loop is not None
        if self._unlogged:  # derivation failed: a head now would leave out committed leaves,
            # and, stamped later than a head the CLI signed over them, go backwards
            self._loop.call_soon_threadsafe(
                _resolve, waiting, LedgerError("the Merkle log is behind its events; "
                                               "no tree head is signed until it catches up"))
            return
        try:
            if tree.size != self._signed_size or waiting:
                with self._store.transaction():
                    head = sign_head(self._store, self.signer, tree.size, tree.root(),
                                     int(time.time() * 1000))
                self._signed_size = tree.size
                if waiting:
                    self._loop.call_soon_threadsafe(_hand_over, waiting, head)
        except sqlite3.Error as e:
            log.error("could not store a signed tree head: %s", e)
            self._loop.call_soon_threadsafe(
                _resolve, waiting, LedgerError(f"could not store a signed tree head: {e}"))
        self._signed_at = time.monotonic()

    def _backfill(self) -> None:
        """At start, derive what a crash (or an older store) left underived: the tree above the
        leaves committed after the last derivation, and the rollups from their watermark; and
        events stored before the log existed become leaves, once."""
        store = self._store
        leaves = [bytes(h) for (h,) in store.execute(
            "SELECT hash FROM merkle_nodes WHERE level = 0 AND idx >= ? ORDER BY idx",
            (self._log.size,))]
        rolled = meta(store, ROLLED_UP) or 0
        with store.transaction():
            tree = grow_log(store, self._log, leaves)
            logged = store.execute(f"SELECT {', '.join(FIELDS)} FROM events "
                                   "WHERE leaf_index >= ? ORDER BY leaf_index", (rolled,))
            while chunk := [list(r) for r in logged.fetchmany(10_000)]:
                log.info("bringing the rollups up to date from leaf %d", chunk[0][LEAF_COLUMN])
                fold(store, chunk)
        self._log = tree
        rows = [list(r) for r in store.execute(
            f"SELECT {', '.join(FIELDS)} FROM events WHERE leaf_index IS NULL ORDER BY id")]
        if rows:
            log.info("adding %d earlier events to the Merkle log", len(rows))
            with store.transaction():
                store.execute("DELETE FROM events WHERE leaf_index IS NULL")
                tree = grow_log(store, tree, self._insert(rows))
            self._log = tree
            self._unrolled += rows

    def _commit(self, items: list[_Append]) -> None:
        rows = [item.row for item in items]
        try:
            with self._store.transaction():
                leaves = self._insert(rows)
        except sqlite3.Error as e:
            if len(items) > 1:  # one bad row must not sink its batch: retry them one by one
                for item in items:
                    self._commit([item])
                return
            log.error("could not record event %s: %s", rows[0][0], e)
            self._settle(items, LedgerError(f"could not record the event: {e}"))
            return
        self._unlogged += leaves
        self._unrolled += rows
        self._settle(items, None)

    def _insert(self, rows: list[list[Any]]) -> list[bytes]:
        """Insert the rows as the next leaves of the log, each with its leaf hash, in the
        caller's transaction; returns the leaves."""
        first = self._log.size + len(self._unlogged)
        for i, row in enumerate(rows):
            row[LEAF_COLUMN] = first + i
        leaves = [leaf_of(row) for row in rows]
        self._store.executemany(INSERT_EVENT, rows)
        self._store.executemany(INSERT_NODE, [(0, first + i, leaf)
                                              for i, leaf in enumerate(leaves)])
        return leaves

    def _settle(self, items: list[_Append], error: Exception | None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, [item.done for item in items], error)


def _hand_over(futures: list[asyncio.Future[TreeHead]], head: TreeHead) -> None:
    for f in futures:
        if not f.done():
            f.set_result(head)


def _resolve(futures: list[asyncio.Future[Any]], error: Exception | None) -> None:
    for f in futures:
        if not f.done():
            if error is None:
                f.set_result(None)
            else:
                f.set_exception(error)
