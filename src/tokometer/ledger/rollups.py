"""Rollups kept on ingest: per hour and per UTC day, requests, tokens and cost by every
dimension reports group on, so reports never scan raw events when a rollup can answer.

The writer folds each group commit's events into rollup rows in the same transaction. Missing
values are stored as '' (SQLite keys treat NULLs as all different) and read back as None.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ..catalog import vendor_of
from ..events import FIELDS, decimal_str

DIMENSIONS = ("tenant", "app", "agent", "provider", "model", "vendor", "model_origin",
              "provider_region", "consumer_region")
TOKENS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
          "reasoning_tokens")
MEASURES = ("requests", "errors", *TOKENS, "cost")
PERIODS = ("hour", "day")

_KEY = ", ".join(("period", "start", *DIMENSIONS))
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS rollups (
  period TEXT NOT NULL,     -- 'hour' | 'day'
  start TEXT NOT NULL,      -- '2026-11-28T08:00:00Z' | '2026-11-28' (UTC)
  {", ".join(f"{d} TEXT NOT NULL" for d in DIMENSIONS)},
  {", ".join(f"{m} INTEGER NOT NULL" for m in ("requests", "errors", *TOKENS))},
  cost TEXT NOT NULL,       -- a decimal string: money never passes through float
  PRIMARY KEY ({_KEY})
) WITHOUT ROWID;
"""
UPSERT = (
    f"INSERT INTO rollups ({_KEY}, {', '.join(MEASURES)}) "
    f"VALUES ({', '.join('?' for _ in range(2 + len(DIMENSIONS) + len(MEASURES)))}) "
    f"ON CONFLICT ({_KEY}) DO UPDATE SET "
    + ", ".join(f"{m} = {m} + excluded.{m}" for m in ("requests", "errors", *TOKENS))
    + ", cost = decimal_add(cost, excluded.cost)"
)

_AT = {name: FIELDS.index(name) for name in FIELDS}
_SOURCE_DIMENSIONS = [d for d in DIMENSIONS if d != "vendor"]


def buckets(time: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The hour and the day an RFC 3339 UTC time falls in."""
    return ("hour", time[:13] + ":00:00Z"), ("day", time[:10])


def rollup_rows(rows: list[list[Any]]) -> list[tuple[Any, ...]]:
    """Event rows (in FIELDS order) folded into one upsert per (period, start, dimensions)."""
    sums: dict[tuple[str, ...], list[Any]] = {}
    for row in rows:
        dims = {d: row[_AT[d]] or "" for d in _SOURCE_DIMENSIONS}
        info = vendor_of(dims["model"]) if dims["model"] else None
        dims["vendor"] = info.vendor if info else ""
        values = [row[_AT[t]] or 0 for t in TOKENS]
        cost = Decimal(row[_AT["cost"]]) if row[_AT["cost"]] else Decimal(0)
        error = 1 if row[_AT["status"]] >= 400 else 0
        for period, start in buckets(row[_AT["time"]]):
            key = (period, start, *(dims[d] for d in DIMENSIONS))
            acc = sums.get(key)
            if acc is None:
                sums[key] = [1, error, *values, cost]
            else:
                acc[0] += 1
                acc[1] += error
                for i, v in enumerate(values, 2):
                    acc[i] += v
                acc[-1] += cost
    return [(*key, *acc[:-1], decimal_str(acc[-1])) for key, acc in sums.items()]


def decimal_add(a: str | None, b: str | None) -> str:
    return decimal_str(Decimal(a or 0) + Decimal(b or 0))
