"""OpenRouter's `provider` object: the client's say in how its request is routed.

Parsed and checked with the request; the gateway removes it before forwarding.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..amounts import amount
from ..errors import RequestError

_SORTS = ("price", "latency", "throughput")  # throughput: ranked by latency here
_MAX_PRICE = Decimal(1_000_000)  # per 1M tokens: far above any model's, far below absurd


@dataclass(frozen=True, slots=True)
class Steering:
    """OpenRouter's `provider` object: the client's say in routing (prices per 1M tokens)."""

    order: tuple[str, ...] = ()
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: str | None = None
    max_prompt: Decimal | None = None
    max_completion: Decimal | None = None


def parse_steering(value: Any) -> Steering:
    if not isinstance(value, dict):
        raise RequestError("'provider' must be an object (OpenRouter's provider preferences)")
    known = {"order", "only", "ignore", "allow_fallbacks", "sort", "max_price"}
    if unknown := sorted(set(value) - known):
        raise RequestError(f"provider.{unknown[0][:64]} is not supported here; "
                           f"use {', '.join(sorted(known))}")
    fallbacks = value.get("allow_fallbacks", True)
    if not isinstance(fallbacks, bool):
        raise RequestError("provider.allow_fallbacks must be true or false")
    sort = value.get("sort")
    if sort is not None and sort not in _SORTS:
        raise RequestError(f"provider.sort must be one of {', '.join(_SORTS)}")
    only = value.get("only")
    max_price = value.get("max_price", {})
    if not isinstance(max_price, dict):
        raise RequestError("provider.max_price must be an object like "
                           '{"prompt": 1, "completion": 2} (per 1M tokens)')
    return Steering(
        order=tuple(_names(value, "order")),
        only=None if only is None else frozenset(_names(value, "only")),
        ignore=frozenset(_names(value, "ignore")),
        allow_fallbacks=fallbacks,
        sort=sort,
        max_prompt=_price(max_price, "prompt"),
        max_completion=_price(max_price, "completion"),
    )


def _names(value: dict[str, Any], key: str) -> list[str]:
    names = value.get(key, [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RequestError(f"provider.{key} must be a list of provider names")
    return [n.lower() for n in names]


def _price(max_price: dict[str, Any], key: str) -> Decimal | None:
    value = max_price.get(key)
    if value is None:
        return None
    bounds = f"provider.max_price.{key} must be a number from 0 to {_MAX_PRICE} (per 1M tokens)"
    try:
        price = amount(value, f"provider.max_price.{key}", floats=True)
    except RequestError as e:
        raise RequestError(f"{bounds}: {e.message}") from None
    if price > _MAX_PRICE:
        raise RequestError(bounds)
    return price
