"""Bringing a SQLite store up to date at every open: tables made if new, event columns added
since the store was made, and rollups made before their current columns (currency, energy)
folded again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .derive import refold_rollups, rollups_current
from .rollups import SCHEMA as ROLLUP_SCHEMA
from .rollups import TABLES as ROLLUP_TABLES
from .schema import SCHEMA, added_columns

if TYPE_CHECKING:
    from .connect import SQLiteStore


def migrate(store: SQLiteStore) -> None:
    store.conn.executescript(SCHEMA + ROLLUP_SCHEMA)
    _add_columns(store)
    _rebuild_rollups(store)


def _add_columns(store: SQLiteStore) -> None:
    """The event columns added since the store was made; read again under the write lock, as
    another process opening the store may have added them first."""
    if not added_columns(_columns(store, "events")):
        return
    with store.transaction():
        for statement in added_columns(_columns(store, "events")):
            store.execute(statement)


def _rebuild_rollups(store: SQLiteStore) -> None:
    def columns(table: str) -> set[str]:
        return _columns(store, table)

    if rollups_current(columns):
        return
    with store.transaction():
        if not rollups_current(columns):  # else another connection did it first
            refold_rollups(store, ROLLUP_TABLES)  # not executescript: it would commit


def _columns(store: SQLiteStore, table: str) -> set[str]:
    return {r[1] for r in store.execute(f"PRAGMA table_info({table})")}
