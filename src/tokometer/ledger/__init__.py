"""The durable record of every meter reading: SQLite by default, or PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..config import PostgresURL
from ..errors import ConfigError
from .connect import SQLiteStore, open_sqlite
from .sqlite import SQLiteLedger
from .store import Ledger, Store

__all__ = ["Ledger", "SQLiteLedger", "SQLiteStore", "Store", "is_store_error", "open_store",
           "writer_path"]


def open_store(location: Path | PostgresURL, *, create: bool = False,
               cache_kib: int | None = None) -> Store:
    """The store `server.store` names, for reading and administration; only `create=True`
    makes one where there is none. (`cache_kib` caps SQLite's page cache.)"""
    if isinstance(location, PostgresURL):
        from .postgres import open_postgres  # psycopg loads only for a PostgreSQL store

        return open_postgres(location, create=create)
    return open_sqlite(location, create=create, cache_kib=cache_kib)


def writer_path(location: Path | PostgresURL) -> Path:
    """The SQLite file the gateway's writer keeps the log in: on a PostgreSQL store, so far,
    only the CLI and the reports run."""
    if isinstance(location, PostgresURL):
        raise ConfigError(f"server.store: the gateway runs on a SQLite store so far; {location} "
                          "serves the CLI and the reports")
    return location


def is_store_error(error: BaseException) -> bool:
    """Whether a store's driver failed (locked, read-only, gone), not the program: sqlite3's
    errors, or psycopg's (without loading psycopg for a SQLite store)."""
    return isinstance(error, sqlite3.Error) or type(error).__module__.startswith("psycopg")
