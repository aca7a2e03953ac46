"""Which of a model's routes a request's client lets it take, and in which order to try them.

`candidates` keeps the routes on the request's API whose provider is usable and which the
client's OpenRouter-style `provider` object allows; policy (residency rules) then removes what
the consumer may not use; `rank` orders the rest by the model's strategy ("order", "price"
for the request's expected tokens, or "latency": a moving average of recent answers) and the
client's own order.
"""

from __future__ import annotations

from decimal import Decimal

from ..catalog import Pricer
from ..config import Route
from ..errors import RequestError
from ..events import Usage
from .call import Call
from .steering import Steering

_MILLION = 1_000_000
_SMOOTHING = 0.2  # weight of the newest latency sample
_FAILURE_PENALTY_MS = 1000.0


class Router:
    def __init__(self, pricer: Pricer, max_attempts: int | None):
        self.pricer = pricer
        self.max_attempts = max_attempts
        self._latency_ms: dict[tuple[str, str], float] = {}

    @staticmethod
    def ranks_by_price(call: Call) -> bool:
        """Whether `plan` needs the request's expected usage."""
        steer = call.steering
        return ((steer.sort if steer and steer.sort else None) or call.model.strategy) == "price"

    def candidates(self, call: Call) -> list[Route]:
        """The routes the request may take as its client asks; RequestError (404) if none."""
        routes = [r for r in call.model.routes
                  if r.provider.api == call.endpoint.api and r.provider.usable]
        return self._steered(call, routes, call.steering) if call.steering else routes

    def rank(self, call: Call, routes: list[Route], expected: Usage | None) -> list[Route]:
        """`routes` in the order to try them, as many as may be tried."""
        steer = call.steering
        sort = (steer.sort if steer and steer.sort else None) or call.model.strategy
        if sort == "price":
            assert expected is not None, "ranks_by_price(call) said no"
            routes.sort(key=lambda r: self._cost(call, r, expected))
        elif sort in ("latency", "throughput"):
            routes.sort(key=lambda r: self._latency_ms.get((r.provider.name, r.model), 0.0))
        if steer is not None:  # the client's order comes before any ranking
            rank = {name: i for i, name in enumerate(steer.order)}
            routes.sort(key=lambda r: rank.get(r.provider.name.lower(), len(rank)))
            if not steer.allow_fallbacks:
                routes = ([r for r in routes if r.provider.name.lower() in rank]
                          if rank else routes[:1])
                if not routes:
                    raise _no_route(call, "provider.order with allow_fallbacks false")
        return routes[:call.model.max_attempts or self.max_attempts]

    def _steered(self, call: Call, routes: list[Route], steer: Steering) -> list[Route]:
        kept = [r for r in routes
                if (steer.only is None or r.provider.name.lower() in steer.only)
                and r.provider.name.lower() not in steer.ignore
                and self._within(call, r, steer)]
        if not kept:
            raise _no_route(call, "provider.only, provider.ignore and provider.max_price")
        return kept

    def _within(self, call: Call, route: Route, steer: Steering) -> bool:
        for limit, usage in ((steer.max_prompt, Usage(input_tokens=_MILLION)),
                             (steer.max_completion, Usage(output_tokens=_MILLION))):
            if limit is not None:
                rate = self.pricer.estimate(call.model, route, usage, call.started)
                if rate is None or rate > limit:
                    return False
        return True

    def _cost(self, call: Call, route: Route, usage: Usage) -> Decimal:
        cost = self.pricer.estimate(call.model, route, usage, call.started)
        return cost if cost is not None else Decimal("Infinity")  # unpriced routes last

    def observe(self, route: Route, ms: float, ok: bool) -> None:
        """A route answered (or failed) after `ms`: update its moving average."""
        key = (route.provider.name, route.model)
        sample = ms if ok else ms + _FAILURE_PENALTY_MS
        old = self._latency_ms.get(key)
        self._latency_ms[key] = sample if old is None else old + _SMOOTHING * (sample - old)


def _no_route(call: Call, what: str) -> RequestError:
    names = ", ".join(sorted({r.provider.name for r in call.model.routes}))
    return RequestError(f"no route of model {call.model.name!r} is left by {what} "
                        f"(its providers: {names})", status=404, code="no_route")

