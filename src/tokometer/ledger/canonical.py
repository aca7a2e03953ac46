"""The bytes an event's Merkle leaf commits to: RFC 8785 (JCS) canonical JSON of the event's
leaf document.

An event as stored holds only strings, integers, floats, booleans and nulls under ASCII keys.
For such documents JCS is orjson with sorted keys, except that JCS writes an integral float
as an integer (5.0 → 5); so this is many times faster than a general JCS encoder
(bench/hot_path.py), and a test holds it to the rfc8785 package's output.

The leaf document is the event less its late fields (events.LATE_FIELDS, added after stores
were first written) while they are null: an event stored before a field existed reads it back
as null, and so keeps the leaf, and the receipts, it was logged with.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..events import LATE_FIELDS


def leaf_document(event: dict[str, Any]) -> dict[str, Any]:
    """The event as its leaf commits to it (what receipts carry)."""
    return {k: v for k, v in event.items() if v is not None or k not in LATE_FIELDS}


def canonical_json(document: dict[str, Any]) -> bytes:
    flat = {k: int(v) if isinstance(v, float) and v.is_integer() else v
            for k, v in document.items()}
    return orjson.dumps(flat, option=orjson.OPT_SORT_KEYS)
