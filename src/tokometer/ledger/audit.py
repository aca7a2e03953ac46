"""`tokometer ledger audit`: recompute the whole log from the stored events.

Every event's leaf is recomputed and compared with the logged leaf at its index; a leaf with
no event means an event was deleted, an event without a leaf (or on a taken one) means one
was inserted. Then every signed tree head's root is recomputed from the events in one pass
and its signature checked, which also catches an event altered together with its stored leaf.
Signed heads in the order they were signed never shrink, and the log proves each consistent
with the one before (two writers on one store sign heads that go backwards). The rollups,
derived from the events, must hold exactly the events' sums, and the provenance registry's
rows the marks their events' leaves commit to. It all reads one snapshot, so a
running gateway's writes do not show as problems.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..events import FIELDS
from ..provenance.fingerprint import mark_sha256
from .log import stored_nodes
from .merkle import Tree, roots_at, verify_consistency
from .rollups import ROLLUPS, upserts
from .rows import LEAF_COLUMN, leaf_of
from .signer import TreeHead, verify_head
from .store import Store

_ID = FIELDS.index("id")
_CHUNK = 10_000


@dataclass
class Finding:
    leaf_index: int | None  # where in the log (None: outside it, or not about one leaf)
    what: str
    derived: bool = False  # in the rollups, which follow from the events


@dataclass
class AuditReport:
    events: int = 0
    leaves: int = 0
    heads: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def ordered(self) -> list[Finding]:
        """The problems in log order: events outside the log first, the rollups last (an
        altered event shows there too)."""
        return sorted(self.findings, key=lambda f: (
            f.derived, -1 if f.leaf_index is None else f.leaf_index))

    def first(self) -> Finding | None:
        return next(iter(self.ordered()), None)


def audit(conn: Store, key: Ed25519PublicKey,
          progress: Callable[[int], None] | None = None) -> AuditReport:
    conn.execute("BEGIN")  # one snapshot of a store a gateway may be writing
    try:
        return _audit(conn, key, progress)
    finally:
        conn.execute("ROLLBACK")


def _audit(conn: Store, key: Ed25519PublicKey,
           progress: Callable[[int], None] | None) -> AuditReport:
    report = AuditReport()
    logged = [bytes(h) for (h,) in conn.execute(
        "SELECT hash FROM merkle_nodes WHERE level = 0 ORDER BY idx")]
    report.leaves = len(logged)
    computed: list[bytes | None] = [None] * len(logged)
    watermark = conn.execute("SELECT value FROM ledger_meta WHERE key = 'rolled_up'").fetchone()
    rolled_up, sums = watermark[0] if watermark else 0, _Sums()
    unrolled: list[list[Any]] = []  # events the rollups hold, to fold a chunk at a time
    # In id order, which is about log order; each event is checked at the index it claims,
    # so no sort of the whole table is needed.
    rows = conn.execute(f"SELECT {', '.join(FIELDS)} FROM events")
    for row in rows:
        report.events += 1
        if progress is not None and report.events % _CHUNK == 0:
            progress(_CHUNK)
        index, event_id = row[LEAF_COLUMN], row[_ID]
        if index is None or not 0 <= index < len(logged):
            report.findings.append(Finding(None, f"event {event_id} is not in the log: "
                                                 "inserted outside the gateway"))
        elif computed[index] is not None:
            report.findings.append(Finding(index, f"event {event_id} claims leaf {index}, "
                                                  "which another event holds: inserted"))
        else:
            computed[index] = leaf = leaf_of(list(row))
            if leaf != logged[index]:
                report.findings.append(Finding(index, f"event {event_id} at leaf {index} does "
                                                      "not match its logged leaf: altered"))
        if index is not None and index < rolled_up:
            unrolled.append(list(row))
            if len(unrolled) == _CHUNK:
                sums.add(unrolled)
                unrolled = []
    sums.add(unrolled)
    for index, found in enumerate(computed):
        if found is None:
            report.findings.append(Finding(index, f"leaf {index} has no event: deleted"))
    _check_heads(conn, key, [c if c is not None else b"" for c in computed], report)
    report.findings += sums.differences(conn)
    report.findings += _registry_differences(conn)
    return report


def _registry_differences(conn: Store) -> list[Finding]:
    """The provenance registry's rows (kept beside the log, like the rollups) against the
    marks their events' leaves commit to."""
    found = []
    for event_id, digest, stored, event, committed in conn.execute(
            "SELECT p.event_id, p.text_sha256, p.fingerprints, e.id, e.fingerprint_sha256 "
            "FROM provenance p LEFT JOIN events e ON e.id = p.event_id"):
        if event is None:
            what = "has no event (deleted, or the row inserted)"
        elif committed is None:
            what = "has no mark in its event's leaf: inserted"
        elif _mark(digest, bytes(stored)) != committed:
            what = "does not match the mark its event's leaf commits to: altered"
        else:
            continue
        found.append(Finding(None, f"the provenance row of event {event_id} {what}",
                             derived=True))
    for (event_id,) in conn.execute(
            "SELECT id FROM events e WHERE fingerprint_sha256 IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM provenance p WHERE p.event_id = e.id)"):
        found.append(Finding(None, f"the provenance row of event {event_id} is missing: "
                                   "deleted", derived=True))
    return found


