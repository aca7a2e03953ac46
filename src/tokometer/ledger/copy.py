"""Copying a whole store into an empty one (`tokometer migrate`), table by table, through the
Store protocol, so SQLite and PostgreSQL copy either way. The caller audits the copy."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from ..errors import LedgerError
from .read import count_events
from .rollups import ROLLUPS
from .store import Store

# The log's tables in the order their rows depend on nothing copied later. Left out: the
# shared budget_spend, budget_holds and rate_seconds, working state rebuilt from the ledger
# (or empty) at first use.
TABLES = ("keys", "budgets", "budget_reservations", "outcomes", "ledger_meta", "events",
          "merkle_nodes", "tree_heads", "provenance", *ROLLUPS)
_CHUNK = 5_000


def copy_store(source: Store, target: Store,
               progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Every row of every table, in one transaction on the target; rows copied per table."""
    if count_events(target) or target.execute("SELECT 1 FROM keys LIMIT 1").fetchone():
        raise LedgerError("the target store is not empty: migrate copies into a new store only")
    copied = {}
    with target.transaction():
        for table in TABLES:
            columns = [d[0] for d in source.execute(f"SELECT * FROM {table} LIMIT 0"
                                                     ).description]
            insert = (f"INSERT INTO {table} ({', '.join(columns)}) "
                      f"VALUES ({', '.join('?' for _ in columns)})")
            rows = source.stream(f"SELECT {', '.join(columns)} FROM {table}")
            copied[table] = 0
            while chunk := [tuple(row) for row in itertools.islice(rows, _CHUNK)]:
                target.executemany(insert, chunk)
                copied[table] += len(chunk)
                if progress is not None and table == "events":
                    progress(len(chunk))
    return copied
