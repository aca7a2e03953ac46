"""API keys: created once, stored only as SHA-256 hashes, each bound to tenant/app/region.

Keys are 256 random bits, so a fast hash is as safe as a slow one. The gateway keeps the
keys it has seen in memory; an unknown key is looked up off the event loop (so a key
created a moment ago works at once) and revocations are picked up within a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from ..errors import LedgerError, RequestError
from ..events import new_event_id, rfc3339
from ..ledger.store import Store

log = logging.getLogger("tokometer.policy")

_PREFIX = "tkm-"
REFRESH_SECONDS = 0.5  # with the query, a revocation reaches every process within a second


@dataclass(frozen=True, slots=True)
class Consumer:
    key_id: str | None
    tenant: str | None
    app: str | None
    region: str | None


ANONYMOUS = Consumer(None, None, None, None)  # who a request without a valid key is


def is_key_shaped(text: str) -> bool:
    """Whether `text` looks like a consumer key (they are random: guessing one is hopeless,
    so a wrong one is a client's mistake, not a guess worth braking)."""
    return text.startswith(_PREFIX)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(conn: Store, tenant: str, app: str,
               region: str | None = None) -> tuple[str, str]:
    """Returns (key, key_id); the key itself is never stored."""
    if not tenant or not app:
        raise RequestError("a key needs a non-empty tenant and app")
    if region is not None and (len(region) != 2 or not region.isalpha() or not region.isupper()):
        raise RequestError(f"region must be an ISO 3166-1 alpha-2 code like 'DE', got {region!r}")
    key = _PREFIX + secrets.token_urlsafe(32)
    key_id = new_event_id()
    conn.execute(
        "INSERT INTO keys (key_id, key_hash, tenant, app, region, created) VALUES (?,?,?,?,?,?)",
        (key_id, hash_key(key), tenant, app, region, rfc3339(datetime.now(UTC))),
    )
    return key, key_id


def list_keys(conn: Store) -> list[dict[str, str | None]]:
    rows = conn.execute(
        "SELECT key_id, tenant, app, region, created, revoked FROM keys ORDER BY key_id"
    )
    cols = ("key_id", "tenant", "app", "region", "created", "revoked")
    return [dict(zip(cols, row, strict=True)) for row in rows]


def revoke_key(conn: Store, key_id: str) -> None:
    cur = conn.execute("UPDATE keys SET revoked = ? WHERE key_id = ? AND revoked IS NULL",
                       (rfc3339(datetime.now(UTC)), key_id))
    if cur.rowcount == 0:
        exists = conn.execute("SELECT 1 FROM keys WHERE key_id = ?", (key_id,)).fetchone()
        raise RequestError(f"key {key_id} is already revoked" if exists
                           else f"no key with id {key_id}")


class KeyRing:
    """The gateway's view of the keys table."""

    def __init__(self, conn: Store):
        self._conn = conn
        self._lock = asyncio.Lock()
        self._known: dict[str, Consumer] = {}

    async def lookup(self, key: str) -> Consumer | None:
        digest = hash_key(key)
        consumer = self._known.get(digest)
        if consumer is None:
            async with self._lock:  # one store read at a time, never on the loop itself
                consumer = await asyncio.to_thread(self._read, digest)
            if consumer is not None:
                self._known[digest] = consumer
        return consumer

    def _read(self, digest: str) -> Consumer | None:
        row = self._conn.execute(
            "SELECT key_id, tenant, app, region FROM keys WHERE key_hash = ? AND revoked IS NULL",
            (digest,),
        ).fetchone()
        return Consumer(*row) if row else None

    def forget(self, key_id: str) -> None:
        """Drop a revoked key at once (the admin API revokes through this gateway)."""
        for digest, consumer in list(self._known.items()):
            if consumer.key_id == key_id:
                del self._known[digest]

    async def watch_revocations(self) -> None:
        """Forget revoked keys; runs for the life of the gateway."""
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            if self._known:
                try:
                    revoked = await asyncio.to_thread(self._revoked_hashes)
                except (self._conn.Error, LedgerError) as e:  # LedgerError: unavailable
                    log.warning("reading revoked keys failed (will retry): %s", e)
                    continue
                for digest in revoked:
                    self._known.pop(digest, None)

    def _revoked_hashes(self) -> list[str]:
        rows = self._conn.execute("SELECT key_hash FROM keys WHERE revoked IS NOT NULL")
        return [r[0] for r in rows]
