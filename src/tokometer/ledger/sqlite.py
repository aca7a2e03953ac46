"""SQLite ledger: the log writer (log_writer.py) on a file, where several gateway workers may
each run one: SQLite's write lock (every transaction here is IMMEDIATE) sequences their
commits. At its first start on a store from before the Merkle log, the earlier events become
leaves, once.
Checkpoints, which fsync the database file (tens of ms on some disks), run on a thread of
their own: passive ones, which never block the writer, every second; and, only when sustained
load has kept the WAL from restarting for WAL_LIMIT_BYTES, one that waits for a gap between
commits so the WAL can start over.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..events import FIELDS
from .connect import SMALL_CACHE_KIB, open_sqlite
from .derive import (
    LOGGED,
    catch_up,
    insert_leaves,
    meta,
    set_meta,
)
from .log import leaf_count
from .log_writer import LogWriter

if TYPE_CHECKING:  # cryptography loads where signing happens, not in every CLI command
    from .signer import Signer

log = logging.getLogger("tokometer.ledger")

CHECKPOINT_SECONDS = 1.0
WAL_LIMIT_BYTES = 128 * 1024 * 1024


class SQLiteLedger(LogWriter):
    def __init__(self, path: Path, signer: Signer, *, durability: str = "process"):
        super().__init__(signer, open_sqlite(path, create=True, durability=durability))
        self.path = path
        if meta(self._store, LOGGED) is None:  # a store from before this watermark holds
            set_meta(self._store, LOGGED, leaf_count(self._store))  # them all; a new one none
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
