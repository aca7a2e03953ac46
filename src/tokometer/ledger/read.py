"""Reading events back out of the store, oldest first, with DESIGN.md's field names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..events import FIELDS
from .store import Store


def time_filter(since: str | None, until: str | None) -> tuple[str, list[str]]:
    """A WHERE clause over the RFC 3339 `time` column (UTC text sorts as time)."""
    clauses, params = [], []
    if since:
        clauses.append("time >= ?")
        params.append(since)
    if until:
        clauses.append("time < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def iter_events(conn: Store, since: str | None = None,
                until: str | None = None) -> Iterator[dict[str, Any]]:
    where, params = time_filter(since, until)
    for row in conn.stream(f"{_SELECT}{where} ORDER BY time, id", params):
        yield event_of_row(row)


def count_events(conn: Store, since: str | None = None, until: str | None = None) -> int:
    where, params = time_filter(since, until)
    return int(conn.execute(f"SELECT COUNT(*) FROM events{where}", params).fetchone()[0])


def get_event(conn: Store, event_id: str) -> dict[str, Any] | None:
    row = conn.execute(f"{_SELECT} WHERE id = ?", (event_id,)).fetchone()
    return None if row is None else event_of_row(row)


_SELECT = f"SELECT {', '.join(FIELDS)} FROM events"


def event_of_row(row: tuple[Any, ...] | list[Any]) -> dict[str, Any]:
    """A stored row as the event document DESIGN.md names (what receipts and leaves hold)."""
    event = dict(zip(FIELDS, row, strict=True))
    event["stream"] = bool(event["stream"])
    return event
