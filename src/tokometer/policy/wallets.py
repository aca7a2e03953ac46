"""Prepaid wallets: credit lots per tenant, and what each lot has paid and has left.

A lot is credit bought (an amount, its currency, a priority, perhaps an expiry); a top-up
adds one, and no period ever resets it. A tenant's spend is drawn event by event in time
order: each event's charge where a price plan gives one, else its cost, first from the
allowance of the period holding it (config `[[allowances]]`), then from the lots of that
currency bought by then and not expired at the event's time, in order of priority (the
lowest number first), then earliest expiry, then the oldest. What a lot had left when it
expired is forfeited. What nothing could pay is owed. Worked out from the ledger, so it is
the same on every store and from every process; the gateway enforces it as a budget
(WalletBudgets).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ..amounts import amount
from ..bounds import bounded
from ..config import CURRENCY_CODE, Allowance, Budget, Scope
from ..errors import RequestError
from ..events import decimal_str, new_event_id, rfc3339
from ..ledger.store import Store
from .budgets import WALLET_SPEND, period_bounds

_NEVER = "9999-12-31T23:59:59.999Z"  # how a lot that never expires sorts


@dataclass(frozen=True, slots=True)
class Lot:
    lot_id: str
    tenant: str
    amount: Decimal
    currency: str
    priority: int
    expires: str | None  # RFC 3339 (UTC): usable for events before it
    created: str
    note: str | None


@dataclass(slots=True)
class LotState:
    lot: Lot
    used: Decimal = field(default_factory=Decimal)
    forfeited: Decimal = field(default_factory=Decimal)

    @property
    def left(self) -> Decimal:
        return self.lot.amount - self.used - self.forfeited

    def row(self) -> dict[str, Any]:
        lot = self.lot
        return {"lot_id": lot.lot_id, "created": lot.created, "currency": lot.currency,
                "amount": decimal_str(lot.amount), "priority": lot.priority,
                "expires": lot.expires, "used": decimal_str(self.used),
                "forfeited": decimal_str(self.forfeited), "left": decimal_str(self.left),
                "note": lot.note}


@dataclass(slots=True)
class Wallet:
    tenant: str
    lots: list[LotState]
    owed: dict[str, Decimal]  # by currency: spend no lot (nor the allowance) could pay
    unpriced: int = 0  # events whose charge and cost are unknown: drawn from no lot
    allowance: Allowance | None = None
    allowance_used: Decimal = field(default_factory=Decimal)  # in the current period
    # by currency: all the tenant's spend the ledger holds, before the wallet too, but for
    # refunds (a wallet budget's spend, which `limit` adds what is left to)
    spent: dict[str, Decimal] = field(default_factory=dict)

    def balance(self, currency: str) -> Decimal:
        return sum((s.left for s in self.lots if s.lot.currency == currency), Decimal(0))

    def available(self, currency: str) -> Decimal:
        """What requests may still spend: the allowance left this period and the credit
        left, less what is owed."""
        allowed = (self.allowance.amount - self.allowance_used
                   if self.allowance and self.allowance.currency == currency else 0)
        return allowed + self.balance(currency) - self.owed.get(currency, Decimal(0))

    def limit(self, currency: str) -> Decimal:
        """The wallet as a budget counting all the tenant's spend: spend and what is left
        rise and fall together, so this moves only with a top-up, an expiry, the
        allowance's next period, or a refund. A refund is not spend taken back: what it
        gives back is what the wallet takes back, which may be nothing (a refund of spend
        from before the wallet, or of a lot since expired), so only this can say it."""
        return self.spent.get(currency, Decimal(0)) + self.available(currency)

    def summary(self) -> dict[str, Any]:
        """Balances, debts and the allowance, as the CLI and the admin API show them."""
        currencies = sorted({s.lot.currency for s in self.lots} | set(self.owed))
        allowance = self.allowance
        return {
            "tenant": self.tenant, "lots": [s.row() for s in self.lots],
            "balances": {c: decimal_str(self.balance(c)) for c in currencies},
            "owed": {c: decimal_str(v) for c, v in self.owed.items()},
            "allowance": None if allowance is None else {
                "amount": decimal_str(allowance.amount), "currency": allowance.currency,
                "period": allowance.period, "used": decimal_str(self.allowance_used),
                "left": decimal_str(allowance.amount - self.allowance_used)},
            "unpriced": self.unpriced}


def top_up(conn: Store, tenant: str, credit: object, currency: str, priority: int = 0,
           expires: str | None = None, note: str | None = None) -> Lot:
    """Add a lot of credit; RequestError says what is wrong with the input."""
    bounded(tenant, "tenant")
    if not tenant:
        raise RequestError("a wallet belongs to a tenant (a non-empty string)")
    if not isinstance(currency, str) or not CURRENCY_CODE.match(currency):
        raise RequestError(f"currency must be an ISO 4217 code like 'USD', not {currency!r}")
    value = amount(credit, "amount")
    if value <= 0:
        raise RequestError("a top-up's amount must be more than 0")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 999:
        raise RequestError("priority must be a whole number from 0 (drawn first) to 999")
    if not (expires is None or isinstance(expires, str)) or not (note is None
                                                                 or isinstance(note, str)):
        raise RequestError("expires and note must be strings")
    created = rfc3339(datetime.now(UTC))
    until = None if expires is None else _instant(expires)
    if until is not None and until <= created:  # it could pay for nothing, forfeited at once
        raise RequestError(f"expires must be later than now ({created}), not {until}")
    lot = Lot(new_event_id(), tenant, value, currency, priority, until, created,
              None if note is None else bounded(note, "note"))
    conn.execute("INSERT INTO wallet_lots (lot_id, tenant, amount, currency, priority, "
                 "expires, created, note) VALUES (?,?,?,?,?,?,?,?)",
                 (lot.lot_id, tenant, decimal_str(value), currency, priority, until,
                  lot.created, lot.note))
    return lot


def lots_of(conn: Store, tenant: str) -> list[Lot]:
    rows = conn.execute("SELECT lot_id, tenant, amount, currency, priority, expires, created, "
                        "note FROM wallet_lots WHERE tenant = ? ORDER BY created, lot_id",
                        (tenant,))
    return [Lot(i, t, Decimal(a), c, p, e, cr, n) for i, t, a, c, p, e, cr, n in rows]


def wallet(conn: Store, tenant: str, now: datetime | None = None,
           allowance: Allowance | None = None) -> Wallet:
    """The tenant's lots (and allowance) as its spend so far has drawn them, at `now`
    (expiries before it forfeit what their lots had left)."""
    at = now or datetime.now(UTC)
    states = [LotState(lot) for lot in lots_of(conn, tenant)]
    found = Wallet(tenant, states, {}, allowance=allowance)
    starts = [s.lot.created for s in states]
    if allowance is not None:  # this period's allowance pays from the period's start
        starts.append(rfc3339(_period(allowance, at)))
    if not starts:
        return found
    first = min(starts)
    # Each currency's lots in the order they are drawn, sorted once (stable: the oldest first
    # among equals); not again for every event.
    ordered: dict[str, list[LotState]] = {}
    for state in sorted(states, key=lambda s: (s.lot.priority, s.lot.expires or _NEVER)):
        ordered.setdefault(state.lot.currency, []).append(state)
    drawn = {currency: _Drawing(lots) for currency, lots in ordered.items()}
    used: dict[datetime, Decimal] = {}  # of the allowance, by the start of its period
    # One statement, so one snapshot on every store: the spend before the wallet, summed
    # (time ''), then its events, each with the time of the event it corrects, if any.
    for time, cost, charge, currency, corrected in conn.stream(
            "SELECT time, cost, charge, currency, corrected FROM ("
            " SELECT '' AS time, '' AS id, NULL AS cost,"
            f" decimal_sum({WALLET_SPEND}) AS charge, currency, NULL AS corrected"
            " FROM events WHERE tenant = ? AND time < ? GROUP BY currency"
            " UNION ALL SELECT e.time, e.id, e.cost, e.charge, e.currency, o.time"
            " FROM events e LEFT JOIN events o ON o.id = e.corrects"
            " WHERE e.tenant = ? AND e.time >= ?) AS spend ORDER BY time, id",
            (tenant, first, tenant, first)):
        known = charge if charge is not None else cost
        if known is not None and Decimal(known) > 0:  # as budgets.WALLET_SPEND
            found.spent[currency] = found.spent.get(currency, Decimal(0)) + Decimal(known)
        if time == "" or (corrected is not None and corrected < first):
            continue  # spend from before the wallet, and its corrections: not the wallet's
        if known is None:
            found.unpriced += 1
            continue
        spend = Decimal(known)
        owed = found.owed.get(currency, Decimal(0))
        if spend < 0:  # a refund pays back what is owed first
            back = min(owed, -spend)
            owed, spend = owed - back, spend + back
        if allowance is not None and currency == allowance.currency:
            spend = _allow(allowance, used, time, spend)
        owed += (drawn[currency].draw(time, spend) if currency in drawn
                 else max(spend, Decimal(0)))  # a refund to no lot gives nothing back
        if owed or currency in found.owed:
            found.owed[currency] = owed
    if allowance is not None:
        found.allowance_used = used.get(_period(allowance, at), Decimal(0))
    for state in states:
        if state.lot.expires is not None and state.lot.expires <= rfc3339(at):
            state.forfeited = state.left
    return found


def wallet_with(conn: Store, tenant: str, allowances: Iterable[Allowance]) -> Wallet:
    """The tenant's wallet now, with the allowance the config gives it, if any."""
    return wallet(conn, tenant, allowance=next(
        (a for a in allowances if a.tenant == tenant), None))


