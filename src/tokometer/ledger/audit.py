"""`tokometer ledger audit`: recompute the whole log from the stored events.

Every event's leaf is recomputed and compared with the logged leaf at its index; a leaf with
no event means an event was deleted, an event without a leaf (or on a taken one) means one
was inserted. Then every signed tree head's root is recomputed from the events in one pass
and its signature checked, which also catches an event altered together with its stored leaf.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..events import FIELDS
from .merkle import roots_at
from .signer import TreeHead, verify_head
from .sqlite import leaf_of

_LEAF = FIELDS.index("leaf_index")
_ID = FIELDS.index("id")


@dataclass
class Finding:
    leaf_index: int | None  # where in the log (None: outside it)
    what: str


@dataclass
class AuditReport:
    events: int = 0
    leaves: int = 0
    heads: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def first(self) -> Finding | None:
        """The earliest problem in log order (events outside the log first)."""
        return min(self.findings, key=lambda f: -1 if f.leaf_index is None else f.leaf_index,
                   default=None)


def audit(conn: sqlite3.Connection, key: Ed25519PublicKey,
          progress: Callable[[int], None] | None = None) -> AuditReport:
    report = AuditReport()
    logged = [bytes(h) for (h,) in conn.execute(
        "SELECT hash FROM merkle_nodes WHERE level = 0 ORDER BY idx")]
    report.leaves = len(logged)
    computed: list[bytes | None] = [None] * len(logged)
    # In id order, which is about log order; each event is checked at the index it claims,
    # so no sort of the whole table is needed.
    rows = conn.execute(f"SELECT {', '.join(FIELDS)} FROM events")
    for row in rows:
        report.events += 1
        if progress is not None and report.events % 10_000 == 0:
            progress(10_000)
        index, event_id = row[_LEAF], row[_ID]
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
    for index, leaf in enumerate(computed):
        if leaf is None:
            report.findings.append(Finding(index, f"leaf {index} has no event: deleted"))
    _check_heads(conn, key, [c if c is not None else b"" for c in computed], report)
    return report


def _check_heads(conn: sqlite3.Connection, key: Ed25519PublicKey, leaves: list[bytes],
                 report: AuditReport) -> None:
    heads = [TreeHead(size, bytes(root), ts, bytes(sig)) for size, root, ts, sig in conn.execute(
        "SELECT tree_size, root_hash, timestamp, signature FROM tree_heads "
        "ORDER BY tree_size, timestamp")]
    report.heads = len(heads)
    roots = roots_at(leaves, {h.tree_size for h in heads if h.tree_size <= len(leaves)})
    for head in heads:
        if not verify_head(head, key):
            report.findings.append(Finding(head.tree_size, f"the tree head of {head.tree_size} "
                                           "leaves has a bad signature (not this log's key)"))
        elif head.tree_size > len(leaves):
            report.findings.append(Finding(len(leaves), f"a signed head covers {head.tree_size}"
                                           f" leaves but the log holds {len(leaves)}: deleted"))
        elif roots[head.tree_size] != head.root_hash:
            report.findings.append(Finding(head.tree_size - 1, f"the events do not reproduce "
                                           f"the signed root of {head.tree_size} leaves"))
