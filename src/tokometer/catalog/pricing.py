"""Usage → cost, in Decimal: the config's tariff (the route's, else the model's) first, else
genai-prices at the request time.

genai-prices' general calculator costs ~0.3 ms a call, more than the whole gateway may add;
so the model's price at the request time is looked up through genai-prices (cached) and, when
its token prices are flat, multiplied out here (units we never meter, such as web searches,
cost nothing). Tiered prices go through genai-prices' own calculator. A test holds the two to
the same result for every model in the catalog.
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
_TOKEN_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")
# Units a token-only reading never uses, so they add nothing. Anything else (per-request fees,
# per-character prices, ...) goes through genai-prices' own calculator.
_IDLE_UNITS = frozenset({
    "web_searches_kcount", "storage_searches_kcount", "cache_write_1h_mtok", "input_audio_mtok",
    "audio_hours", "input_image_mtok", "output_audio_mtok", "cache_audio_read_mtok",
    "input_audio_hours", "cache_image_read_mtok", "output_image_mtok", "input_document_kpages",
    "input_annotated_document_kpages", "input_video_mtok", "output_video_mtok",
})
_FAST_UNITS = _IDLE_UNITS | frozenset(_TOKEN_KEYS)
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
        tariff = route.price or model.price
        if tariff is not None:
            return Priced(tariff_cost(tariff, usage), "tariff:config")
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
    rates = _flat_rates.get(id(prices), _UNSEEN)
    if rates is _UNSEEN:  # the catalog's price objects live as long as the process
        rates = _flat_rates[id(prices)] = _flat(prices)
    if rates is None:
        return info.calc_price(genai_usage(usage), provider, genai_request_timestamp=at).total_price
    inp, cache_read, cache_write, out = rates
    return (usage.uncached_input_tokens * inp + usage.cache_read_tokens * cache_read
            + usage.cache_write_tokens * cache_write + usage.output_tokens * out) / _MILLION


_UNSEEN = object()
_flat_rates: dict[int, tuple[Decimal, Decimal, Decimal, Decimal] | None] = {}


def _flat(prices: Any) -> tuple[Decimal, Decimal, Decimal, Decimal] | None:
    """(input, cache read, cache write, output) per 1M tokens, or None if not flat."""
    used = {k for k, v in vars(prices).items() if v is not None and not k.startswith("_")}
    inp, out, cache_read, cache_write = (getattr(prices, k, None) for k in _TOKEN_KEYS)
    if not used <= _FAST_UNITS or not all(v is None or isinstance(v, Decimal)
                                          for v in (inp, out, cache_read, cache_write)):
        return None
    inp = Decimal(0) if inp is None else inp
    return (inp, inp if cache_read is None else cache_read,
            inp if cache_write is None else cache_write, Decimal(0) if out is None else out)


def genai_usage(usage: Usage) -> genai_prices.Usage:
    return genai_prices.Usage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
    )