def wallet_tenants(conn: Store, allowances: Iterable[Allowance]) -> list[str]:
    """The tenants that have a wallet: a lot bought, or an allowance."""
    bought = {tenant for tenant, in conn.execute("SELECT DISTINCT tenant FROM wallet_lots")}
    return sorted(bought | {a.tenant for a in allowances})


def _period(allowance: Allowance, at: datetime) -> datetime:
    """The start of the allowance's period holding `at`."""
    start, _ = period_bounds(allowance.period, at)
    assert start is not None, "an allowance's period is a day, a week or a month"
    return start


def _allow(allowance: Allowance, used: dict[datetime, Decimal], time: str,
           spend: Decimal) -> Decimal:
    """Take `spend` from the allowance of the period holding `time` first; returns what is
    left for the lots. A refund goes back to that period's allowance as far as it was used."""
    period = _period(allowance, datetime.fromisoformat(time))
    before = used.get(period, Decimal(0))
    after = max(before + spend, Decimal(0)) if spend < 0 else min(before + spend,
                                                                   allowance.amount)
    used[period] = after
    return spend - (after - before)


class _Drawing:
    """A currency's lots as the spend, in time order, draws them: an event looks only at the
    lots bought by its time, not expired and not used up (each lot joins once, and leaves
    once used up, until a refund gives it credit back), so many lots used up over a long
    ledger cost no more per event than the lots it draws from."""

    def __init__(self, ordered: list[LotState]):
        self._ordered = ordered  # in the order they are drawn
        self._rank = {id(s): i for i, s in enumerate(ordered)}
        self._coming = sorted(ordered, key=lambda s: s.lot.created, reverse=True)
        self._live: list[tuple[int, LotState]] = []  # bought, by rank: those that may pay

    def draw(self, time: str, spend: Decimal) -> Decimal:
        """Take `spend` from the lots usable at `time`; returns what they could not pay. A
        refund (negative) goes back to the lots it would have been drawn from first."""
        while self._coming and self._coming[-1].lot.created <= time:
            self._join(self._coming.pop())
        if spend < 0:  # a correction's refund: back into the first lots that paid
            for state in self._ordered:
                if spend == 0:
                    break
                if state.used > 0 and _usable(state.lot, time):
                    if state.left == 0:
                        self._join(state)  # it may pay again
                    back = min(state.used, -spend)
                    state.used -= back
                    spend += back
            return Decimal(0)
        live, i = self._live, 0
        while spend > 0 and i < len(live):
            state = live[i][1]
            if not _usable(state.lot, time):
                del live[i]  # expired: for every event after this one too
                continue
            taken = min(state.left, spend)
            state.used += taken
            spend -= taken
            if state.left == 0:
                del live[i]
            else:
                i += 1
        return spend

    def _join(self, state: LotState) -> None:
        bisect.insort(self._live, (self._rank[id(state)], state), key=lambda r: r[0])


