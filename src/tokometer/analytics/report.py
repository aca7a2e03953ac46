"""Requests, tokens by kind and cost per group, summed in the store (cost as Decimal)."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..errors import RequestError
from ..ledger.read import time_filter

GROUPABLE = ("tenant", "app", "agent", "task", "end_user", "key_id", "consumer_region", "api",
             "operation", "stream", "provider", "provider_region", "model_requested", "model",
             "model_origin", "usage_source", "status", "error_type", "currency")
MEASURES = ("requests", "input_tokens", "cache_read_tokens", "cache_write_tokens",
            "output_tokens", "reasoning_tokens", "cost")


def report(conn: sqlite3.Connection, by: list[str], since: str | None = None,
           until: str | None = None) -> list[dict[str, Any]]:
    unknown = [b for b in by if b not in GROUPABLE]
    if unknown:
        raise RequestError(f"cannot group by {', '.join(unknown)}; "
                           f"choose from: {', '.join(GROUPABLE)}")
    where, params = time_filter(since, until)
    group = ", ".join(by)
    select = (f"{group + ', ' if by else ''}COUNT(*), SUM(input_tokens), SUM(cache_read_tokens), "
              "SUM(cache_write_tokens), SUM(output_tokens), SUM(reasoning_tokens), "
              "decimal_sum(cost)")
    sql = f"SELECT {select} FROM events{where}"
    if by:
        sql += f" GROUP BY {group} ORDER BY {group}"
    rows = []
    for row in conn.execute(sql, params):
        if not by and row[0] == 0:
            break
        values = dict(zip([*by, *MEASURES], row, strict=True))
        for m in MEASURES[:-1]:
            values[m] = values[m] or 0
        rows.append(values)
    return rows
