"""Cells of output people open: CSV for spreadsheets, text for terminals and charts.

Tenant, app, agent, task and model names come from clients, so they are hostile input here.
A spreadsheet runs a CSV cell that begins with `=`, `+`, `-` or `@` (or tab or carriage return)
as a formula, so such a cell gets a leading `'` (OWASP's rule: the spreadsheet shows it as
text). A plain decimal number is the one exception: a refund's cost `-0.0042` stays a number,
and a number cannot hold a formula. A terminal obeys control characters and ANSI escape
sequences, so those are shown escaped (`\\x1b`), as are other invisible or reordering
characters (bidirectional overrides); chart labels get the same, having no glyph for them.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from typing import IO, Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def spreadsheet_safe(value: Any) -> Any:
    """`value`, with a `'` before a text a spreadsheet would take for a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) \
            and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class CSVWriter:
    """A csv.DictWriter (header first) whose cells are spreadsheet-safe. Lines end in CRLF as
    RFC 4180 says: the csv module quotes a cell holding a line-end character only when that
    character is in the line terminator, so with LF alone a CR inside a cell split its row.
    Written to a terminal, text cells are also shown `visible` (a file keeps them as data)."""

    def __init__(self, out: IO[str], columns: Sequence[str]):
        self._writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n")
        self._writer.writeheader()
        self._terminal = out.isatty()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        self._writer.writerows({k: self._cell(v) for k, v in row.items()} for row in rows)

    def _cell(self, value: Any) -> Any:
        value = spreadsheet_safe(value)
        return visible(value) if self._terminal and isinstance(value, str) else value


def visible(text: str) -> str:
    """`text` with every character that does not simply print shown escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
