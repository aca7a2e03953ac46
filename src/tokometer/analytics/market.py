"""The token economy's questions, answered from the rollups through `report`.

rankings: each model's (vendor's, vendor country's) share of tokens week by week, and how it
moved since the week before, as OpenRouter's public rankings show for the whole market.
flows: tokens, cost, energy and CO2e from the consumer's country to the serving country, by
model origin (a row per currency).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..errors import RequestError
from ..events import decimal_str, rfc3339
from ..ledger.store import Store
from .report import report

RANKED_BY = {"model": "model", "vendor": "vendor", "origin": "model_origin"}


def this_monday(weeks: int, today: date | None) -> date:
    """The Monday of the ISO week (UTC) holding `today`, for a table of `weeks` weeks up to
    it; RequestError for fewer than one."""
    if weeks < 1:
        raise RequestError("weeks must be at least 1")
    today = today or datetime.now(UTC).date()
    return today - timedelta(days=today.weekday())


def rankings(conn: Store, by: str = "model", weeks: int = 4,
             today: date | None = None) -> list[dict[str, Any]]:
    if by not in RANKED_BY:
        raise RequestError(f"rank by one of {', '.join(RANKED_BY)}, not {by!r}")
    monday = this_monday(weeks, today)
    first = monday - timedelta(weeks=weeks)  # one week more: the first shown week's change
    since = rfc3339(datetime(first.year, first.month, first.day, tzinfo=UTC))
    column = RANKED_BY[by]
    tokens: dict[str, dict[str | None, int]] = {}
    impact: dict[tuple[str, str | None], list[Decimal | None]] = {}  # energy, CO2e
    for row in report(conn, [column], since=since, period="week"):  # a row per currency
        counts = tokens.setdefault(row["period"], {})
        counts[row[column]] = (counts.get(row[column], 0) + row["input_tokens"]
                               + row["output_tokens"])
        sums = impact.setdefault((row["period"], row[column]), [None, None])
        for i, measure in enumerate(("energy_wh", "co2e_g")):
            if row[measure] is not None:
                sums[i] = (sums[i] or Decimal(0)) + Decimal(row[measure])
    out = []
    for i in range(1, weeks + 1):
        week = (first + timedelta(weeks=i)).isoformat()
        before = (first + timedelta(weeks=i - 1)).isoformat()
        now, then = tokens.get(week, {}), tokens.get(before, {})
        total, total_before = sum(now.values()), sum(then.values())
        for name, n in sorted(now.items(), key=lambda kv: -kv[1]):
            share = n / total if total else 0.0
            share_before = then.get(name, 0) / total_before if total_before else 0.0
            energy, co2e = impact[(week, name)]
            out.append({"week": week, by: name, "tokens": n, "share": round(share, 6),
                        "change_pp": round((share - share_before) * 100, 4),
                        "energy_wh": _text(energy), "co2e_g": _text(co2e)})
    return out


def flows(conn: Store, since: str | None = None,
          until: str | None = None) -> list[dict[str, Any]]:
    """Consumer country → serving country, split by model origin (the cross-border matrix)."""
    rows = report(conn, ["consumer_region", "provider_region", "model_origin"], since, until)
    return [{"from": r["consumer_region"], "to": r["provider_region"],
             "model_origin": r["model_origin"], "requests": r["requests"],
             "tokens": r["input_tokens"] + r["output_tokens"], "cost": r["cost"],
             "currency": r["currency"], "energy_wh": r["energy_wh"], "co2e_g": r["co2e_g"],
             "tokens_per_kwh": r["tokens_per_kwh"]}
            for r in rows]


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else decimal_str(amount)
