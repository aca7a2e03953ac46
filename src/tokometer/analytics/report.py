"""Requests, tokens by kind, cost, energy and CO2e per group and period (amounts summed as
Decimal), and tokens per kWh over the requests that have an energy figure.

Answered from the rollups whenever they can (every grouping field is a rollup dimension and
the time range falls on hour or day boundaries), else from the raw events. Every row is of one
currency (its `currency`): groups are always split by currency, so amounts in different
currencies are never added.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from ..errors import RequestError
from ..events import decimal_str
from ..ledger.read import time_filter
from ..ledger.rollups import table_for
from ..ledger.store import Store

GROUPABLE = ("tenant", "app", "agent", "task", "end_user", "key_id", "consumer_region", "api",
             "operation", "stream", "provider", "provider_region", "model_requested", "model",
             "model_origin", "usage_source", "source", "status", "error_type", "currency",
             "vendor")
MEASURES = ("requests", "input_tokens", "cache_read_tokens", "cache_write_tokens",
            "output_tokens", "reasoning_tokens", "cost", "energy_wh", "co2e_g",
            "tokens_per_kwh", "charge", "margin")
# What the query gives, in order: MEASURES but the margin, which is worked out from the last.
_COLUMNS = (*MEASURES[:-1], "charged", "charged_unpriced", "charged_cost")
REPORT_PERIODS = ("hour", "day", "week", "month")
_SUMS = ("SUM(input_tokens), SUM(cache_read_tokens), SUM(cache_write_tokens), "
         "SUM(output_tokens), SUM(reasoning_tokens), decimal_sum(cost), "
         "decimal_sum(energy_wh), decimal_sum(co2e_g), ")
# The tokens of the requests with an energy figure (what tokens per kWh divides); the charge
# and the cost of the requests charged (the margin is their difference). By rollup or not.
_ENERGY_AND_CHARGE = {
    True: "SUM(energy_tokens), decimal_sum(charge), SUM(charged), SUM(charged_unpriced), "
          "decimal_sum(charged_cost)",
    False: "SUM(CASE WHEN energy_wh IS NULL THEN 0 ELSE input_tokens + output_tokens END), "
           "decimal_sum(charge), COUNT(charge), "
           "SUM(CASE WHEN charge IS NOT NULL AND cost IS NULL THEN 1 ELSE 0 END), "
           "decimal_sum(CASE WHEN charge IS NULL THEN NULL ELSE cost END)"}


def bucket(period: str, column: str) -> str:
    """SQL for the start of the period holding `column` (an RFC 3339 time or a day)."""
    if period == "hour":
        return f"substr({column}, 1, 13) || ':00:00Z'"
    if period == "day":
        return f"substr({column}, 1, 10)"
    if period == "week":  # the Monday on or before the day
        return f"week_start(substr({column}, 1, 10))"
    return f"substr({column}, 1, 7)"


def report(conn: Store, by: list[str], since: str | None = None,
           until: str | None = None, period: str | None = None, top: int | None = None,
           where: dict[str, str | None] | None = None) -> list[dict[str, Any]]:
    """`where` keeps only events whose fields have these values (None: the field is empty)."""
    where = where or {}
    unknown = [b for b in [*by, *where] if b not in GROUPABLE]
    if unknown:
        raise RequestError(f"cannot group by {', '.join(unknown)}; "
                           f"choose from: {', '.join(GROUPABLE)}")
    if period is not None and period not in REPORT_PERIODS:
        raise RequestError(f"period must be one of {', '.join(REPORT_PERIODS)}")
    if top is not None and top < 1:
        raise RequestError("top must be at least 1")
    group = by if "currency" in by else [*by, "currency"]
    rollup = rollup_grain([*group, *where], since, until, period)
    table = table_for({*group, *where}) if rollup is not None else None
    if rollup is None and "vendor" in by:
        raise RequestError("vendor is kept in the rollups only: give --since/--until on "
                           "whole hours, or group by model")
    # "bucket", not "period": the rollup tables have a column of that name.
    keys = ([f"{bucket(period, 'start' if rollup else 'time')} AS bucket"] if period else []) \
        + group
    names = (["bucket"] if period else []) + group
    if rollup is not None:
        clause, params = rollup_filter(rollup, since, until)
        source = table
    else:
        clause, params = time_filter(since, until)
        source = "events"
    for name, value in where.items():  # names are checked against GROUPABLE above
        if value is None and rollup is None:
            clause += f"{' AND' if clause else ' WHERE'} {name} IS NULL"
        else:
            clause += f"{' AND' if clause else ' WHERE'} {name} = ?"
            params.append(value if value is not None else "")
    count = "SUM(requests)" if rollup is not None else "COUNT(*)"
    select = f"{count}, {_SUMS}{_ENERGY_AND_CHARGE[rollup is not None]} FROM {source}{clause}"
    sql = f"SELECT {', '.join(keys)}, {select} GROUP BY {', '.join(names)}"
    # Empty values first on every store (SQLite's order; PostgreSQL's default is last).
    order = ", ".join(f"{name} NULLS FIRST" for name in names)
    sql += (f" ORDER BY SUM(input_tokens) + SUM(output_tokens) DESC, {order}"
            if top else f" ORDER BY {order}")
    if top:
        sql += f" LIMIT {int(top)}"
    rows = []
    for row in conn.execute(sql, params):
        values = dict(zip([*(["period"] if period else []), *group, *_COLUMNS], row,
                          strict=True))
        for m in MEASURES[:6]:
            values[m] = values[m] or 0
        _energy(values)
        _margin(values)
        if rollup is not None:  # rollups keep a missing value as ''
            for name in group:
                values[name] = values[name] or None
        rows.append(values)
    return rows


def _energy(values: dict[str, Any]) -> None:
    """Energy and CO2e as decimal strings, null for a group none of whose requests has a
    figure (unknown, not zero); tokens per kWh over the requests that have one."""
    tokens = values["tokens_per_kwh"] or 0  # the query's energy tokens, until here
    energy = Decimal(values["energy_wh"] or 0)
    if not tokens and not energy:
        values["energy_wh"] = values["co2e_g"] = values["tokens_per_kwh"] = None
        return
    values["energy_wh"] = decimal_str(energy)
    values["co2e_g"] = decimal_str(Decimal(values["co2e_g"] or 0))
    values["tokens_per_kwh"] = int(tokens * 1000 / energy) if energy else None


def _margin(values: dict[str, Any]) -> None:
    """The charge and the margin over the cost of the requests charged, as decimal strings;
    null for a group none of whose requests was charged (no price plan covers it), and the
    margin null where a request charged has no known cost (unknown, not all margin)."""
    charged, charged_cost = values.pop("charged"), Decimal(values.pop("charged_cost") or 0)
    unpriced = values.pop("charged_unpriced")
    charge = Decimal(values["charge"] or 0)
    values["charge"] = decimal_str(charge) if charged else None
    values["margin"] = decimal_str(charge - charged_cost) if charged and not unpriced else None


def rollup_grain(by: list[str], since: str | None, until: str | None,
                 period: str | None) -> str | None:
    """'day' or 'hour' when that rollup answers exactly, else None (scan the events)."""
    if table_for(set(by)) is None:
        return None
    bounds = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (since, until) if t]
    if any(b.minute or b.second or b.microsecond for b in bounds):
        return None
    if period != "hour" and not any(b.hour for b in bounds):
        return "day"
    return "hour"


def rollup_filter(grain: str, since: str | None, until: str | None) -> tuple[str, list[str]]:
    clauses, params = ["period = ?"], [grain]
    for op, t in ((">=", since), ("<", until)):
        if t:
            clauses.append(f"start {op} ?")
            params.append(t[:10] if grain == "day" else t[:13] + ":00:00Z")
    return " WHERE " + " AND ".join(clauses), params
