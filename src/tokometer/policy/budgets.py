"""Budgets: spend per period, reserved before a request goes out and settled from its event.

The gateway keeps every budget's spend and reservations in memory, so checking one costs no
I/O; the spend is re-read from the ledger at start-up (a restart resets nothing) and when a
budget is added. A request reserves its worst case and is admitted only if that fits in what
spend and reservations leave of the limit: so spend stays within the limit, unless a
request used more input than was counted (an estimate) before it went out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ..amounts import amount
from ..config import ENERGY_UNITS, PERIODS, SCOPES, TOKENS, Budget, Scope, unit_error
from ..errors import RequestError
from ..events import Event, decimal_str, new_event_id, rfc3339
from ..ledger.store import Store

RESERVATIONS_FRESH_SECONDS = 5.0  # older snapshots mean no gateway is running
# What an event adds to a wallet's budget: its charge, else its cost, and nothing for a
# refund (a negative one), whose credit only the wallet can say (WalletBudgets).
WALLET_SPEND = ("CASE WHEN COALESCE(charge, cost) LIKE '-%' THEN NULL "
                "ELSE COALESCE(charge, cost) END")


def period_bounds(period: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The UTC calendar period holding `now`: [start, end); (None, None) for "total"."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":  # ISO weeks start on Monday
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        return start, (start + timedelta(days=32)).replace(day=1)
    return None, None


def amount_of(budget: Budget, event: Event) -> Decimal:
    """What an event takes from a budget: its tokens, or its cost when in the budget's
    currency (amounts in different currencies are never added)."""
    return taken(budget, Decimal(0), event)


def taken(budget: Budget, reserved: Decimal, event: Event) -> Decimal:
    """What a request that reserved `reserved` took when it settled: amount_of its event (a
    wallet's: what it was charged, else its cost), except that a cost (or an energy figure)
    the meter could not work out spends the whole reservation."""
    if budget.unit == TOKENS:
        return Decimal(event.input_tokens + event.output_tokens)
    if budget.unit in ENERGY_UNITS:
        figure: Decimal | None = getattr(event, ENERGY_UNITS[budget.unit])
        return reserved if figure is None else figure
    spend = event.charge if budget.wallet and event.charge is not None else event.cost
    if spend is None:
        return reserved
    if budget.wallet:  # a refund: its credit is what the wallet takes back (WalletBudgets)
        spend = max(spend, Decimal(0))
    return spend if event.currency == budget.unit else Decimal(0)


@dataclass(slots=True)
class BudgetState:
    budget: Budget
    start: datetime | None
    end: datetime | None
    spent: Decimal
    reserved: Decimal = Decimal(0)

    def roll(self, now: datetime) -> None:
        """Start a new period, with nothing spent, once the old one is over."""
        if self.end is not None and now >= self.end:
            self.start, self.end = period_bounds(self.budget.period, now)
            self.spent = Decimal(0)

    def holds_time(self, time: str) -> bool:
        """Whether the current period holds `time` (RFC 3339 in UTC, as events have it)."""
        return ((self.start is None or time >= rfc3339(self.start))
                and (self.end is None or time < rfc3339(self.end)))

    @property
    def exhausted(self) -> bool:
        return self.spent + self.reserved >= self.budget.limit

    def resets(self) -> str:
        return "it does not reset" if self.end is None else f"it resets at {rfc3339(self.end)}"

    def status(self) -> dict[str, str | None]:
        b = self.budget
        remaining = max(b.limit - self.spent - self.reserved, Decimal(0))
        return {"budget_id": b.id, "scope": b.scope.kind, "scope_value": b.scope.value,
                "limit": decimal_str(b.limit), "unit": b.unit, "period": b.period,
                "spent": decimal_str(self.spent), "reserved": decimal_str(self.reserved),
                "remaining": decimal_str(remaining),
                "period_start": rfc3339(self.start) if self.start else None,
                "resets": rfc3339(self.end) if self.end else None}


def load_states(conn: Store, budgets: Iterable[Budget],
                now: datetime) -> dict[str, BudgetState]:
    """Each budget with what the ledger says was spent in its current period."""
    states = {}
    for budget in budgets:
        start, end = period_bounds(budget.period, now)
        states[budget.id] = BudgetState(budget, start, end, spent_in(conn, budget, start))
    return states


def spent_in(conn: Store, budget: Budget, since: datetime | None) -> Decimal:
    money = budget.unit != TOKENS and budget.unit not in ENERGY_UNITS
    measure = ("SUM(input_tokens + output_tokens)" if budget.unit == TOKENS else
               f"decimal_sum({ENERGY_UNITS[budget.unit]})" if budget.unit in ENERGY_UNITS else
               f"decimal_sum({WALLET_SPEND})" if budget.wallet else "decimal_sum(cost)")
    sql = f"SELECT {measure} FROM events WHERE {budget.scope.kind} = ?"  # kind is one of SCOPES
    params = [budget.scope.value]
    if money:  # amounts in another currency are not this budget's
        sql += " AND currency = ?"
        params.append(budget.unit)
    if since is not None:
        sql += " AND time >= ?"
        params.append(rfc3339(since))
    value = conn.execute(sql, params).fetchone()[0]
    return Decimal(value or 0)


# --- budgets set at run time (CLI and admin API), kept in the store ---------------------------

def new_budget(scope_kind: str, scope_value: str, limit: object, unit: str, period: str,
               currency: str, budget_id: str = "") -> Budget:
    """A checked Budget from loose input (command line, JSON); RequestError says what is wrong."""
    if scope_kind not in SCOPES or not isinstance(scope_value, str) or not scope_value:
        raise RequestError(f"a budget needs exactly one of {', '.join(SCOPES)} (a non-empty "
                           "string)")
    if (wrong := unit_error(unit, currency)) is not None:
        raise RequestError(f"unit: {wrong}")
    if period not in PERIODS:
        raise RequestError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    return Budget(budget_id, Scope(scope_kind, scope_value), amount(limit, "limit"), unit,
                  period)


def set_budget(conn: Store, budget: Budget, config_ids: Iterable[str]) -> Budget:
    """Create or replace the budget for this scope, unit and period; returns it with its id."""
    if budget.id in set(config_ids):
        raise RequestError(f"budget {budget.id} is set in the config file; change it there")
    row = conn.execute("SELECT budget_id FROM budgets WHERE scope = ? AND scope_value = ? "
                       "AND unit = ? AND period = ?",
                       (budget.scope.kind, budget.scope.value, budget.unit, budget.period)
                       ).fetchone()
    budget_id = row[0] if row else new_event_id()
    conn.execute(
        "INSERT INTO budgets (budget_id, scope, scope_value, limit_value, unit, period, created) "
        "VALUES (?,?,?,?,?,?,?) ON CONFLICT (budget_id) DO UPDATE SET "
        "limit_value = excluded.limit_value",
        (budget_id, budget.scope.kind, budget.scope.value, decimal_str(budget.limit),
         budget.unit, budget.period, rfc3339(datetime.now(UTC))))
    return Budget(budget_id, budget.scope, budget.limit, budget.unit, budget.period)


def all_budgets(conn: Store, config: Iterable[Budget]) -> list[Budget]:
    """The config's budgets, then those set at run time."""
    return [*config, *stored_budgets(conn)]


def budget_statuses(conn: Store, budgets: Iterable[Budget],
                    now: datetime) -> list[dict[str, str | None]]:
    """Budgets as another process sees them: the ledger's spend, and the in-flight
    reservations a running gateway last saved."""
    states = load_states(conn, budgets, now)
    for budget_id, reserved in saved_reservations(conn).items():
        if budget_id in states:
            states[budget_id].reserved = reserved
    return [state.status() for state in states.values()]


def stored_budgets(conn: Store) -> list[Budget]:
    rows = conn.execute("SELECT budget_id, scope, scope_value, limit_value, unit, period "
                        "FROM budgets ORDER BY budget_id")
    return [Budget(i, Scope(kind, value), Decimal(limit), unit, period)
            for i, kind, value, limit, unit, period in rows]


def remove_budget(conn: Store, budget_id: str, config_ids: Iterable[str]) -> None:
    if budget_id in set(config_ids):
        raise RequestError(f"budget {budget_id} is set in the config file; remove it there")
    with conn.transaction():
        if conn.execute("DELETE FROM budgets WHERE budget_id = ?", (budget_id,)).rowcount == 0:
            raise RequestError(f"no budget with id {budget_id}", status=404,
                               type="not_found_error")
        conn.execute("DELETE FROM budget_reservations WHERE budget_id = ?", (budget_id,))


def save_reservations(conn: Store, reserved: dict[str, Decimal]) -> None:
    """The gateway's in-flight reservations, for `budgets status` in another process."""
    now = rfc3339(datetime.now(UTC))
    with conn.transaction():
        conn.execute("DELETE FROM budget_reservations")
        conn.executemany("INSERT INTO budget_reservations VALUES (?,?,?)",
                         [(i, decimal_str(r), now) for i, r in reserved.items()])


def saved_reservations(conn: Store) -> dict[str, Decimal]:
    """What a one-process gateway saved, and the live holds of processes sharing the store."""
    now = datetime.now(UTC)
    fresh = rfc3339(now - timedelta(seconds=RESERVATIONS_FRESH_SECONDS))
    saved = {i: Decimal(r) for i, r in conn.execute(
        "SELECT budget_id, reserved FROM budget_reservations WHERE updated >= ?", (fresh,))}
    for budget_id, held in conn.execute(
            "SELECT budget_id, decimal_sum(amount) FROM budget_holds WHERE expires > ? "
            "GROUP BY budget_id", (now.timestamp(),)):
        saved[budget_id] = saved.get(budget_id, Decimal(0)) + Decimal(held)
    return saved
