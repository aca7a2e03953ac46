"""The identities of ingested readings, so that a reading sent twice is recorded once.

An app that reports its usage (ingest/) retries what it is not sure was received, and may
report one call by two channels (a span, and an event naming the provider's response id).
Each reading carries its identities; the log writer claims them in the transaction that
appends the reading's event, under the log's lock, so that two processes appending the same
reading at once record it once: the second finds the first's claim and appends nothing.
"""

from __future__ import annotations

from .store import Claims, Store

_FIND = "SELECT event_id FROM ingest_claims WHERE tenant = ? AND origin = ? AND reading_id = ?"
_CLAIM = "INSERT INTO ingest_claims (tenant, origin, reading_id, event_id) VALUES (?,?,?,?)"


def claim(store: Store, event_id: str, claims: Claims) -> str:
    """In the caller's transaction, under the log's lock: the id of the event that holds a
    reading with these identities, one recorded before if any, else `event_id`, whose
    claims are then stored."""
    for identity in claims:
        found = store.execute(_FIND, identity).fetchone()
        if found is not None:
            return str(found[0])
    store.executemany(_CLAIM, [(*identity, event_id) for identity in claims])
    return event_id
