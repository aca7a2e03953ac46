"""Readings reported from elsewhere become events like the gateway's own: attributed by the
key that sent them, priced here (a cost the app says is kept beside, as `reported_cost`),
charged to the budgets covering them in the period of their own time, and appended once.

A reading is past usage: it is never refused for a budget, only counted. Its identities are
claimed in the transaction that appends its event (ledger/claims.py), so a replay, however
it arrives and in whichever process, is answered as a duplicate of the first recording.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any

from ..catalog import Priced, Pricer, origin_of
from ..catalog.plans import Charges
from ..config import Model, Provider, Route, Settings
from ..events import INGEST, REPORTED, Event, new_event_id, rfc3339
from ..impact import Impact, Impacts, event_fields
from ..ledger import Ledger
from ..policy import Consumer
from ..policy.sync import BudgetSync
from .readings import Reading

log = logging.getLogger("tokometer.ingest")

ACCEPTED, DUPLICATE, REJECTED = "accepted", "duplicate", "rejected"
# OpenTelemetry's provider names where genai-prices knows the provider by another
_PRICE_PROVIDERS = {"gcp.gemini": "google", "gcp.vertex_ai": "google", "gcp.gen_ai": "google",
                    "mistral_ai": "mistral", "x_ai": "x-ai", "azure.ai.openai": "azure",
                    "azure.ai.inference": "azure", "aws.bedrock": "aws"}


@dataclass(frozen=True, slots=True)
class Result:
    label: str  # the reading's id as the app named it
    result: str  # ACCEPTED, DUPLICATE or REJECTED
    event_id: str | None = None  # the event holding the reading (the first one, for a replay)
    reason: str | None = None  # why it was rejected, or what of it was not kept

    def json(self) -> dict[str, Any]:
        return {k: v for k, v in (("id", self.label), ("result", self.result),
                                  ("event_id", self.event_id), ("reason", self.reason))
                if v is not None}


@dataclass(frozen=True, slots=True)
class Refused:
    """A reading the channel could not make out, with its label."""

    label: str
    reason: str


class Recorder:
    def __init__(self, settings: Settings, pricer: Pricer, ledger: Ledger,
                 budgets: BudgetSync):
        self.settings = settings
        self.pricer = pricer
        self.ledger = ledger
        self.budgets = budgets
        self.impacts = Impacts()
        self.charges = Charges(settings.plans, settings.server.currency)

    async def record(self, who: Consumer, readings: list[Reading | Refused]) -> list[Result]:
        """Each reading's result, in order; LedgerError if the store could not record one
        (the app then sends the batch again: what was recorded is answered as duplicate)."""
        done = await asyncio.gather(*(self._one(who, r) for r in readings),
                                    return_exceptions=True)
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        return done  # type: ignore[return-value]  # no exception among them

    async def _one(self, who: Consumer, reading: Reading | Refused) -> Result:
        if isinstance(reading, Refused):
            return Result(reading.label, REJECTED, reason=reading.reason)
        currency, note = self.settings.server.currency, None
        if reading.reported_cost is not None and reading.reported_currency not in (None,
                                                                                  currency):
            note = (f"its cost in {reading.reported_currency} is not kept: this meter keeps "
                    f"{currency} (the reading is priced here all the same)")
            reading = replace(reading, reported_cost=None)
        event = self.event(who, reading)
        claims = tuple((who.tenant or "", origin, rid) for origin, rid in reading.identities)
        recorded = await self.ledger.append(event, self.budgets.charging(event), claims)
        if recorded != event.id:
            return Result(reading.label, DUPLICATE, recorded)
        self.budgets.guard.charge(event)
        return Result(reading.label, ACCEPTED, event.id, note)

    def event(self, who: Consumer, reading: Reading) -> Event:
        """The reading as an event of `who`'s."""
        currency = self.settings.server.currency
        model, route = self._route(reading.provider, reading.model, reading.model_requested)
        usage = reading.usage
        try:
            priced = self.pricer.price(model, route, usage, reading.time, served=reading.model,
                                       service_tier=reading.service_tier)
        except Exception:  # unknown, not free
            log.exception("pricing an ingested reading of %r failed", reading.model)
            priced = Priced(None, None, currency)
        impact = self._impact(model, route, reading)
        return Event(
            id=new_event_id(), time=rfc3339(reading.time), duration_ms=reading.duration_ms or 0.0,
            ttft_ms=None, key_id=who.key_id, tenant=who.tenant, app=who.app,
            agent=reading.agent, task=reading.task, end_user=reading.end_user,
            consumer_region=who.region, api=reading.api, operation=reading.operation,
            stream=False, provider=reading.provider, provider_region=route.provider.region,
            model_requested=reading.model_requested, model=reading.model,
            model_origin=origin_of(model, reading.model),
            input_tokens=usage.input_tokens, cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens, usage_source=REPORTED,
            counted_input_tokens=None, counted_output_tokens=None, cost=priced.cost,
            currency=priced.currency, price_ref=priced.price_ref, status=reading.status,
            charge=self.charges.charge(who, reading.model_requested, reading.model, usage,
                                       priced.cost, priced.currency),
            error_type=reading.error_type, finish_reason=reading.finish_reason,
            service_tier=reading.service_tier, source=INGEST,
            reported_cost=reading.reported_cost, **event_fields(impact))

    def _route(self, provider_name: str, model_name: str, requested: str | None
               ) -> tuple[Model, Route]:
        """The configured model and route a reading was served by, found by the provider's
        name and the model's (the route's, else the config's own name for it): the model
        that answered, else the one asked for (a provider answers `gpt-4o-mini` as
        `gpt-4o-mini-2024-07-18`, and the route's tariff prices it, as on the gateway's own
        calls); else one standing for it, priced by genai-prices under the provider's name."""
        for name in dict.fromkeys(n for n in (model_name, requested) if n):
            for model in self.settings.models.values():
                for route in model.routes:
                    if route.provider.name == provider_name and name in (route.model,
                                                                       model.name):
                        return model, route
        provider = self.settings.providers.get(provider_name) or Provider(
            name=provider_name, api="ingest", base_url="", api_key_env=None, api_key=None,
            region=None, price_provider=_PRICE_PROVIDERS.get(provider_name), launch=None)
        route = Route(provider, model_name)
        return Model(model_name, (route,), None, None, None, None), route

    def _impact(self, model: Model, route: Route, reading: Reading) -> Impact | None:
        """Modelled from the reading's tokens and duration, when it says how long it took
        and the call produced something."""
        if reading.duration_ms is None or reading.status >= 400:
            return None
        try:
            return self.impacts.of(model, route, reading.model, reading.usage,
                                   reading.duration_ms / 1000)
        except Exception:  # unknown, not zero
            log.exception("energy of an ingested reading of %r failed", reading.model)
            return None

