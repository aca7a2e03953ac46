"""Opening a SQLite store: the file created for its owner only, WAL, the schema in place and
brought up to date (new event columns, rollups keyed by currency), decimal SQL functions."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from decimal import Decimal
from pathlib import Path

from ..errors import LedgerError
from ..events import decimal_str
from .rollups import SCHEMA as ROLLUP_SCHEMA
from .rollups import decimal_add
from .rollups import upgrade as upgrade_rollups
from .schema import SCHEMA, added_columns

SMALL_CACHE_KIB = 256  # for connections that read a few rows now and then


def open_db(path: Path, *, durability: str = "process", cache_kib: int | None = None,
            create: bool = True) -> sqlite3.Connection:
    """A connection with the schema in place; WAL so readers never block the writer.

    A new store is created readable by its owner only (SQLite gives its -wal and -shm files
    the same mode); with `create=False` a missing store is a LedgerError instead, so reading
    never leaves an empty store behind. `cache_kib` caps the page cache (SQLite's default is
    2 MB per connection).
    """
    try:
        if not path.exists():
            if not create:
                raise LedgerError(f"there is no store at {path} (server.store in the config): "
                                  "start the gateway once to create it, or check the path")
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # O_EXCL: and never through a symlink
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is in the OS once it returns, so a killed process loses nothing;
        # FULL also fsyncs each (group) commit, for power loss.
        conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'power' else 'NORMAL'}")
        if cache_kib is not None:
            conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        conn.create_aggregate("decimal_sum", 1, _DecimalSum)
        conn.create_function("decimal_add", 2, decimal_add, deterministic=True)
        conn.executescript(SCHEMA + ROLLUP_SCHEMA)
        for statement in added_columns({r[1] for r in conn.execute("PRAGMA table_info(events)")}):
            conn.execute(statement)
        upgrade_rollups(conn)
    except (sqlite3.Error, OSError) as e:
        raise LedgerError(f"cannot open the store at {path}: {e}") from e
    return conn


class _DecimalSum:
    """SUM over decimal strings without passing through float."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total = (self.total or Decimal(0)) + Decimal(value)

    def finalize(self) -> str | None:
        return None if self.total is None else decimal_str(self.total)