def _usable(lot: Lot, time: str) -> bool:
    return lot.created <= time and (lot.expires is None or time < lot.expires)


def _instant(text: str) -> str:
    """An expiry: a date (its start, UTC) or an RFC 3339 time with its offset."""
    try:
        when = datetime.fromisoformat(text.upper())
        if when.tzinfo is not None:
            when = when.astimezone(UTC)  # OverflowError: an offset off the calendar's ends
    except (ValueError, OverflowError):
        raise RequestError(f"expires must be a date like 2027-01-01 or an RFC 3339 time, not "
                           f"{text[:40]!r}") from None
    if when.tzinfo is None:
        if len(text) != 10:
            raise RequestError("an expiry time needs its offset (or Z)")
        when = when.replace(tzinfo=UTC)
    return rfc3339(when)


def wallet_budget_id(tenant: str) -> str:
    return f"wallet:{tenant}"


class WalletBudgets:
    """The wallets as budgets the guard keeps like any other (holds in a shared store too):
    one per tenant with credit lots or an allowance, in the server currency, counting all
    the tenant's spend, its limit that spend plus what the wallet has left (Wallet.limit).

    A request's spend lowers what such a budget leaves exactly as it lowers the balance, so
    the limit is worked out again (a scan of the tenant's events) only when it can move: a
    top-up, the earliest expiry passing, the allowance's next period; and a refund, which
    adds nothing to the budget (so it cannot lend what the wallet did not take back) until
    `forget` has its limit worked out again (the process that recorded it does at once;
    the others at the wallet's next move)."""

    def __init__(self, allowances: Iterable[Allowance], currency: str):
        self._allowances = {a.tenant: a for a in allowances}
        self._currency = currency
        self._known: dict[str, tuple[object, Budget]] = {}  # tenant → (what moves it, budget)

    def budgets(self, conn: Store, now: datetime) -> list[Budget]:
        lots = {tenant: rest for tenant, *rest in conn.execute(
            "SELECT tenant, COUNT(*), MAX(created), MIN(CASE WHEN expires > ? THEN expires "
            "END) FROM wallet_lots GROUP BY tenant", (rfc3339(now),))}
        known = {}
        for tenant in sorted(lots.keys() | self._allowances.keys()):
            allowance = self._allowances.get(tenant)
            moves = (lots.get(tenant), allowance and _period(allowance, now))
            found = self._known.get(tenant)
            if found is None or found[0] != moves:
                limit = wallet(conn, tenant, now, allowance).limit(self._currency)
                found = (moves, Budget(wallet_budget_id(tenant), Scope("tenant", tenant),
                                       limit, self._currency, "total", wallet=True))
            known[tenant] = found
        self._known = known
        return [budget for _, budget in known.values()]

    def forget(self, tenant: str) -> None:
        """Work the tenant's limit out again next time: a refund may have moved it."""
        self._known.pop(tenant, None)
