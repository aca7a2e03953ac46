"""Usage → cost, in Decimal: the config's tariff (the route's, else the model's) first, else
genai-prices at the request time, for the model the provider says it served when the catalog
knows it (else the route's model), at the service tier it says it served.

genai-prices' general calculator costs more per call than the whole gateway may add
(bench/hot_path.py), so the model's price at the request time (and served tier) is looked up
through genai-prices once and, when it is flat and in units we meter (tokens by kind, 1-hour
cache writes, reasoning, web searches), multiplied out here. Tiered prices and other units go
through genai-prices' own calculator. A test holds the two to the same result for every model
in the catalog.

A tariff is in its own currency (the server's unless it says). genai-prices is in USD: for a
server in another currency its price is converted with the config's exchange rate in force on
the request's day (named in `price_ref`), and is unknown (cost null, with a warning saying why)
when there is none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, NamedTuple

import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, ModelPrice, Provider

from ..config import ExchangeRate, Model, Price, Route
from ..events import Usage, decimal_str

log = logging.getLogger("tokometer.pricing")

CATALOG_CURRENCY = "USD"
_MILLION = Decimal(1_000_000)
_THOUSAND = Decimal(1_000)
# Units a reading never holds, so they add nothing. Anything else (per-request fees,
# per-character prices, ...) goes through genai-prices' own calculator.
_IDLE_UNITS = frozenset({
    "storage_searches_kcount", "input_audio_mtok", "audio_hours", "input_image_mtok",
    "output_audio_mtok", "cache_audio_read_mtok", "input_audio_hours", "cache_image_read_mtok",
    "output_image_mtok", "input_document_kpages", "input_annotated_document_kpages",
    "input_video_mtok", "output_video_mtok",
})
_METERED_UNITS = frozenset({"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok",
                            "cache_write_1h_mtok", "output_reasoning_mtok",
                            "web_searches_kcount"})
_FAST_UNITS = _IDLE_UNITS | _METERED_UNITS
_GENAI_PROVIDERS = frozenset(p.id for p in data_snapshot.get_snapshot().providers)
GENAI_PRICES_REF = f"genai-prices {genai_prices.__version__}"
_MAX_WARNINGS = 1024


@dataclass(frozen=True, slots=True)
class Priced:
    cost: Decimal | None  # None: no price known (never recorded as free)
    price_ref: str | None
    currency: str  # the currency of `cost` (the one it would have had, when None)


class Rates(NamedTuple):
    """A flat price per unit we meter: per 1M tokens, web searches per 1,000."""

    input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal
    output: Decimal
    reasoning: Decimal
    web_search: Decimal


def cost_at(rates: Rates, usage: Usage) -> Decimal:
    """A reading at flat rates: each token in exactly one class (5-minute cache writes are the
    writes less the 1-hour ones; plain output is the output less its reasoning)."""
    tokens = (usage.uncached_input_tokens * rates.input
              + usage.cache_read_tokens * rates.cache_read
              + (usage.cache_write_tokens - usage.cache_write_1h_tokens) * rates.cache_write
              + usage.cache_write_1h_tokens * rates.cache_write_1h
              + (usage.output_tokens - usage.reasoning_tokens) * rates.output
              + usage.reasoning_tokens * rates.reasoning)
    return tokens / _MILLION + usage.web_search_requests * rates.web_search / _THOUSAND


def tariff_cost(price: Price, usage: Usage) -> Decimal:
    return cost_at(Rates(price.input, price.cache_read, price.cache_write,
                         price.cache_write if price.cache_write_1h is None
                         else price.cache_write_1h,
                         price.output, price.output, price.web_search), usage)


class Pricer:
    def __init__(self, currency: str, exchange_rates: Iterable[ExchangeRate] = ()):
        self.currency = currency
        # Newest first, so the first one of a pair on or before a day is the one in force.
        self._rates = sorted((r for r in exchange_rates if r.target == currency),
                             key=lambda r: r.since, reverse=True)
        self._warned: set[tuple[str, str]] = set()

    def price(self, model: Model, route: Route, usage: Usage, at: datetime, *,
              served: str | None = None, service_tier: str | None = None) -> Priced:
        """`served`: the model the provider says answered; `service_tier`: the tier it says
        it served at (both None before the call, for reservations and routing)."""
        tariff = route.price or model.price
        if tariff is not None:
            return Priced(tariff_cost(tariff, usage), "tariff:config",
                          tariff.currency or self.currency)
        provider_id = route.provider.price_provider or route.provider.name
        found = None
        if served and served != route.model:
            found = _genai_model(provider_id, served)
        found = found or _genai_model(provider_id, route.model)
        if found is None:
            self._warn((model.name, "unpriced"), f"no price for model {model.name!r} (route "
                       f"{route.provider.name}/{route.model}): events record cost null; add "
                       "price = {input = ..., output = ...} to the model in the config")
            return Priced(None, None, self.currency)
        provider, info = found
        ref = f"{GENAI_PRICES_REF}:{provider.id}/{info.id}"
        try:
            cost = genai_cost(provider, info, usage, at, service_tier)
        except (ValueError, LookupError) as e:  # a reading its calculator cannot price
            self._warn((model.name, "refused"), f"genai-prices cannot price a reading of model "
                       f"{model.name!r} as {ref}: {e}; events record cost null")
            return Priced(None, None, self.currency)
        if service_tier is not None and _tiered(provider, info):
            ref += f" service_tier={service_tier}"
        if self.currency == CATALOG_CURRENCY:
            return Priced(cost, ref, self.currency)
        day = at.astimezone(UTC).date()
        rate = next((r for r in self._rates if r.source == CATALOG_CURRENCY and r.since <= day),
                    None)
        if rate is None:
            usd, here = CATALOG_CURRENCY, self.currency
            self._warn((model.name, "no rate"), f"model {model.name!r} is priced by genai-prices "
                       f"in {usd}, but the server currency is {here} and the config has no "
                       f"{usd}->{here} exchange rate in force on {day}: events record cost null; "
                       f"add [[exchange_rates]] from = \"{usd}\", to = \"{here}\", rate = ..., "
                       f"since = {day}, or give the model a price in {here}")
            return Priced(None, None, self.currency)
        return Priced(cost * rate.rate, f"{ref}; 1 {CATALOG_CURRENCY} = "
                      f"{decimal_str(rate.rate)} {self.currency} (rate since {rate.since})",
                      self.currency)

    def estimate(self, model: Model, route: Route, usage: Usage, at: datetime, *,
                 service_tier: str | None = None) -> Decimal | None:
        """What `usage` would cost on `route` in the server currency, before the call (for
        reservations and routing), at the tier the request asks for: None when unknown or
        priced in another currency."""
        priced = self.price(model, route, usage, at, service_tier=service_tier)
        return priced.cost if priced.currency == self.currency else None

    def _warn(self, once: tuple[str, str], message: str) -> None:
        # bounded: ingested readings name models of their own (ingest/)
        if once not in self._warned and len(self._warned) < _MAX_WARNINGS:
            self._warned.add(once)
            log.warning("%s", message)


@lru_cache(maxsize=4096)
def _genai_model(provider_id: str, model_ref: str) -> tuple[Provider, ModelInfo] | None:
    snapshot = data_snapshot.get_snapshot()
    pid = provider_id if provider_id in _GENAI_PROVIDERS else None
    try:
        return snapshot.find_provider_model(model_ref, None, pid, None)
    except LookupError:
        return None


def _tiered(provider: Provider, info: ModelInfo) -> bool:
    """Whether the catalog prices this model differently by service tier (and, as its own
    calculator decides, only for a model of the provider it was found under)."""
    key = (id(provider), id(info))  # the catalog's objects live as long as the process
    found = _tiered_models.get(key)
    if found is None:
        found = _tiered_models[key] = any(
            "service_tier" in v.when for v in info.price_variants or ()) and any(
            info is m for m in provider.models)
    return found


_tiered_models: dict[tuple[int, int], bool] = {}


def genai_cost(provider: Provider, info: ModelInfo, usage: Usage, at: datetime,
               service_tier: str | None = None) -> Decimal:
    """The cost genai-prices gives, from flat rates worked out once per price (and tier) and
    multiplied here; a price that is not flat goes through its own calculator."""
    context = {"service_tier": service_tier} \
        if service_tier is not None and _tiered(provider, info) else None
    prices = info.get_prices(at)
    key: tuple[Any, ...] = (id(prices),)
    if context is not None:  # which tier, and which of its variants are in force at `at`
        key += (service_tier, *(v.constraint is None or v.constraint.active(at)
                                for v in info.price_variants or ()))
    try:
        rates = _flat_rates[key]
    except KeyError:  # the catalog's price objects live as long as the process
        rates = _flat_rates[key] = _flat(info.get_prices(at, context) if context else prices)
    if rates is None:
        return info.calc_price(genai_usage(usage), provider, genai_request_timestamp=at,
                               price_context=context).total_price
    return cost_at(rates, usage)


_flat_rates: dict[tuple[Any, ...], Rates | None] = {}


def _flat(prices: ModelPrice) -> Rates | None:
    """The rates of a flat price, or None if it is not flat or prices units we do not meter.

    A unit the catalog does not price falls to the one it is a part of, as in genai-prices:
    1-hour writes to cache writes, cache reads and writes to input, reasoning to output."""
    used = {k for k, v in vars(prices).items() if v is not None and not k.startswith("_")}
    values = {k: getattr(prices, k, None) for k in _METERED_UNITS}
    if not used <= _FAST_UNITS or not all(v is None or isinstance(v, Decimal)
                                          for v in values.values()):
        return None
    inp = values["input_mtok"] or Decimal(0)
    out = values["output_mtok"] or Decimal(0)
    cache_write = inp if values["cache_write_mtok"] is None else values["cache_write_mtok"]
    return Rates(
        input=inp,
        cache_read=inp if values["cache_read_mtok"] is None else values["cache_read_mtok"],
        cache_write=cache_write,
        cache_write_1h=(cache_write if values["cache_write_1h_mtok"] is None
                        else values["cache_write_1h_mtok"]),
        output=out,
        reasoning=out if values["output_reasoning_mtok"] is None
        else values["output_reasoning_mtok"],
        web_search=values["web_searches_kcount"] or Decimal(0),
    )


def genai_usage(usage: Usage) -> genai_prices.Usage:
    return genai_prices.Usage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        output_tokens=usage.output_tokens,
        output_reasoning_tokens=usage.reasoning_tokens,
        web_searches=usage.web_search_requests,
    )
