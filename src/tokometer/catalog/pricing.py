"""Usage → cost, in Decimal: the config's tariff first, else genai-prices at the request time.

genai-prices' general calculator costs ~0.3 ms a call, more than the whole gateway may add;
so the model's price at the request time is looked up through genai-prices (cached) and, when
it is a plain per-token price, multiplied out here. Anything richer (tiers, other units) goes
through genai-prices' own calculator. A test holds the two to the same result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import genai_prices
from genai_prices import data_snapshot

from ..config import Model, Price, Route
from ..events import Usage

log = logging.getLogger("tokometer.pricing")

_MILLION = Decimal(1_000_000)
_PLAIN_KEYS = frozenset({"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"})
_GENAI_PROVIDERS = frozenset(p.id for p in data_snapshot.get_snapshot().providers)
GENAI_PRICES_REF = f"genai-prices {genai_prices.__version__}"


@dataclass(frozen=True, slots=True)
class Priced:
    cost: Decimal | None  # None: no price known (never recorded as free)
    price_ref: str | None


def tariff_cost(price: Price, usage: Usage) -> Decimal:
    return (
        usage.uncached_input_tokens * price.input
        + usage.cache_read_tokens * price.cache_read
        + usage.cache_write_tokens * price.cache_write
        + usage.output_tokens * price.output
    ) / _MILLION


class Pricer:
    def __init__(self, currency: str):
        self.currency = currency
        self._warned: set[str] = set()

    def price(self, model: Model, route: Route, usage: Usage, at: datetime) -> Priced:
        if model.price is not None:
            return Priced(tariff_cost(model.price, usage), "tariff:config")
        if self.currency == "USD":
            found = _genai_model(route.provider.price_provider or route.provider.name, route.model)
            if found is not None:
                provider, info = found
                cost = genai_cost(provider, info, usage, at)
                return Priced(cost, f"{GENAI_PRICES_REF}:{provider.id}/{info.id}")
        if model.name not in self._warned:
            self._warned.add(model.name)
            log.warning("no price for model %r (route %s/%s): events record cost null; add "
                        "price = {input = ..., output = ...} to the model in the config",
                        model.name, route.provider.name, route.model)
        return Priced(None, None)


@lru_cache(maxsize=4096)
def _genai_model(provider_id: str, model_ref: str) -> tuple[Any, Any] | None:
    snapshot = data_snapshot.get_snapshot()
    pid = provider_id if provider_id in _GENAI_PROVIDERS else None
    try:
        return snapshot.find_provider_model(model_ref, None, pid, None)
    except LookupError:
        return None


def genai_cost(provider: Any, info: Any, usage: Usage, at: datetime) -> Decimal:
    prices = info.get_prices(at)
    fields = {k: v for k, v in vars(prices).items() if v is not None and not k.startswith("_")}
    if fields.keys() <= _PLAIN_KEYS and all(isinstance(v, Decimal) for v in fields.values()):
        inp = fields.get("input_mtok", Decimal(0))
        return (
            usage.uncached_input_tokens * inp
            + usage.cache_read_tokens * fields.get("cache_read_mtok", inp)
            + usage.cache_write_tokens * fields.get("cache_write_mtok", inp)
            + usage.output_tokens * fields.get("output_mtok", Decimal(0))
        ) / _MILLION
    calc = info.calc_price(genai_usage(usage), provider, genai_request_timestamp=at)
    return calc.total_price


def genai_usage(usage: Usage) -> genai_prices.Usage:
    return genai_prices.Usage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
    )
