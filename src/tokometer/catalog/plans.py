"""What a consumer is charged for its tokens under its price plan (config `[[plans]]`): the
plan's sell tariff for the model (the config's name for it, else the one that answered),
else the cost with the plan's markup, in the server currency; None without a plan, when
neither applies (a cost unknown), or for a cost in another currency (a tariff's own), so a
charge and its cost are always in one currency."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from ..config import Plan
from ..events import Event, Usage
from .pricing import tariff_cost


class Charges:
    def __init__(self, plans: Iterable[Plan], currency: str):
        self._plans = tuple(plans)
        self.currency = currency

    def charge(self, who: object, model_requested: str | None, model: str | None,
               usage: Usage, cost: Decimal | None, currency: str) -> Decimal | None:
        """`who`: what a plan's scope looks at (a Consumer, an Event)."""
        plan = self._plan(who)
        if plan is None or currency != self.currency:  # a charge is in its cost's currency
            return None
        tariff = plan.tariffs.get(model_requested or "") or plan.tariffs.get(model or "")
        if tariff is not None:
            return tariff_cost(tariff, usage)
        if plan.markup is None or cost is None:
            return None
        return cost * (1 + plan.markup)

    def most(self, who: object, model_requested: str | None, model: str | None,
             usage: Usage, cost: Decimal | None, currency: str) -> Decimal | None:
        """The most `usage` of `model` (a route's) costing `cost` may be charged, before the
        call says which model answered (None if unknown). A tariff for the name asked
        decides; else a tariff applies by the name the provider answers with (OpenAI answers
        gpt-4o-mini as gpt-4o-mini-2024-07-18), so the answer may be charged any tariff of
        the plan, or none (its markup, else its cost)."""
        def charged(answered: str | None) -> Decimal | None:
            charge = self.charge(who, model_requested, answered, usage, cost, currency)
            return cost if charge is None else charge

        plan = self._plan(who)
        if plan is None or currency != self.currency or (model_requested or "") in plan.tariffs:
            return charged(model)
        amounts = [charged(model), charged(None),
                   *(tariff_cost(t, usage) for t in plan.tariffs.values())]
        return None if None in amounts else max(a for a in amounts if a is not None)

    def _plan(self, who: object) -> Plan | None:
        return next((p for p in self._plans if p.scope.covers(who)), None)

    def of(self, event: Event) -> Decimal | None:
        """An event's charge, from its own fields (a correction's: of its differences)."""
        usage = Usage(event.input_tokens, event.cache_read_tokens, event.cache_write_tokens,
                      event.output_tokens, event.reasoning_tokens,
                      event.cache_write_1h_tokens or 0, event.web_search_requests or 0)
        return self.charge(event, event.model_requested, event.model, usage, event.cost,
                           event.currency)
