"""One finished request → one Event: the reading, its recount, its price.

Streamed and non-streamed requests, successes and failures all come through here, so there
is exactly one path from usage to cost to ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from ..catalog import Priced, Pricer, origin_of, vendor_of
from ..catalog.plans import Charges
from ..config import Route
from ..counting import Recounter
from ..counting.recount import Count, estimate
from ..errors import PolicyError, RequestError
from ..events import (
    COUNTED,
    ESTIMATED,
    REPORTED,
    Event,
    Outcome,
    Usage,
    elapsed_ms,
    new_event_id,
    rfc3339,
)
from ..impact import Impact, Impacts, event_fields, figure, watts_per_core
from ..policy import Need
from ..provenance.registry import Mark
from ..usage.dialects import MAX_TOKENS
from .call import Call, clip

_OFFLOAD_CHARS = 32_768  # recount longer texts off the event loop
# Where each API puts the most output a request allows, and how many answers it wants
# (a completion's `best_of` answers are all generated and billed, like `n`).
_MAX_OUTPUT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_CHOICES_KEYS = ("n", "best_of")
MAX_CHOICES = 128  # OpenAI's own bound on `n`
# Where a request names input the provider keeps (OpenAI Responses): not in the body, so not
# in the reservation either.
_STORED_CONTEXT_KEYS = ("previous_response_id", "conversation", "prompt")
# The operations whose output a client may leave unbounded (Anthropic requires max_tokens).
_UNBOUNDED_OPERATIONS = frozenset({"chat", "text_completion", "responses"})
# The tiers a request may ask for by name, and then is priced at (OpenAI's `service_tier`).
REQUESTED_TIERS = frozenset({"default", "flex", "priority", "scale"})
log = logging.getLogger("tokometer.meter")


@dataclass(frozen=True, slots=True)
class Meter:
    recounter: Recounter
    pricer: Pricer
    default_max_output_tokens: int = 4096
    impacts: Impacts = field(default_factory=Impacts)
    charges: Charges | None = None  # the consumers' price plans

    async def expected(self, call: Call) -> Usage:
        """The most a request may use: its input counted now, and the most output it allows,
        for each of the choices it asks for. RequestError if those bounds are malformed.

        The input is counted for each route it may take (their tokenizers and image rules
        differ: gpt-4o-mini bills an image as 33 times gpt-4o's tokens), and the largest kept.
        """
        out = worst_output(call.body, self._default_output(call))
        routes = [r for r in call.model.routes if r.provider.api == call.endpoint.api]
        ways: dict[tuple[str | None, str | None], None] = dict.fromkeys(
            (_tokenizer(call, r), r.model) for r in routes) or {(None, None): None}

        def count(spec: str | None, model: str | None) -> int:
            return self._input(call, spec, model).tokens

        def counted(spec: str | None, model: str | None) -> int:
            try:
                return count(spec, model)
            except Exception:  # a failed count must not refuse the request: estimate instead
                log.exception("counting the input of model %r failed; estimating",
                              call.model.name)
            try:
                return count(None, model)
            except Exception:  # a body too deeply nested to walk: estimate from its size
                return _size_estimate(call)

        def largest() -> int:
            return max(counted(spec, model) for spec, model in ways)

        if len(call.raw) > _OFFLOAD_CHARS:
            tokens = await asyncio.to_thread(largest)
        else:
            tokens = largest()
        if call.endpoint.operation == "embeddings":
            return Usage(input_tokens=tokens)
        return Usage(input_tokens=tokens, output_tokens=out)

    def check_reservable(self, call: Call) -> None:
        """PolicyError for a request whose worst case cannot be known before the call: one
        that continues a conversation the provider stores, whose input it does not carry."""
        if call.endpoint.operation != "responses":
            return
        if stored := [k for k in _STORED_CONTEXT_KEYS if call.body.get(k) is not None]:
            raise PolicyError(
                f"a budget or token limit covers this key, and a request with {stored[0]!r} "
                "continues a conversation the provider stores, whose size the gateway cannot "
                "reserve for: send the conversation in 'input' instead",
                status=402, type="insufficient_quota", code="budget_exceeded")

    def unstated_bound(self, call: Call) -> int | None:
        """The output bound reserved for a request that states none, to send upstream with
        it; None when it states one (or its API has none)."""
        if call.endpoint.operation not in _UNBOUNDED_OPERATIONS or any(
                call.body.get(k) is not None for k in _MAX_OUTPUT_KEYS):
            return None
        return self._default_output(call)

    def _default_output(self, call: Call) -> int:
        """The output reserved for a request that bounds none: the model's, else the server's."""
        return call.model.max_output_tokens or self.default_max_output_tokens

    def need(self, call: Call, routes: list[Route], usage: Usage) -> Need:
        """`usage`'s tokens, and its cost on the dearest of `routes` at the service tier the
        request asks for (None if one is unpriced, or priced in another currency than the
        server's, which its budgets are kept in).

        The input is priced at the dearest of the input and cache-write rates: a provider may
        write the whole prompt to its cache (Anthropic bills that at 1.25 times the input, and
        twice for an hour).
        """
        tier = call.body.get("service_tier")
        tier = tier if tier in REQUESTED_TIERS else None  # "auto" and absent: the default
        n = usage.input_tokens
        ways = (usage, replace(usage, cache_write_tokens=n),
                replace(usage, cache_write_tokens=n, cache_write_1h_tokens=n))
        priced = [(r, u, self.pricer.estimate(call.model, r, u, call.started,
                                              service_tier=tier))
                  for r in routes for u in ways]
        cost = _dearest([c for _, _, c in priced])
        charge = _dearest([self._charge(call, r.model, u, c) for r, u, c in priced])
        # the modelled ceiling: the whole output at the model's own speed, the high end; a
        # measured local server's energy has no bound before it runs (its CPU time)
        ceilings = [None if watts_per_core(r.provider) is not None else
                    self.impacts.of(call.model, r, None, usage, math.inf) for r in routes]
        energy = co2e = None
        if ceilings and None not in ceilings:
            energy = max(figure(c.energy_wh.high) for c in ceilings if c is not None)
            co2e = max(figure(c.co2e_g.high) for c in ceilings if c is not None)
        return Need(usage.input_tokens + usage.output_tokens, cost, energy, co2e, charge)

    def _charge(self, call: Call, model: str | None, usage: Usage,
                cost: Decimal | None) -> Decimal | None:
        """The most the consumer may be charged for `usage` of `model` costing `cost`: its
        plan's charge (by any tariff the answer's model may name), else the cost."""
        if self.charges is None:
            return cost
        return self.charges.most(call.consumer, call.model.name or None, model, usage, cost,
                                 self.pricer.currency)

    async def event(self, call: Call, outcome: Outcome, event_id: str | None = None,
                    mark: Mark | None = None) -> Event:
        route = outcome.route
        counted_in: Count | None
        counted_out: Count | None
        try:
            usage, source, counted_in, counted_out = await self._measure(call, outcome)
        except Exception:  # a failing meter still records a reading, and never a free one
            log.exception("metering event %s failed; recording an estimate", event_id)
            usage, source, counted_in, counted_out = _fallback(call, outcome), ESTIMATED, None, None
        try:
            priced = self._price(call, outcome, usage)
        except Exception:  # unknown, not free: a budget then spends the reservation (guard.py)
            log.exception("pricing event %s failed; its cost is unknown", event_id)
            priced = Priced(None, None, self.pricer.currency)
        duration_ms = elapsed_ms(call.t0)
        try:
            received = outcome.received or outcome.answer  # with an explicit label's notice
            output_sha256 = _sha256(received()) if outcome.produced else None
        except Exception:  # the text that broke the meter: the reading stands without it
            output_sha256 = None
        try:
            impact = self._impact(call, outcome, usage, duration_ms)
        except Exception:  # unknown, not zero
            log.exception("energy of event %s failed; it has none", event_id)
            impact = None
        consumer = call.consumer
        model = clip(outcome.model) or (route.model if route else None)
        charge = None if self.charges is None else self.charges.charge(
            consumer, call.model.name or None, model, usage, priced.cost, priced.currency)
        return Event(
            id=event_id or new_event_id(),
            time=rfc3339(call.started),
            duration_ms=duration_ms,
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
            model=model,
            model_origin=origin_of(call.model, route.model) if route else None,
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            web_search_requests=usage.web_search_requests,
            service_tier=clip(outcome.service_tier),
            usage_source=source,
            counted_input_tokens=counted_in.tokens if counted_in and counted_in.exact else None,
            counted_output_tokens=counted_out.tokens if counted_out and counted_out.exact else None,
            cost=priced.cost,
            currency=priced.currency,
            price_ref=priced.price_ref,
            charge=charge,
            status=outcome.status,
            error_type=clip(outcome.error_type),
            finish_reason=clip(outcome.finish_reason),
            output_sha256=output_sha256,
            fingerprint_sha256=mark.sha256 if mark is not None else None,
            **event_fields(impact),
        )

    def _impact(self, call: Call, outcome: Outcome, usage: Usage,
                duration_ms: float) -> Impact | None:
        """Energy and CO2e, for a request a provider served (no route: nothing ran): measured
        for a local server, else modelled from the event's own tokens and duration."""
        if outcome.route is None or not outcome.produced:  # nothing generated, or nobody ran
            return None
        if outcome.server_cpu_s is not None:  # a local server's, measured
            return self.impacts.measured(outcome.route.provider, outcome.server_cpu_s)
        return self.impacts.of(call.model, outcome.route, clip(outcome.model), usage,
                               duration_ms / 1000)

    def _price(self, call: Call, outcome: Outcome, usage: Usage) -> Priced:
        # No route: refused before anything was sent, so nothing to pay.
        if outcome.route is None:
            return Priced(Decimal(0), None, self.pricer.currency)
        return self.pricer.price(call.model, outcome.route, usage, call.started,
                                 served=clip(outcome.model), service_tier=outcome.service_tier)

    async def _measure(self, call: Call, outcome: Outcome
                       ) -> tuple[Usage, str, Count | None, Count | None]:
        """The reading, where it came from, and the recount (None where none was needed)."""
        if not outcome.produced:
            return outcome.reported or Usage(), REPORTED, None, None
        spec = _tokenizer(call, outcome.route)
        reported, complete = _plausible(outcome)
        if reported is not None and complete and spec is None:
            return reported, REPORTED, None, None
        counted_in, counted_out = await self._recount(call, spec, outcome)
        if reported is not None and complete:
            return reported, REPORTED, counted_in, counted_out
        return (*_reading(reported, counted_in, counted_out), counted_in, counted_out)

    async def _recount(self, call: Call, spec: str | None, outcome: Outcome) -> tuple[Count, Count]:
        text = outcome.answer()

        def count(spec: str | None) -> tuple[Count, Count]:
            return (self._input(call, spec, outcome.route.model if outcome.route else None),
                    self.recounter.output(spec, text))

        try:
            if len(text) + len(call.raw) > _OFFLOAD_CHARS:
                counted_in, counted_out = await asyncio.to_thread(count, spec)
            else:
                counted_in, counted_out = count(spec)
        except Exception:  # a recount must never cost the reading: estimate instead
            log.exception("recount with %s failed for model %r; estimating", spec,
                          call.model.name)
            counted_in, counted_out = count(None)
        if outcome.tool_call:
            counted_out = Count(counted_out.tokens, exact=False)
        return counted_in, counted_out

    def _input(self, call: Call, spec: str | None, model: str | None) -> Count:
        """The request's input counted with `spec` for the provider's `model`, once per
        request: a metered request's reservation counted it already."""
        key = (spec, model)
        count = call.input_counts.get(key)
        if count is None:
            count = call.input_counts[key] = self.recounter.input(
                spec, call.model.chat_template, call.endpoint.operation, call.body, model)
        return count


def _sha256(text: str) -> str | None:
    """Of the generated text as the client received it, in UTF-8 (a lone surrogate, which
    UTF-8 cannot hold, as '?'); None when there is none."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest() if text else None


def _tokenizer(call: Call, route: Route | None) -> str | None:
    """The model's tokenizer spec: the config's, else the catalog's for the routed model."""
    if call.model.tokenizer or route is None:
        return call.model.tokenizer
    info = vendor_of(route.model)
    return info.tokenizer if info else None


def _plausible(outcome: Outcome) -> tuple[Usage | None, bool]:
    """The reported usage and whether it is complete, distrusting what cannot be right: a
    negative count, no input (every request has some), a part larger than its whole (more
    cached input than input: a negative cost; more 1-hour writes than writes), or no output
    for an answer with text (then the output is recounted)."""
    reported = outcome.reported
    if reported is None or reported.input_tokens <= 0 or min(
            reported.cache_read_tokens, reported.cache_write_tokens, reported.output_tokens,
            reported.reasoning_tokens, reported.cache_write_1h_tokens,
            reported.web_search_requests) < 0 \
            or reported.uncached_input_tokens < 0 \
            or reported.cache_write_1h_tokens > reported.cache_write_tokens:
        return None, False
    if reported.output_tokens == 0 and outcome.answer():
        return reported, False
    return reported, outcome.usage_complete


def _reading(reported: Usage | None, counted_in: Count, counted_out: Count) -> tuple[Usage, str]:
    """The usage to bill when the provider's is missing or incomplete: recounted."""
    if reported is not None:  # input was reported, output was cut short or left out
        usage = replace(reported, output_tokens=counted_out.tokens, reasoning_tokens=0)
        return usage, COUNTED if counted_out.exact else ESTIMATED
    usage = Usage(input_tokens=counted_in.tokens, output_tokens=counted_out.tokens)
    return usage, COUNTED if counted_in.exact and counted_out.exact else ESTIMATED


def _fallback(call: Call, outcome: Outcome) -> Usage:
    """A reading when metering failed: the request's and the answer's size at about four
    characters a token, or nothing if nothing was produced."""
    if not outcome.produced:
        return Usage()
    try:
        text = outcome.answer()
    except Exception:  # the answer's text is what may have broken the meter
        text = ""
    return Usage(input_tokens=_size_estimate(call), output_tokens=estimate(text))


def _size_estimate(call: Call) -> int:
    """The request body's size in tokens at about four characters a token (an overestimate:
    it includes the JSON around the text)."""
    return estimate(call.raw.decode("utf-8", "replace"))


def _dearest(amounts: list[Decimal | None]) -> Decimal | None:
    """The largest, or None if any is unknown (or there are none)."""
    known = [a for a in amounts if a is not None]
    return max(known) if known and len(known) == len(amounts) else None


def worst_output(body: dict[str, Any], default: int) -> int:
    """The most output a request allows: its largest bound (else `default`) times its choices.

    The largest of the bounds, because providers differ in which one they obey. A bound or
    count that is not a positive integer (or more than MAX_CHOICES choices) is a RequestError:
    it could not be reserved for.
    """
    bounds = [_positive(body, key) for key in _MAX_OUTPUT_KEYS if body.get(key) is not None]
    choices = [_positive(body, key) for key in _CHOICES_KEYS if body.get(key) is not None]
    if any(c > MAX_CHOICES for c in choices):
        raise RequestError(f"'n' and 'best_of' may be at most {MAX_CHOICES}")
    return max(bounds, default=default) * max(choices, default=1)


def _positive(body: dict[str, Any], key: str) -> int:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"'{key}' must be a positive integer")
    if value > MAX_TOKENS:  # no model answers that much; a store's counts could not hold it
        raise RequestError(f"'{key}' may be at most {MAX_TOKENS}")
    return value
