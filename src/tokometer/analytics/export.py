"""`tokometer export`: every event for data teams, as CSV or Parquet, streamed in batches.

CSV cells a spreadsheet would run as formulas are neutralised (see cells.py). Parquet columns
are typed: integers, floats, booleans, strings, and money as decimal(38, 18)
(exact for every cost the meter produces; 18 places is far below a billable amount).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

from ..events import DECIMAL_FIELDS, FIELDS
from ..ledger.read import iter_events
from ..ledger.store import Store
from .cells import CSVWriter

BATCH = 65_536
_INTEGERS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
             "reasoning_tokens", "counted_input_tokens", "counted_output_tokens", "status",
             "cache_write_1h_tokens", "web_search_requests", "leaf_index")
_FLOATS = ("duration_ms", "ttft_ms")
_PLACES = Decimal("1e-18")


def export(conn: Store, fmt: str, out: Path, since: str | None = None,
           until: str | None = None, progress: Callable[[int], None] | None = None) -> int:
    """Write the events to `out`; returns how many."""
    events = iter_events(conn, since, until)
    if fmt == "csv":
        return _csv(events, out, progress)
    return _parquet(events, out, progress)


def _batches(events: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    while batch := list(islice(events, BATCH)):
        yield batch


def _csv(events: Iterator[dict[str, Any]], out: Path,
         progress: Callable[[int], None] | None) -> int:
    n = 0
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = CSVWriter(f, FIELDS)
        for batch in _batches(events):
            writer.write(batch)
            n += len(batch)
            if progress:
                progress(len(batch))
    return n


def _parquet(events: Iterator[dict[str, Any]], out: Path,
             progress: Callable[[int], None] | None) -> int:
    import pyarrow as pa  # imported here: only exports need it
    import pyarrow.parquet as pq

    def kind(name: str) -> pa.DataType:
        if name in _INTEGERS:
            return pa.int64()
        if name in _FLOATS:
            return pa.float64()
        if name in DECIMAL_FIELDS:
            return pa.decimal128(38, 18)
        return pa.bool_() if name == "stream" else pa.string()

    schema = pa.schema([(name, kind(name)) for name in FIELDS])
    n = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for batch in _batches(events):
            columns = {name: [e[name] for e in batch] for name in FIELDS}
            for name in DECIMAL_FIELDS:
                columns[name] = [None if v is None else Decimal(v).quantize(_PLACES)
                                 for v in columns[name]]
            writer.write_table(pa.table(columns, schema=schema))
            n += len(batch)
            if progress:
                progress(len(batch))
    return n
