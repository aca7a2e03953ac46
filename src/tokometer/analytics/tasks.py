"""Agent tasks and their outcomes: what a task cost, and what a success costs per agent.

A task is every event that carried the same `x-tokometer-task` for one tenant; its outcome
is the latest one reported for it with POST /v1/outcomes. An agent's cost per successful
outcome is all its tasks' cost over its successful tasks: failures are part of the price.
Costs in different currencies are never added: a task or agent has a row per currency.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ..amounts import amount
from ..errors import RequestError
from ..events import decimal_str, new_event_id, rfc3339
from ..ledger.read import time_filter
from ..ledger.store import Store
from ..policy import Consumer

OUTCOMES = ("success", "failure", "partial", "abandoned")
SUCCESS = "success"


def record_outcome(conn: Store, who: Consumer, body: Any) -> dict[str, Any]:
    """Store an outcome for one of the consumer's tenant's tasks; RequestError if it is bad."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object: {\"task\", \"outcome\", \"value\"?}")
    if unknown := sorted(set(body) - {"task", "outcome", "value"}):
        raise RequestError(f"unknown field {unknown[0]!r}; expected task, outcome, value")
    task, outcome, value = body.get("task"), body.get("outcome"), body.get("value")
    if not isinstance(task, str) or not task:
        raise RequestError("'task' must be the task's id, as sent in x-tokometer-task")
    if outcome not in OUTCOMES:
        raise RequestError(f"'outcome' must be one of {', '.join(OUTCOMES)}")
    worth = None if value is None else amount(value, "'value'", negative=True)
    known = conn.execute("SELECT 1 FROM events WHERE task = ? AND tenant = ? LIMIT 1",
                         (task, who.tenant)).fetchone()
    if known is None:
        raise RequestError(f"no requests of task {task!r} for this tenant: send them with "
                           "x-tokometer-task first", status=404, type="not_found_error")
    row = {"id": new_event_id(), "time": rfc3339(datetime.now(UTC)), "tenant": who.tenant,
           "task": task, "outcome": outcome,
           "value": decimal_str(worth) if worth is not None else None, "key_id": who.key_id}
    conn.execute("INSERT INTO outcomes (id, time, tenant, task, outcome, value, key_id) "
                 "VALUES (:id, :time, :tenant, :task, :outcome, :value, :key_id)", row)
    return row


_LATEST = """(SELECT {column} FROM outcomes o WHERE o.tenant = e.tenant AND o.task = e.task
               ORDER BY o.time DESC, o.id DESC LIMIT 1)"""


def tasks(conn: Store, since: str | None = None,
          until: str | None = None) -> list[dict[str, Any]]:
    """Per task (and currency): requests, tokens, cost, wall-clock duration, latest outcome."""
    where, params = _with_task(since, until)
    sql = f"""
        SELECT e.tenant, e.task, COUNT(*), SUM(input_tokens + output_tokens), decimal_sum(cost),
               e.currency,
               MAX(epoch_ms(time) + duration_ms) - MIN(epoch_ms(time)),
               {_LATEST.format(column="outcome")}, {_LATEST.format(column="value")}
        FROM events e{where} GROUP BY e.tenant, e.task, e.currency ORDER BY MIN(time)"""
    return [{"tenant": tenant, "task": task, "requests": n, "tokens": tokens or 0, "cost": cost,
             "currency": currency, "duration_ms": round(duration, 3), "outcome": outcome,
             "value": value}
            for tenant, task, n, tokens, cost, currency, duration, outcome, value
            in conn.execute(sql, params)]


def agents(conn: Store, since: str | None = None,
           until: str | None = None) -> list[dict[str, Any]]:
    """Per agent (and currency): tasks, successful ones, its cost on them, cost per success."""
    where, params = _with_task(since, until)
    sql = f"""
        SELECT tenant, agent, COUNT(*), SUM(CASE WHEN outcome = '{SUCCESS}' THEN 1 ELSE 0 END),
               decimal_sum(cost), currency
        FROM (SELECT e.tenant, e.agent, e.task, e.currency, decimal_sum(e.cost) AS cost,
                     {_LATEST.format(column="outcome")} AS outcome
              FROM events e{where} GROUP BY e.tenant, e.agent, e.task, e.currency) AS per_task
        GROUP BY tenant, agent, currency ORDER BY tenant, agent NULLS FIRST, currency"""
    out = []
    for tenant, agent, n, successes, cost, currency in conn.execute(sql, params):
        total = Decimal(cost or 0)
        out.append({"tenant": tenant, "agent": agent, "tasks": n, "successes": successes or 0,
                    "cost": decimal_str(total), "currency": currency,
                    "cost_per_success": decimal_str(total / successes) if successes else None})
    return out


def _with_task(since: str | None, until: str | None) -> tuple[str, list[str]]:
    where, params = time_filter(since, until)
    return (where + " AND" if where else " WHERE") + " task IS NOT NULL", params
