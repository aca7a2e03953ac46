"""SQLite ledger: events are appended by one writer thread in group commits (writer.py).

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
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..events import FIELDS
from .connect import SMALL_CACHE_KIB, open_sqlite
from .derive import (
    LOGGED,
    ROLLED_UP,
    fold,
    grow_log,
    insert_leaves,
    meta,
    set_meta,
    sign_head,
)
from .log import MerkleLog, leaf_count
from .rows import LEAF_COLUMN
from .writer import QueuedWriter

if TYPE_CHECKING:  # cryptography loads where signing happens, not in every CLI command
    from .signer import Signer, TreeHead

log = logging.getLogger("tokometer.ledger")

CHECKPOINT_SECONDS = 1.0
# The Merkle log and the rollups catch up with the events this often: in small steps, since
# a step holds the GIL for every event it folds (a second's events at once showed in p99).
DERIVE_SECONDS = 0.1
WAL_LIMIT_BYTES = 128 * 1024 * 1024


class SQLiteLedger(QueuedWriter):
    idle_seconds = DERIVE_SECONDS

    def __init__(self, path: Path, signer: Signer, *, durability: str = "process"):
        super().__init__(signer)
        self.path = path
        self._store = open_sqlite(path, create=True, durability=durability)
        logged = meta(self._store, LOGGED)
        if logged is None:  # a store from before this watermark holds them all; a new one none
            logged = leaf_count(self._store)
            set_meta(self._store, LOGGED, logged)
        self._log = MerkleLog.load(self._store, logged)
        self._signed_size = -1
        self._unlogged: list[bytes] = []  # committed leaves whose tree nodes are not stored yet
        self._unrolled: list[list[Any]] = []  # committed events not yet in the rollups
        self._derived_at = 0.0
        self._store.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint_forever
        self._store.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")

    def _thread_targets(self) -> list[tuple[Callable[[], None], str]]:
        return [*super()._thread_targets(), (self._checkpoint_forever, "ledger-checkpoint")]

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

    def _prepare(self) -> None:
        self._backfill()

    def _after(self, signs: list[asyncio.Future[TreeHead]], stop: bool) -> None:
        sign = self._signing_due(signs, stop)
        if sign or time.monotonic() - self._derived_at >= DERIVE_SECONDS:
            self._derive()
        if sign:
            self._sign(signs)

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
        if self._unlogged:  # derivation failed: a head now would leave out committed leaves,
            # and, stamped later than a head the CLI signed over them, go backwards
            self._fail_signs(waiting, "the Merkle log is behind its events; no tree head is "
                                      "signed until it catches up")
            return
        try:
            if tree.size != self._signed_size or waiting:
                with self._store.transaction():
                    head = sign_head(self._store, self.signer, tree.size, tree.root(),
                                     int(time.time() * 1000))
                self._signed_size = tree.size
                self._hand_over(waiting, head)
        except sqlite3.Error as e:
            log.error("could not store a signed tree head: %s", e)
            self._fail_signs(waiting, f"could not store a signed tree head: {e}")
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
                tree = grow_log(store, tree, insert_leaves(store, rows, tree.size))
            self._log = tree
            self._unrolled += rows

    def _write(self, rows: list[list[Any]]) -> None:
        """The events and their leaves only: the tree above and the rollups follow in _derive."""
        with self._store.transaction():
            leaves = insert_leaves(self._store, rows, self._log.size + len(self._unlogged))
        self._unlogged += leaves
        self._unrolled += rows
