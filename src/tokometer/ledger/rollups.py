"""Rollups kept on ingest: per hour and per UTC day, requests, tokens, cost, energy, CO2e
and charge by the dimensions reports group on, so reports never scan raw events when a
rollup can answer.
`energy_tokens` are the tokens of the requests that have an energy figure: what a report
divides by the energy for tokens per kWh.

The writer folds committed events into every rollup ten times a second, in a transaction of
its own with a watermark (`ledger_meta.rolled_up`), so a restart catches up exactly. Missing
values are stored as '' (SQLite keys treat NULLs as all different), read back as None.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ..catalog import vendor_of
from ..events import FIELDS, decimal_str

# Each rollup sums over every dimension it leaves out, so it stays small: a handful of rows
# per day per value. They are listed from the fewest rows per day to the most (countries and
# models are few, tenants many), and a report is answered by the first that holds its fields.
# Every rollup is keyed by currency too: costs in different currencies are never added.
ROLLUPS: dict[str, tuple[str, ...]] = {
    "rollup_flows": ("consumer_region", "provider_region", "model_origin", "currency"),
    "rollup_models": ("provider", "model", "vendor", "model_origin", "provider_region",
                      "currency"),
    "rollup_tenant_models": ("tenant", "model", "vendor", "currency"),
    "rollup_tenants": ("tenant", "app", "agent", "currency"),
}
DIMENSIONS = tuple(dict.fromkeys(d for dims in ROLLUPS.values() for d in dims))
TOKENS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
          "reasoning_tokens")
# `charged`: the requests with a charge (under a price plan), `charged_cost` their cost,
# `charged_unpriced` those of them whose cost is unknown (a sell tariff's charge of an
# unpriced model: no margin can be told)
COUNTS = ("requests", "errors", *TOKENS, "energy_tokens", "charged", "charged_unpriced")
AMOUNTS = ("cost", "energy_wh", "co2e_g", "charge", "charged_cost")  # decimal strings
MEASURES = (*COUNTS, *AMOUNTS)
PERIODS = ("hour", "day")


def _table(name: str, dims: tuple[str, ...]) -> str:
    key = ", ".join(("period", "start", *dims))
    return f"""
CREATE TABLE IF NOT EXISTS {name} (
  period TEXT NOT NULL,     -- 'hour' | 'day'
  start TEXT NOT NULL,      -- '2026-11-28T08:00:00Z' | '2026-11-28' (UTC)
  {", ".join(f"{d} TEXT NOT NULL" for d in dims)},
  {", ".join(f"{m} INTEGER NOT NULL" for m in COUNTS)},
  {", ".join(f"{m} TEXT NOT NULL" for m in AMOUNTS)},
  PRIMARY KEY ({key})
) WITHOUT ROWID;"""


def _upsert(name: str, dims: tuple[str, ...]) -> str:
    key = ", ".join(("period", "start", *dims))
    marks = ", ".join("?" for _ in range(2 + len(dims) + len(MEASURES)))
    return (f"INSERT INTO {name} ({key}, {', '.join(MEASURES)}) VALUES ({marks}) "
            f"ON CONFLICT ({key}) DO UPDATE SET "
            + ", ".join([*(f"{m} = {name}.{m} + excluded.{m}" for m in COUNTS),
                         *(f"{m} = decimal_add({name}.{m}, excluded.{m})" for m in AMOUNTS)]))


TABLES = [_table(name, dims) for name, dims in ROLLUPS.items()]
SCHEMA = "".join(TABLES)
_UPSERTS = {name: _upsert(name, dims) for name, dims in ROLLUPS.items()}


def table_for(fields: set[str]) -> str | None:
    """The smallest rollup that holds every one of `fields`, or None."""
    return next((name for name, dims in ROLLUPS.items() if fields <= set(dims)), None)


_AT = {name: FIELDS.index(name) for name in FIELDS}
_SOURCE_DIMENSIONS = tuple(d for d in DIMENSIONS if d != "vendor")
_SOURCE_AT = tuple(_AT[d] for d in _SOURCE_DIMENSIONS)
_TOKENS_AT = tuple(_AT[t] for t in TOKENS)
_TIME, _STATUS = _AT["time"], _AT["status"]
_INPUT, _OUTPUT = _AT["input_tokens"], _AT["output_tokens"]
_AMOUNTS_AT = tuple(_AT[a] for a in AMOUNTS[:-1])  # charged_cost is worked out
_ENERGY, _COST, _CHARGE = _AT["energy_wh"], _AT["cost"], _AT["charge"]
_FIRST_AMOUNT = len(COUNTS)


def upserts(rows: list[list[Any]]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Event rows (in FIELDS order) folded into each rollup: (statement, parameter rows).

    Events are first summed per hour and full set of dimensions, which few distinct values
    share (the same app calling the same model), then each sum is spread over the rollups.
    """
    combos: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        key = (row[_TIME][:13], *(row[i] for i in _SOURCE_AT))
        charged = row[_CHARGE] is not None
        measures = [1, 1 if row[_STATUS] >= 400 else 0, *(row[i] or 0 for i in _TOKENS_AT),
                    (row[_INPUT] or 0) + (row[_OUTPUT] or 0) if row[_ENERGY] else 0,
                    1 if charged else 0, 1 if charged and row[_COST] is None else 0,
                    *(Decimal(row[i] or 0) for i in _AMOUNTS_AT),
                    Decimal(row[_COST] or 0) if charged else Decimal(0)]
        acc = combos.get(key)
        if acc is None:
            combos[key] = measures
        else:
            for i, v in enumerate(measures):
                acc[i] += v
    sums: dict[str, dict[tuple[str, ...], list[Any]]] = {name: {} for name in ROLLUPS}
    for (hour, *dims), measures in combos.items():
        values = dict(zip(_SOURCE_DIMENSIONS, (v or "" for v in dims), strict=True))
        info = vendor_of(values["model"]) if values["model"] else None
        values["vendor"] = info.vendor if info else ""
        for period, start in (("hour", hour + ":00:00Z"), ("day", hour[:10])):
            for name, rollup_dims in ROLLUPS.items():
                key = (period, start, *(values[d] for d in rollup_dims))
                acc = sums[name].get(key)
                if acc is None:
                    sums[name][key] = list(measures)
                else:
                    for i, v in enumerate(measures):
                        acc[i] += v
    return [(_UPSERTS[name], [(*key, *acc[:_FIRST_AMOUNT],
                               *(decimal_str(a) for a in acc[_FIRST_AMOUNT:]))
                              for key, acc in table.items()])
            for name, table in sums.items()]
