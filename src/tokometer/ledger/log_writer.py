"""Appending to the Merkle log from any number of processes, on either store.

A batch's events and their leaves commit under the log's lock (`Store.lock`: an advisory
lock on PostgreSQL, the file's write lock on SQLite), after the last stored leaf, whoever
wrote it: that is all a response waits for. The tree nodes above the leaves and the rollups
are derived data, written at most every DERIVE_SECONDS in a transaction of their own (each
step holds the GIL for every event it folds), from the batches this writer holds in memory
when nobody else has written or derived since, else from what is stored; a crash in between
loses nothing, since the next derivation, by any writer, starts from the stored watermarks,
and readers fold a node not yet stored from the ones below it. A head is signed under the
same lock over everything stored, only if no stored head covers it yet (derive.sign_if_grown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import LedgerError
from .claims import claim
from .derive import (
    LOG_LOCK,
    LOGGED,
    catch_up,
    fold,
    grow_log,
    insert_leaves,
    meta,
    sign_if_grown,
)
from .log import MerkleLog, leaf_count
from .store import Store
from .writer import Append, QueuedWriter, write_along

if TYPE_CHECKING:
    from .signer import Signer, TreeHead

log = logging.getLogger("tokometer.ledger")

DERIVE_SECONDS = 0.1


class LogWriter(QueuedWriter):
    idle_seconds = DERIVE_SECONDS

    def __init__(self, signer: Signer, store: Store):
        super().__init__(signer)
        self._store = store
        self._log = MerkleLog(0, ())  # the log as this writer last derived it
        self._unlogged: list[bytes] = []  # leaves committed since the last derivation...
        self._unrolled: list[list[Any]] = []  # ...and their events
        self._others_wrote = False  # another writer committed leaves since then too
        self._derived_at = 0.0

    def _prepare(self) -> None:
        """Derive what a crash left underived, and load the log."""
        with self._store.transaction():
            self._store.lock(LOG_LOCK)
            self._log = catch_up(self._store, self._log)

    def _write(self, items: list[Append]) -> list[str]:
        with self._store.transaction():
            self._store.lock(LOG_LOCK)
            recorded = [claim(self._store, item.row[0], item.claims) if item.claims
                        else item.row[0] for item in items]
            kept = [item for item, holder in zip(items, recorded, strict=True)
                    if holder == item.row[0]]
            rows = [item.row for item in kept]
            first = leaf_count(self._store)
            leaves = insert_leaves(self._store, rows, first)
            write_along(self._store, tuple(write for item in kept for write in item.along))
        self._others_wrote |= first != self._log.size + len(self._unlogged)
        self._unlogged += leaves
        self._unrolled += rows
        return recorded

    def _after(self, signs: list[asyncio.Future[TreeHead]], stop: bool) -> None:
        """Derive (and sign, when due) in one transaction: a head covers every committed
        leaf, whichever writer committed it."""
        sign = self._signing_due(signs, stop)
        if not sign and not (self._unlogged and
                             time.monotonic() - self._derived_at >= DERIVE_SECONDS):
            return
        try:
            with self._store.transaction():
                self._store.lock(LOG_LOCK)
                tree = self._derive(sign)
                head = sign_if_grown(self._store, self.signer, tree, bool(signs)) if sign \
                    else None
        except (self._store.Error, LedgerError) as e:  # LedgerError: the store is gone
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
