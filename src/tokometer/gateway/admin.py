"""The admin API: keys and budgets over HTTP, mirroring `tokometer keys` and `budgets`.

    GET    /admin/keys                 list keys (never the keys themselves)
    POST   /admin/keys                 {"tenant", "app", "region"?} → {"key", "key_id"} (201)
    DELETE /admin/keys/{key_id}        revoke, effective at once
    GET    /admin/budgets              every budget: spend, reservations, remaining, reset
    PUT    /admin/budgets              {"tenant"|"app"|"key_id", "limit", "unit", "period"}
    DELETE /admin/budgets/{budget_id}  remove a budget set at run time
    GET    /admin/wallets/{tenant}     the tenant's lots (used, forfeited, left) and balances
    POST   /admin/wallets/{tenant}     {"amount", "currency"?, "priority"?, "expires"?,
                                       "note"?} → a top-up (201), and the wallet after it
    POST   /admin/corrections          {"event_id", "reason", token deltas, "cost"} → the
                                       correction event (201); the original stays as it was

Authenticated with `Authorization: Bearer TOKEN`, the token read from the environment
variable `server.admin_token_env` names; without it the admin API is off. Wrong tokens count
against the client's address on the dashboard's login brake (session.py), so the API (and
/metrics) is no faster a way to guess the token than the sign-in form.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

from ..bounds import bounded
from ..catalog.plans import Charges
from ..config import SCOPES, Settings
from ..errors import AuthError, PolicyError, RequestError
from ..events import Event
from ..impact import Impacts
from ..ledger import Ledger
from ..ledger.corrections import TOKEN_DELTAS, correction
from ..ledger.read import get_event
from ..policy import KeyRing, create_key, list_keys, revoke_key
from ..policy.budgets import new_budget, remove_budget, set_budget
from ..policy.sync import BudgetSync
from ..policy.wallets import top_up, wallet_with
from .offloop import OffLoop
from .session import AdminToken

Reply = tuple[int, Any]  # an admin endpoint's status and JSON body


class Admin:
    def __init__(self, settings: Settings, store: OffLoop, keys: KeyRing, budgets: BudgetSync,
                 ledger: Ledger, token: AdminToken):
        self.settings = settings
        self.token = token
        self.ledger = ledger
        self._run = store.run
        self.keys = keys
        self.budgets = budgets
        self.impacts = Impacts()  # a correction's change in energy
        self.charges = Charges(settings.plans, settings.server.currency)

    def is_admin(self, headers: dict[bytes, bytes]) -> bool:
        return self.token.matches(_bearer(headers))

    def check(self, headers: dict[bytes, bytes], client: str) -> None:
        """The admin token, or an error; `client` (session.client_of) is braked when wrong."""
        if self.token.token is None:
            raise RequestError("the admin API is off: set server.admin_token_env in the config "
                               "and put a token in that environment variable",
                               status=404, type="not_found_error")
        if (wait := self.token.braked(client)) is not None:  # the token is not even looked at
            raise PolicyError(f"too many wrong admin tokens from your address: try again in "
                              f"{wait} s", status=429, type="rate_limit_error",
                              code="too_many_attempts", retry_after=wait)
        if not self.token.check(_bearer(headers), client):
            raise AuthError("the admin API needs 'Authorization: Bearer ADMIN_TOKEN'")

    async def handle(self, method: str, parts: list[str], body: Any) -> Reply:
        """`parts`: the path's segments after /admin, each decoded."""
        if parts[:1] == ["keys"]:
            return await self._keys(method, parts[1:], body)
        if parts[:1] == ["budgets"]:
            return await self._budgets(method, parts[1:], body)
        if parts == ["corrections"] and method == "POST":
            return await self._correct(body)
        if parts[:1] == ["wallets"] and len(parts) == 2:
            return await self._wallet(method, parts[1], body)
        raise _no_route(method, parts[0] if parts else "", parts[1:])

    async def _keys(self, method: str, rest: list[str], body: Any) -> Reply:
        if method == "GET" and not rest:
            return 200, {"data": await self._run(list_keys)}
        if method == "POST" and not rest:
            fields = _object(body, required=("tenant", "app"), optional=("region",))
            key, key_id = await self._run(create_key, fields["tenant"], fields["app"],
                                          fields.get("region"))
            return 201, {"key": key, "key_id": key_id}
        if method == "DELETE" and len(rest) == 1:
            await self._run(revoke_key, rest[0])
            self.keys.forget(rest[0])
            return 200, {"key_id": rest[0], "revoked": True}
        raise _no_route(method, "keys", rest)

    async def _budgets(self, method: str, rest: list[str], body: Any) -> Reply:
        config_ids = [b.id for b in self.settings.budgets]
        if method == "GET" and not rest:
            return 200, {"data": await self.budgets.statuses()}
        if method in ("PUT", "POST") and not rest:
            fields = _object(body, required=("limit", "unit", "period"), optional=SCOPES)
            scopes = [k for k in SCOPES if k in fields]
            if len(scopes) != 1:
                raise RequestError("a budget needs exactly one of tenant, app, key_id")
            budget = new_budget(scopes[0], fields[scopes[0]], fields["limit"], fields["unit"],
                                fields["period"], self.settings.server.currency)
            budget = await self._run(set_budget, budget, config_ids)
            await self.budgets.sync()
            return 200, await self.budgets.status(budget.id)
        if method == "DELETE" and len(rest) == 1:
            await self._run(remove_budget, rest[0], config_ids)
            await self.budgets.sync()
            return 200, {"budget_id": rest[0], "removed": True}
        raise _no_route(method, "budgets", rest)

    async def _wallet(self, method: str, tenant: str, body: Any) -> Reply:
        """GET: the tenant's lots and balance; POST {"amount", "currency"?, "priority"?,
        "expires"?, "note"?}: a top-up."""
        if method == "POST":
            fields = _object(body, required=("amount",),
                             optional=("currency", "priority", "expires", "note"))
            await self._run(top_up, tenant, fields["amount"],
                            fields.get("currency", self.settings.server.currency),
                            fields.get("priority", 0), fields.get("expires"),
                            fields.get("note"))
            await self.budgets.sync()  # the credit is there for the next request
        elif method != "GET":
            raise _no_route(method, "wallets", [tenant])
        found = await self._run(wallet_with, tenant, self.settings.allowances)
        return 201 if method == "POST" else 200, found.summary()

    async def _correct(self, body: Any) -> Reply:
        fields = _object(body, required=("event_id", "reason"),
                         optional=(*TOKEN_DELTAS, "cost"))
        original = await self._run(get_event, fields["event_id"])
        if original is None:
            raise RequestError(f"no event {fields['event_id']}", status=404,
                               type="not_found_error")
        changes = {k: v for k, v in fields.items() if k not in ("event_id", "reason")}
        event = self._with_energy(correction(original, changes, fields["reason"]), original)
        event = replace(event, charge=self.charges.of(event))
        await self.ledger.append(event, self.budgets.charging(event))
        self.budgets.guard.charge(event)
        if event.tenant is not None:  # a refund's credit is its wallet's to say
            await self.budgets.refunded(event.tenant)
        return 201, {"id": event.id, "corrects": event.corrects}


    def _with_energy(self, event: Event, original: dict[str, Any]) -> Event:
        """A correction of a modelled event's tokens carries the change in its energy and
        CO2e too (the method again, at the corrected tokens and the original's duration)."""
        figures = self.impacts.corrected(self.settings, original, event.input_tokens,
                                         event.output_tokens)
        if figures is None:
            return event
        was, now = figures

        def delta(a: float, b: float) -> Decimal:
            return Decimal(f"{b - a:.6g}")

        return replace(event, energy_ref=now.ref, energy_source=now.source,
                       energy_wh=delta(was.energy_wh.mid, now.energy_wh.mid),
                       energy_wh_low=delta(was.energy_wh.low, now.energy_wh.low),
                       energy_wh_high=delta(was.energy_wh.high, now.energy_wh.high),
                       co2e_g=delta(was.co2e_g.mid, now.co2e_g.mid),
                       co2e_g_low=delta(was.co2e_g.low, now.co2e_g.low),
                       co2e_g_high=delta(was.co2e_g.high, now.co2e_g.high))


def _bearer(headers: dict[bytes, bytes]) -> bytes:
    """What follows `Bearer ` in the Authorization header (nothing the token could match if
    the header is missing or of another scheme)."""
    auth = headers.get(b"authorization", b"")
    return auth[7:] if auth.startswith(b"Bearer ") else b""


def _object(body: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if unknown := sorted(set(body) - set(required) - set(optional)):
        raise RequestError(f"unknown field {unknown[0]!r}; expected: "
                           f"{', '.join(required + optional)}")
    if missing := [k for k in required if k not in body]:
        raise RequestError(f"missing field {missing[0]!r}")
    for k in ("tenant", "app", "region", "key_id", "unit", "period", "event_id", "reason"):
        if k in body and not isinstance(body[k], str | None):
            raise RequestError(f"{k!r} must be a string")
        if isinstance(body.get(k), str):
            bounded(body[k], repr(k))
    return body


def _no_route(method: str, what: str, rest: list[str]) -> RequestError:
    path = "/".join(["/admin", what, *rest])
    return RequestError(f"no such admin endpoint: {method} {path}", status=404,
                        type="not_found_error")
