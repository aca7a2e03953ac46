"""The durable record of every meter reading: SQLite by default, or PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import PostgresURL
from .connect import SQLiteStore, open_sqlite
from .sqlite import SQLiteLedger
from .store import Ledger, Store

if TYPE_CHECKING:
    from .signer import Signer

__all__ = ["Ledger", "SQLiteLedger", "SQLiteStore", "Store", "is_store_error", "open_ledger",
           "open_store", "single_writer"]


def open_store(location: Path | PostgresURL, *, create: bool = False,
               cache_kib: int | None = None) -> Store:
    """The store `server.store` names, for reading and administration; only `create=True`
    makes one where there is none. (`cache_kib` caps SQLite's page cache.)"""
    if isinstance(location, PostgresURL):
        from .postgres import open_postgres  # psycopg loads only for a PostgreSQL store

        return open_postgres(location, create=create)
    return open_sqlite(location, create=create, cache_kib=cache_kib)


def open_ledger(location: Path | PostgresURL, signer: Signer, *,
                durability: str = "process") -> Ledger:
    """The writer the gateway appends through, on the store `server.store` names."""
    if isinstance(location, PostgresURL):
        from .postgres_ledger import PostgresLedger

        return PostgresLedger(location, signer)
    return SQLiteLedger(location, signer, durability=durability)


def single_writer(location: Path | PostgresURL) -> Path | None:
    """The SQLite file only one gateway may write (the lock beside it says which); None for
    PostgreSQL, where any number of gateways append to one log."""
    return None if isinstance(location, PostgresURL) else location


def is_store_error(error: BaseException) -> bool:
    """Whether a store's driver failed (locked, read-only, gone), not the program: sqlite3's
    errors, or psycopg's (without loading psycopg for a SQLite store)."""
    return isinstance(error, sqlite3.Error) or type(error).__module__.startswith("psycopg")
