"""Residency and origin rules: which routes a consumer's prompt may take.

A route is judged by where its provider serves (`region`) and whose model it runs (the
vendor's country, `origin`). A country that is not known cannot be shown to keep a rule, so
it breaks any rule that asks about it: rules fail closed.
"""

from __future__ import annotations

from ..config import Route, Rule


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
