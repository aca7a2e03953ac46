"""The token price index: week by week, the price per million tokens actually paid, weighted
by volume, for the whole market or by vendor, vendor country or model.

Tokens of different tokenizers are not one quantity: the same text is 1,000 tokens for one
model and 1,400 for another. So each model's tokens are restated in the reference tokenizer's
(o200k) by the ratio of the two counts of one fixed text in many languages (CALIBRATION: the
country names every pycountry catalogue translates, and their English originals), counted
offline. A model whose tokenizer is not known here is taken as it counts; `restated` says
what share of a row's tokens were restated. Only priced events count (a cost unknown is no
price paid), corrections included; a row per currency, never two added.
"""

from __future__ import annotations

import gettext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pycountry

from ..catalog import vendor_of
from ..counting.registry import TokenizerRegistry
from ..errors import RequestError
from ..events import decimal_str, rfc3339
from ..ledger.store import Store
from .market import this_monday

REFERENCE = "splintr:o200k_base"
INDEXED_BY = {"all": None, "vendor": "vendor", "origin": "model_origin", "model": "model"}
CALIBRATION_LANGUAGES = ("ar", "de", "es", "fr", "hi", "ja", "ko", "pt", "ru", "zh_CN")
_MILLION = Decimal(1_000_000)
_PLACES = Decimal("0.000001")
_WEEKLY = ("SELECT week_start(substr(time, 1, 10)) AS week, model, model_origin, currency, "
           "SUM(input_tokens + output_tokens) AS tokens, decimal_sum(cost) AS paid "
           "FROM events WHERE time >= ? AND time < ? AND cost IS NOT NULL "
           "GROUP BY week, model, model_origin, currency")


@cache
def calibration_text() -> str:
    """The fixed text every tokenizer counts: country names in English and ten languages."""
    root = Path(pycountry.__file__).parent / "locales"
    names: list[str] = []
    for language in CALIBRATION_LANGUAGES:
        with (root / language / "LC_MESSAGES" / "iso3166-1.mo").open("rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
        pairs = sorted((k, v) for k, v in catalog.items() if k and isinstance(v, str))
        if not names:
            names += [k for k, _ in pairs]  # the English originals, once
        names += [v for _, v in pairs]
    return "\n".join(names)


class Ratios:
    """Reference tokens per model token, by model (None: its tokenizer is not known)."""

    def __init__(self, registry: TokenizerRegistry):
        self._registry = registry
        self._by_spec: dict[str, Decimal] = {}

    def of(self, model: str | None) -> Decimal | None:
        info = vendor_of(model) if model else None
        spec = info.tokenizer if info else None
        if spec is None:
            return None
        if spec not in self._by_spec:
            text = calibration_text()
            self._by_spec[spec] = (Decimal(self._registry.get(REFERENCE).count(text))
                                   / Decimal(self._registry.get(spec).count(text)))
        return self._by_spec[spec]


@dataclass(slots=True)
class _Sum:
    tokens: int = 0
    restated: Decimal = field(default_factory=Decimal)  # in reference tokens
    restated_share: int = 0  # tokens of models with a known tokenizer
    paid: Decimal = field(default_factory=Decimal)


def price_index(conn: Store, ratios: Ratios, by: str = "all", weeks: int = 8,
                today: date | None = None) -> list[dict[str, Any]]:
    """A row per week (from the Monday `weeks` weeks before this one), group and currency."""
    if by not in INDEXED_BY:
        raise RequestError(f"index by one of {', '.join(INDEXED_BY)}, not {by!r}")
    monday = this_monday(weeks, today)
    first, end = monday - timedelta(weeks=weeks - 1), monday + timedelta(weeks=1)
    sums: dict[tuple[str, str | None, str], _Sum] = {}
    for week, model, origin, currency, tokens, paid in conn.execute(
            _WEEKLY, (_day(first), _day(end))):
        key = (week, _group(by, model, origin), currency)
        total = sums.setdefault(key, _Sum())
        ratio = ratios.of(model)
        total.tokens += tokens
        total.restated += tokens * (ratio if ratio is not None else 1)
        total.restated_share += tokens if ratio is not None else 0
        total.paid += Decimal(paid or 0)
    return [{"week": week, **({} if by == "all" else {by: group}), "currency": currency,
             "tokens": s.tokens,
             "reference_tokens": int(s.restated.to_integral_value()),
             "restated": round(s.restated_share / s.tokens, 4) if s.tokens else None,
             "paid": decimal_str(s.paid),
             "price_per_mtok": decimal_str((s.paid * _MILLION / s.restated).quantize(_PLACES))
             if s.restated else None}
            for (week, group, currency), s in sorted(sums.items(), key=_order)]


def _group(by: str, model: str | None, origin: str | None) -> str | None:
    if by == "all":
        return "all"
    if by == "vendor":
        info = vendor_of(model) if model else None
        return info.vendor if info else None
    return origin if by == "origin" else model


def _order(item: tuple[tuple[str, str | None, str], _Sum]) -> tuple[str, str, str]:
    (week, group, currency), _ = item
    return week, group or "", currency


def _day(day: date) -> str:
    return rfc3339(datetime(day.year, day.month, day.day, tzinfo=UTC))

