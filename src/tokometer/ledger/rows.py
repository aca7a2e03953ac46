"""An event as a row of the events table, and the Merkle leaf hash of such a row."""

from __future__ import annotations

import operator
from typing import Any

import orjson

from ..events import DECIMAL_FIELDS, FIELDS, LATE_FIELDS, Event, decimal_str
from .merkle import leaf_hash

_ALL_FIELDS = operator.attrgetter(*FIELDS)
_DECIMAL_COLUMNS = [FIELDS.index(name) for name in DECIMAL_FIELDS]
_STREAM_COLUMN = FIELDS.index("stream")
LEAF_COLUMN = FIELDS.index("leaf_index")


def event_row(event: Event) -> list[Any]:
    """The event as column values: decimals as strings, booleans as integers."""
    row = list(_ALL_FIELDS(event))
    for i in _DECIMAL_COLUMNS:
        if row[i] is not None:
            row[i] = decimal_str(row[i])
    row[_STREAM_COLUMN] = int(row[_STREAM_COLUMN])
    return row


_BY_NAME = sorted(range(len(FIELDS)), key=FIELDS.__getitem__)  # JCS orders keys by name
_SORTED_FIELDS = [FIELDS[i] for i in _BY_NAME]
_FLOAT_COLUMNS = [FIELDS.index(name) for name in ("duration_ms", "ttft_ms")]


def leaf_of(row: list[Any] | tuple[Any, ...]) -> bytes:
    """The Merkle leaf hash of an event row: SHA-256(0x00 || JCS of the stored event).

    The same bytes as canonical_json(leaf_document(event_of_row(row))) (a test holds them
    equal), built for the writer and the audit, which hash every event: only the float
    columns can hold an integral float, and the keys are put in JCS order once, here.
    """
    values = [row[i] for i in _BY_NAME]
    for i in _FLOAT_SORTED:
        if isinstance(values[i], float) and values[i].is_integer():
            values[i] = int(values[i])
    values[_STREAM_SORTED] = bool(values[_STREAM_SORTED])
    document = dict(zip(_SORTED_FIELDS, values, strict=True))
    for name in LATE_FIELDS:  # left out while null: see canonical.leaf_document
        if document[name] is None:
            del document[name]
    return leaf_hash(orjson.dumps(document))


_FLOAT_SORTED = [_BY_NAME.index(i) for i in _FLOAT_COLUMNS]
_STREAM_SORTED = _BY_NAME.index(_STREAM_COLUMN)
