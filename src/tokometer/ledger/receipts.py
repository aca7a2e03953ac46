"""Receipts: one event, its place in the log and the proof, checkable with only a public key.

    {"receipt_version": 1, "event": {...}, "leaf_index": 41, "leaf_hash": "…",
     "inclusion_proof": ["…", …], "tree_head": {"tree_size", "root_hash", "timestamp",
     "signature"}}

`verify_receipt` needs nothing but the document and the log's public key.
"""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .canonical import canonical_json, leaf_document
from .derive import LOG_LOCK, sign_head
from .log import leaf_count, walk_stored
from .merkle import Tree, leaf_hash, verify_inclusion
from .read import get_event
from .signer import Signer, TreeHead, verify_head
from .store import Store

RECEIPT_VERSION = 1


class NotFound(LookupError):
    """No such event, or not in the log yet."""


def latest_head(conn: Store, covering: int = 0) -> TreeHead | None:
    """The newest signed head over at least `covering` leaves."""
    row = conn.execute("SELECT tree_size, root_hash, timestamp, signature FROM tree_heads "
                       "WHERE tree_size >= ? ORDER BY tree_size DESC, timestamp DESC LIMIT 1",
                       (covering,)).fetchone()
    return None if row is None else TreeHead(row[0], bytes(row[1]), row[2], bytes(row[3]))


def build_receipt(conn: Store, event_id: str) -> dict[str, Any] | None:
    """The receipt for an event, or None when no signed head covers it yet (sign, retry)."""
    stored = get_event(conn, event_id)
    if stored is None or stored["leaf_index"] is None:
        raise NotFound(f"no event {event_id} in the log")
    event = leaf_document(stored)
    index = event["leaf_index"]
    head = latest_head(conn, covering=index + 1)
    if head is None:
        return None
    proof = walk_stored(conn, head.tree_size, lambda tree: tree.inclusion_proof(index))
    return {"receipt_version": RECEIPT_VERSION, "event": event, "leaf_index": index,
            "leaf_hash": leaf_hash(canonical_json(event)).hex(),
            "inclusion_proof": [p.hex() for p in proof], "tree_head": head.to_json()}


def verify_receipt(receipt: Any, key: Ed25519PublicKey) -> list[str]:
    """What is wrong with a receipt; an empty list means it proves its event is in the log."""
    if not isinstance(receipt, dict):
        return ["the receipt is not a JSON object"]
    try:
        event, index = receipt["event"], receipt["leaf_index"]
        head = TreeHead.from_json(receipt["tree_head"])
        proof = [bytes.fromhex(p) for p in receipt["inclusion_proof"]]
    except (KeyError, TypeError, ValueError) as e:
        return [f"the receipt is malformed: {e}"]
    problems = []
    if not isinstance(event, dict) or not isinstance(index, int):
        return ["the receipt's event must be an object and leaf_index an integer"]
    if event.get("leaf_index") != index:
        problems.append(f"the event says leaf {event.get('leaf_index')}, the receipt {index}")
    leaf = leaf_hash(canonical_json(leaf_document(event)))
    if receipt.get("leaf_hash") not in (None, leaf.hex()):
        problems.append("leaf_hash is not the hash of the event: the event was altered")
    if not verify_head(head, key):
        problems.append("the tree head's signature does not verify with this public key")
    if not verify_inclusion(leaf, index, head.tree_size, proof, head.root_hash):
        problems.append(f"the inclusion proof does not lead from this event at leaf {index} to "
                        f"the signed root of {head.tree_size} leaves")
    return problems


def consistency_proof(conn: Store, first: int, second: int) -> list[bytes]:
    """PROOF(first, D[0:second]); ValueError for sizes the log cannot prove."""
    size = leaf_count(conn)
    if not 0 < first <= second <= size:
        raise ValueError(f"need 0 < first <= second <= {size} (the log's size), "
                         f"got first={first}, second={second}")
    return walk_stored(conn, second, lambda tree: tree.consistency_proof(first))


def receipt_signing_if_needed(conn: Store, event_id: str, signer: Signer) -> dict[str, Any]:
    """The receipt for an event, signing a head over the stored log first if none covers it
    yet (the CLI's way; a running gateway's writer signs on request, transparency.py)."""
    receipt = build_receipt(conn, event_id)
    if receipt is None:
        sign_stored_head(conn, signer)
        receipt = build_receipt(conn, event_id)
    assert receipt is not None, "a head signed over the stored log covers every stored event"
    return receipt


def sign_stored_head(conn: Store, signer: Signer) -> TreeHead:
    """Sign the log as stored now.

    The clock and the size are read holding the log's lock, under which running gateways'
    writers also commit leaves and sign their heads: none lands between the two
    readings, so heads in the order of their timestamps never shrink.
    """
    with conn.transaction():
        conn.lock(LOG_LOCK)  # PostgreSQL's replicas append and sign under it too
        timestamp = int(time.time() * 1000)
        size = leaf_count(conn)
        return sign_head(conn, signer, size, walk_stored(conn, size, Tree.root), timestamp)
