"""The provenance registry in the store: per generated answer, the SHA-256 of its normalised
text and its keyed fingerprints (fingerprint.py), never the text. The event's leaf commits to
both (`fingerprint_sha256`: SHA-256 of the text's 32-byte digest followed by the
fingerprints as stored), so a receipt for the event proves they were registered when it was
logged, and the audit finds a registry row altered after.

A look-up reads the whole registry once: the documents holding the text's fingerprints, and
how many distinct answers hold each (the boilerplate discount). That is one pass over every
answer's fingerprints, each row first compared as stored (most share none, and are not
decoded): about 10 s for a million answers (bench/provenance_lookup.py). An inverted index
would make it a look-up per fingerprint, at the cost of a row per fingerprint.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..ledger.read import get_event
from ..ledger.receipts import build_receipt
from ..ledger.store import Store, Writes
from .fingerprint import fingerprints, mark_sha256, match, text_sha256, tier, words

log = logging.getLogger("tokometer.provenance")

_OFFLOAD_CHARS = 8_192  # fingerprint longer answers off the event loop
MAX_MATCHES = 20
_INSERT = ("INSERT INTO provenance (event_id, text_sha256, fingerprints) VALUES (?, ?, ?) "
           "ON CONFLICT DO NOTHING")
_ALL = ("SELECT p.event_id, p.text_sha256, p.fingerprints FROM provenance p "
        "JOIN events e ON e.id = p.event_id")
_OF_TENANT = _ALL + " WHERE e.tenant = ?"


@dataclass(frozen=True, slots=True)
class Query:
    """A text to look up, normalised and fingerprinted (CPU only: no store needed)."""

    text_sha256: str
    fingerprints: frozenset[int]


def fingerprint_key(secret: bytes) -> bytes:
    """The registry's HMAC key, derived from the ledger's signing key: every process and
    replica that signs the log fingerprints alike, and nobody else can."""
    return hmac.digest(secret, b"tokometer provenance fingerprints v1", "sha256")


@dataclass(frozen=True, slots=True)
class Mark:
    """What the registry keeps of one answer."""

    text_sha256: str
    fingerprints: bytes  # sorted, 8 bytes big-endian each

    @property
    def sha256(self) -> str:
        """What the event's leaf commits to (`fingerprint_sha256`)."""
        return mark_sha256(self.text_sha256, self.fingerprints)

    def writes(self, event_id: str) -> Writes:
        """The registry's row, to commit along with the event."""
        return ((_INSERT, (event_id, self.text_sha256, self.fingerprints)),)


class Registry:
    def __init__(self, key: bytes):
        self.key = key

    async def mark(self, text: str) -> Mark | None:
        """The answer's mark; None for an answer with no words (an emoji alone matches
        nothing), or when marking failed (the reading is recorded all the same)."""
        if not text:
            return None
        try:
            if len(text) > _OFFLOAD_CHARS:
                return await asyncio.to_thread(self._mark, text)
            return self._mark(text)
        except Exception:  # never at the reading's cost
            log.exception("fingerprinting an answer failed; it is not registered")
            return None

    def _mark(self, text: str) -> Mark | None:
        ws = words(text)
        return Mark(text_sha256(ws), _packed(fingerprints(ws, self.key))) if ws else None

    def query(self, text: str) -> Query | None:
        """The text as a look-up asks for it; None when it has no words to match."""
        ws = words(text)
        return Query(text_sha256(ws), fingerprints(ws, self.key)) if ws else None

    def check(self, store: Store, query: Query | None,
              tenant: str | None = None) -> dict[str, Any]:
        """How strong the evidence is that the queried text was generated here
        (fingerprint.tier), the matching answers, best first, and a receipt for the best.
        `tenant`: among its own answers only, boilerplate counted among them too (other
        tenants' answers change nothing, so reveal nothing)."""
        if query is None:  # no words: no evidence
            return {"tier": "none", "matches": [], "receipt": None}
        documents: dict[str, frozenset[int]] = {}
        exact: list[str] = []
        seen_sets: set[int] = set()  # hashes of the fingerprint sets met (not the sets: GBs)
        frequency: Counter[int] = Counter()  # of the query's fingerprints, in distinct sets
        probe = _as_stored(query.fingerprints)  # compared as stored: most rows share none
        rows = store.stream(_ALL) if tenant is None else store.stream(_OF_TENANT, (tenant,))
        for event_id, sha, blob in rows:
            blob = bytes(blob)
            first_time = (digest := hash(blob)) not in seen_sets
            if first_time:  # the same answer given twice counts once
                seen_sets.add(digest)
            if sha == query.text_sha256:
                exact.append(event_id)
            if len(blob) % 8 == 0 and probe.isdisjoint(memoryview(blob).cast("Q")):
                continue
            fps = _unpacked(blob)
            shared = query.fingerprints & fps
            if first_time:
                frequency.update(shared)
            if shared:
                documents[event_id] = fps
        matches = match(query.fingerprints, documents, frequency, len(seen_sets))
        if exact:
            found = "exact"
        else:
            found = tier(matches[0].share, matches[0].matched, False) if matches else "none"
        if found == "none":  # no evidence, which is not evidence of a human writer
            return {"tier": found, "matches": [], "receipt": None}
        ranked = [(event_id, 1.0) for event_id in exact] + [
            (m.doc_id, m.share) for m in matches if m.doc_id not in exact]
        return {"tier": found,
                "matches": [_described(store, event_id, share)
                            for event_id, share in ranked[:MAX_MATCHES]],
                "receipt": build_receipt(store, ranked[0][0])}


def _described(store: Store, event_id: str, share: float) -> dict[str, Any]:
    event = get_event(store, event_id) or {}
    return {"event_id": event_id, "time": event.get("time"), "model": event.get("model"),
            "provider": event.get("provider"), "tenant": event.get("tenant"),
            "share": round(share, 4)}


def _packed(fps: frozenset[int]) -> bytes:
    return b"".join(fp.to_bytes(8, "big") for fp in sorted(fps))


def _as_stored(fps: frozenset[int]) -> frozenset[int]:
    """Fingerprints as this machine reads their stored bytes (8 bytes big-endian each)."""
    return frozenset(int.from_bytes(fp.to_bytes(8, "big"), sys.byteorder) for fp in fps)


def _unpacked(blob: bytes) -> frozenset[int]:
    fps = array("Q", blob)
    if sys.byteorder == "little":
        fps.byteswap()
    return frozenset(fps)