def _mark(digest: str, stored: bytes) -> str | None:
    try:
        return mark_sha256(digest, stored)
    except ValueError:  # not a hex digest: altered
        return None


def _check_heads(conn: Store, key: Ed25519PublicKey, leaves: list[bytes],
                 report: AuditReport) -> None:
    heads = [TreeHead(size, bytes(root), ts, bytes(sig)) for size, root, ts, sig in conn.execute(
        "SELECT tree_size, root_hash, timestamp, signature FROM tree_heads "
        "ORDER BY timestamp, tree_size")]
    report.heads = len(heads)
    roots = roots_at(leaves, {h.tree_size for h in heads if h.tree_size <= len(leaves)})
    signed = []
    for head in heads:
        if not verify_head(head, key):
            report.findings.append(Finding(head.tree_size, f"the tree head of {head.tree_size} "
                                           "leaves has a bad signature (not this log's key)"))
            continue
        signed.append(head)
        if head.tree_size > len(leaves):
            report.findings.append(Finding(len(leaves), f"a signed head covers {head.tree_size}"
                                           f" leaves but the log holds {len(leaves)}: deleted"))
        elif roots[head.tree_size] != head.root_hash:
            report.findings.append(Finding(head.tree_size - 1, f"the events do not reproduce "
                                           f"the signed root of {head.tree_size} leaves"))
    for before, after in itertools.pairwise(signed):
        if after.tree_size < before.tree_size:
            report.findings.append(Finding(after.tree_size, f"the head signed at "
                                           f"{after.timestamp} covers {after.tree_size} leaves, "
                                           f"fewer than the one before it ({before.tree_size}):"
                                           " the signed log went backwards"))
        elif before.tree_size > 0 and after.tree_size <= len(leaves):
            _check_consistency(conn, before, after, report)


def _check_consistency(conn: Store, before: TreeHead, after: TreeHead,
                       report: AuditReport) -> None:
    """Whether the log proves `after` an extension of `before`, as it would to a client."""
    try:
        proof = Tree(stored_nodes(conn), after.tree_size).consistency_proof(before.tree_size)
    except LookupError as e:
        ok, why = False, f" ({e})"
    else:
        ok, why = verify_consistency(before.tree_size, after.tree_size, proof,
                                     before.root_hash, after.root_hash), ""
    if not ok:
        report.findings.append(Finding(before.tree_size, f"the log proves no consistency from "
                                       f"the head of {before.tree_size} leaves to the next one, "
                                       f"of {after.tree_size}{why}"))


class _Sums:
    """What each rollup row must hold: the events folded again as the writer folds them."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple[Any, ...], list[Any]]] = {name: {} for name in ROLLUPS}

    def add(self, rows: list[list[Any]]) -> None:
        if not rows:
            return
        for name, (_, params) in zip(ROLLUPS, upserts(rows), strict=True):
            width = 2 + len(ROLLUPS[name])
            table = self.rows[name]
            for values in params:
                key, measures = values[:width], [*values[width:-1], Decimal(values[-1])]
                if (acc := table.get(key)) is None:
                    table[key] = measures
                else:
                    table[key] = [a + b for a, b in zip(acc, measures, strict=True)]

    def differences(self, conn: Store) -> list[Finding]:
        found = []
        for name, expected in self.rows.items():
            width = 2 + len(ROLLUPS[name])
            stored = {tuple(r[:width]): [*r[width:-1], Decimal(r[-1])]
                      for r in conn.execute(f"SELECT * FROM {name}")}
            for key in sorted(stored.keys() | expected.keys()):
                has, wants = stored.get(key), expected.get(key)
                if has != wants:
                    found.append(Finding(None, f"the rollup {name} at {', '.join(key)} holds "
                                         f"{_measures(has)} but its events sum to "
                                         f"{_measures(wants)}", derived=True))
        return found


def _measures(values: list[Any] | None) -> str:
    return "nothing" if values is None else "(" + ", ".join(str(v) for v in values) + ")"
