"""PostgreSQL ledger: any number of gateway processes append to one Merkle log.

Each batch is sequenced in the store itself, in one transaction, as trillian-tessera's SQL
drivers do: take the log's lock (a transaction-scoped advisory lock), read the log's size,
store the events as the next leaves with the tree nodes above them and the rollups, move the
watermarks, commit. Leaf indexes stay contiguous whatever the number of writers, and a writer
killed mid-batch leaves nothing behind (its transaction never commits). Heads are signed under
the same lock with the clock read inside it, so heads in timestamp order never shrink; a
writer signs only when no stored head covers the log yet, so replicas do not each sign.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg

from ..config import PostgresURL
from ..errors import LedgerError
from .derive import LOG_LOCK, LOGGED, fold, grow_log, insert_leaves, meta, sign_if_grown
from .log import MerkleLog
from .postgres import PostgresStore, open_postgres, unavailable
from .store import Writes
from .writer import QueuedWriter, write_along

if TYPE_CHECKING:
    from .signer import Signer, TreeHead

log = logging.getLogger("tokometer.ledger")

class PostgresLedger(QueuedWriter):
    idle_seconds = 0.5

    def __init__(self, url: PostgresURL, signer: Signer):
        super().__init__(signer)
        self._store: PostgresStore = open_postgres(url, create=True)
        self._tree = MerkleLog(0, ())  # the log as this process last saw it

    def _write(self, rows: list[list[Any]], along: Writes) -> None:
        try:
            with self._store.transaction():
                tree = self._locked_tree()
                grown = grow_log(self._store, tree, insert_leaves(self._store, rows, tree.size))
                fold(self._store, rows)
                write_along(self._store, along)
        except psycopg.OperationalError as e:  # the server went away at the commit
            if not self._store.broken:
                raise
            raise unavailable(self._store.url, e) from e
        self._tree = grown

    def _after(self, signs: list[asyncio.Future[TreeHead]], stop: bool) -> None:
        if not self._signing_due(signs, stop):
            return
        self._signed_at = time.monotonic()
        try:
            with self._store.transaction():
                head = sign_if_grown(self._store, self.signer, self._locked_tree(), bool(signs))
        except (self._store.Error, LedgerError) as e:  # LedgerError: could not reconnect
            log.error("could not store a signed tree head: %s", e)
            self._fail_signs(signs, f"could not store a signed tree head: {e}")
            return
        if head is not None:
            self._hand_over(signs, head)

    def _locked_tree(self) -> MerkleLog:
        """Under the log's lock, in the caller's transaction: the log as stored now (its
        frontier read again only when another writer has moved it)."""
        self._store.lock(LOG_LOCK)
        size = meta(self._store, LOGGED) or 0
        if size != self._tree.size:
            self._tree = MerkleLog.load(self._store, size)
        return self._tree
