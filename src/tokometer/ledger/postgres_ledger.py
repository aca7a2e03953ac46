"""PostgreSQL ledger: the log writer (log_writer.py) on a database any number of gateway
processes append to, on any number of machines.

Each batch is sequenced in the store itself, as trillian-tessera's SQL drivers do: take the
log's lock (a transaction-scoped advisory lock), read the log's size, store the events as the
next leaves, commit. Leaf indexes stay contiguous whatever the number of writers, and a
writer killed mid-batch leaves nothing behind (its transaction never commits).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import PostgresURL
from .log_writer import LogWriter
from .postgres import open_postgres

if TYPE_CHECKING:
    from .signer import Signer


class PostgresLedger(LogWriter):
    def __init__(self, url: PostgresURL, signer: Signer):
        super().__init__(signer, open_postgres(url, create=True))
