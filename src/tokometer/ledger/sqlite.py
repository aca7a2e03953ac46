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
Several gateway workers may each run this writer on one file: SQLite's write lock (every
transaction here is IMMEDIATE) sequences their commits, each batch's leaves follow the last
stored one, and derivation and signing work from what is stored, whoever wrote it.
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
    catch_up,
    fold,
    grow_log,
    insert_leaves,
    meta,
    set_meta,
    sign_if_grown,
)
from .log import MerkleLog, leaf_count
from .store import Writes
from .writer import QueuedWriter, write_along

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
        self._unlogged: list[bytes] = []  # leaves committed since the last derivation...
        self._unrolled: list[list[Any]] = []  # ...and their events
        self._others_wrote = False  # another worker committed leaves since then too
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
        """Derive (and sign, when due) in one transaction: a head covers every committed
        leaf, whichever worker committed it."""
        sign = self._signing_due(signs, stop)
        if not sign and not (self._unlogged and
                             time.monotonic() - self._derived_at >= DERIVE_SECONDS):
            return
        try:
            with self._store.transaction():
                tree = self._derive(sign)
                head = sign_if_grown(self._store, self.signer, tree, bool(signs)) if sign \
                    else None
        except sqlite3.Error as e:
            log.warning("the Merkle log and rollups are behind (will retry): %s", e)
            self._fail_signs(signs, "the Merkle log is behind its events; no tree head is "
                                    f"signed until it catches up: {e}")
            return
        self._log, self._unlogged, self._unrolled = tree, [], []
        self._others_wrote, self._derived_at = False, time.monotonic()
        if sign:
            self._signed_at = self._derived_at
        if head is not None:
            self._hand_over(signs, head)

    def _derive(self, everything: bool) -> MerkleLog:
        """The tree nodes and rollups over what this writer committed, from memory when
        nobody else has written or derived since; from the store otherwise, or when
        `everything` stored must be covered (for a head)."""
        tree = self._log
        mine_only = (bool(self._unlogged) and not self._others_wrote
                     and meta(self._store, LOGGED) == tree.size)
        if mine_only:
            tree = grow_log(self._store, tree, self._unlogged)
            fold(self._store, self._unrolled)
        if everything or not mine_only:
            tree = catch_up(self._store, tree)
        return tree

    def _backfill(self) -> None:
        """At start, derive what a crash (or an older store) left underived; and events
        stored before the log existed become leaves, once."""
        with self._store.transaction():
            self._log = catch_up(self._store, self._log)
            rows = [list(r) for r in self._store.execute(
                f"SELECT {', '.join(FIELDS)} FROM events WHERE leaf_index IS NULL ORDER BY id")]
            if rows:
                log.info("adding %d earlier events to the Merkle log", len(rows))
                self._store.execute("DELETE FROM events WHERE leaf_index IS NULL")
                insert_leaves(self._store, rows, self._log.size)
                self._log = catch_up(self._store, self._log)

    def _write(self, rows: list[list[Any]], along: Writes) -> None:
        """The events and their leaves only, after the last stored leaf (another worker's,
        maybe): the tree above and the rollups follow in _after."""
        with self._store.transaction():
            first = leaf_count(self._store)
            leaves = insert_leaves(self._store, rows, first)
            write_along(self._store, along)
        self._others_wrote |= first != self._log.size + len(self._unlogged)
        self._unlogged += leaves
        self._unrolled += rows
