"""One finished request → one Event: the reading, its recount, its price.

Streamed and non-streamed requests, successes and failures all come through here, so there
is exactly one path from usage to cost to ledger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from ..catalog import Priced, Pricer, origin_of, vendor_of
from ..config import Route
from ..events import COUNTED, ESTIMATED, REPORTED, Event, Usage, new_event_id, rfc3339
from ..policy import Need
from ..tokenize import Recounter
from ..tokenize.recount import Count
from .call import Call, elapsed_ms

_OFFLOAD_CHARS = 32_768  # recount longer texts off the event loop
# Where each API puts the most output a request allows.
_MAX_OUTPUT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
log = logging.getLogger("tokometer.meter")


@dataclass(slots=True)
class Outcome:
    """What came back from upstream, however it ended."""

    route: Route | None
    status: int
    error_type: str | None = None
    reported: Usage | None = None
    usage_complete: bool = True  # False: the provider's final usage never arrived
    model: str | None = None
    service_tier: str | None = None
    finish_reason: str | None = None
    ttft_ms: float | None = None
    text: Callable[[], str] = lambda: ""  # the generated text, decoded only when needed


@dataclass(frozen=True, slots=True)
class Meter:
    recounter: Recounter
    pricer: Pricer
    default_max_output_tokens: int = 4096

    async def expected(self, call: Call) -> Usage:
        """The most a request may use: its input counted now, its output at the allowed max."""
        spec = _tokenizer(call, call.model.routes[0] if call.model.routes else None)

        def count(spec: str | None) -> Count:
            return self.recounter.input(spec, call.model.chat_template, call.endpoint.operation,
                                        call.body)

        try:
            if len(call.raw) > _OFFLOAD_CHARS:
                counted = await asyncio.to_thread(count, spec)
            else:
                counted = count(spec)
        except Exception:  # a failed count must not refuse the request: estimate instead
            log.exception("counting the input of model %r failed; estimating", call.model.name)
            counted = count(None)
        if call.endpoint.operation == "embeddings":
            return Usage(input_tokens=counted.tokens)
        out = next((v for k in _MAX_OUTPUT_KEYS if isinstance(v := call.body.get(k), int)
                    and not isinstance(v, bool) and v > 0), None)
        out = out or call.model.max_output_tokens or self.default_max_output_tokens
        return Usage(input_tokens=counted.tokens, output_tokens=out)

    def need(self, call: Call, routes: list[Route], usage: Usage) -> Need:
        """`usage`'s tokens, and its cost on the dearest of `routes` (None if one is unpriced,
        or priced in another currency than the server's, which its budgets are kept in)."""
        costs = [self.pricer.estimate(call.model, r, usage, call.started) for r in routes]
        known = [c for c in costs if c is not None]
        cost = max(known) if known and len(known) == len(costs) else None
        return Need(usage.input_tokens + usage.output_tokens, cost)

    async def event(self, call: Call, outcome: Outcome, event_id: str | None = None) -> Event:
        route = outcome.route
        spec = _tokenizer(call, route)
        produced = outcome.status < 400 or outcome.status == 499
        counted_in = counted_out = None
        if produced and (spec is not None or outcome.reported is None
                         or not outcome.usage_complete):
            counted_in, counted_out = await self._recount(call, spec, outcome)
        usage, source = _reading(outcome, counted_in, counted_out)
        # No route: refused before anything was sent, so nothing to pay.
        priced = (self.pricer.price(call.model, route, usage, call.started,
                                    served=outcome.model, service_tier=outcome.service_tier)
                  if route is not None else Priced(Decimal(0), None, self.pricer.currency))
        consumer = call.consumer
        return Event(
            id=event_id or new_event_id(),
            time=rfc3339(call.started),
            duration_ms=elapsed_ms(call.t0),
            ttft_ms=outcome.ttft_ms,
            key_id=consumer.key_id,
            tenant=consumer.tenant,
            app=consumer.app,
            agent=call.agent,
            task=call.task,
            end_user=call.end_user,
            consumer_region=consumer.region,
            api=call.endpoint.api,
            operation=call.endpoint.operation,
            stream=call.stream,
            provider=route.provider.name if route else None,
            provider_region=route.provider.region if route else None,
            model_requested=call.model.name or None,
            model=outcome.model or (route.model if route else None),
            model_origin=origin_of(call.model, route.model) if route else None,
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            web_search_requests=usage.web_search_requests,
            service_tier=outcome.service_tier,
            usage_source=source,
            counted_input_tokens=counted_in.tokens if counted_in and counted_in.exact else None,
            counted_output_tokens=counted_out.tokens if counted_out and counted_out.exact else None,
            cost=priced.cost,
            currency=priced.currency,
            price_ref=priced.price_ref,
            status=outcome.status,
            error_type=outcome.error_type,
            finish_reason=outcome.finish_reason,
        )

    async def _recount(self, call: Call, spec: str | None, outcome: Outcome) -> tuple[Count, Count]:
        text = outcome.text()

        def count(spec: str | None) -> tuple[Count, Count]:
            return (self.recounter.input(spec, call.model.chat_template,
                                         call.endpoint.operation, call.body),
                    self.recounter.output(spec, text))

        try:
            if len(text) + len(call.raw) > _OFFLOAD_CHARS:
                return await asyncio.to_thread(count, spec)
            return count(spec)
        except Exception:  # a recount must never cost the reading: estimate instead
            log.exception("recount with %s failed for model %r; estimating", spec,
                          call.model.name)
            return count(None)


def _tokenizer(call: Call, route: Route | None) -> str | None:
    """The model's tokenizer spec: the config's, else the catalog's for the routed model."""
    if call.model.tokenizer or route is None:
        return call.model.tokenizer
    info = vendor_of(route.model)
    return info.tokenizer if info else None


def _reading(outcome: Outcome, counted_in: Count | None,
             counted_out: Count | None) -> tuple[Usage, str]:
    """The usage to bill and where it came from: reported first, recounted when absent."""
    reported = outcome.reported
    if reported is not None and outcome.usage_complete:
        return reported, REPORTED
    if counted_out is None or counted_in is None:
        return reported or Usage(), REPORTED
    if reported is not None:  # input was reported, output was cut short
        usage = Usage(reported.input_tokens, reported.cache_read_tokens,
                      reported.cache_write_tokens, counted_out.tokens, 0,
                      reported.cache_write_1h_tokens, reported.web_search_requests)
        return usage, COUNTED if counted_out.exact else ESTIMATED
    usage = Usage(input_tokens=counted_in.tokens, output_tokens=counted_out.tokens)
    return usage, COUNTED if counted_in.exact and counted_out.exact else ESTIMATED
