"""Residency and origin rules: which routes a consumer's prompt may take.

A route is judged by where its provider serves (`region`) and whose model it runs (the
vendor's country, `origin`). A country that is not known cannot be shown to keep a rule, so
it breaks any rule that asks about it: rules fail closed.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..catalog import origin_of
from ..config import Model, Route, Rule
from ..errors import PolicyError


def breach(rule: Rule, route: Route, origin: str | None) -> str | None:
    """Why `route` breaks `rule`, or None when it keeps it."""
    region = route.provider.region
    where = f"provider {route.provider.name} serves from {region or 'an unknown country'}"
    whose = f"model {route.model} comes from {origin or 'an unknown country'}"
    if rule.allow_regions is not None and region not in rule.allow_regions:
        return f"{where}, not an allowed region"
    if rule.deny_regions and (region is None or region in rule.deny_regions):
        return f"{where}, a denied region" if region else where
    if rule.allow_origins is not None and origin not in rule.allow_origins:
        return f"{whose}, not an allowed origin"
    if rule.deny_origins and (origin is None or origin in rule.deny_origins):
        return f"{whose}, a denied origin" if origin else whose
    return None


def allowed_routes(model: Model, routes: list[Route], rules: Sequence[Rule]) -> list[Route]:
    """The routes that keep every rule; PolicyError (403) naming each breach if none does."""
    if not rules:
        return routes
    kept, why = [], []
    for route in routes:
        breaches = [(rule, b) for rule in rules
                    if (b := breach(rule, route, origin_of(model, route.model))) is not None]
        if breaches:
            why.extend(breaches)
        else:
            kept.append(route)
    if not kept:
        detail = "; ".join(f"{rule.name} ({rule.scope}): {b}" for rule, b in why)
        raise PolicyError(f"no route of model {model.name!r} keeps this key's residency "
                          f"rules: {detail}", status=403, type="permission_error",
                          code="residency_rule")
    return kept
