"""Bringing a SQLite store up to date at every open: tables made if new, event columns added
since the store was made, and rollups written before they were keyed by currency rebuilt."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..events import FIELDS
from .derive import ROLLED_UP, fold, set_meta
from .rollups import ROLLUPS
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
    """Rollups are derived data, so old ones are dropped and folded again from the logged
    events, in one transaction."""
    def current() -> bool:
        return all("currency" in _columns(store, name) for name in ROLLUPS)

    if current():
        return
    with store.transaction():
        if current():  # another connection did it first
            return
        for name in ROLLUPS:
            store.execute(f"DROP TABLE {name}")
        for table in ROLLUP_TABLES:  # not executescript: it would commit
            store.execute(table)
        set_meta(store, ROLLED_UP, 0)
        rows = store.execute(f"SELECT {', '.join(FIELDS)} FROM events "
                             "WHERE leaf_index IS NOT NULL ORDER BY leaf_index")
        while chunk := [list(r) for r in rows.fetchmany(10_000)]:
            fold(store, chunk)


def _columns(store: SQLiteStore, table: str) -> set[str]:
    return {r[1] for r in store.execute(f"PRAGMA table_info({table})")}
