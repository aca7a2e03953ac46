"""Every way a command prints rows: an aligned table, CSV, JSON, JSON lines; and progress.

Cells are stored values that clients chose, so tables and findings print them escaped
(`visible`): a model name cannot move the cursor or rewrite the terminal.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from ..analytics.cells import CSVWriter, visible

FORMATS = ("table", "csv", "json", "jsonl")


def show(rows: Iterable[dict[str, Any]], columns: list[str], fmt: str) -> None:
    """The rows in `fmt`, one of FORMATS."""
    if fmt == "json":
        print(orjson.dumps(list(rows), option=orjson.OPT_INDENT_2).decode())
    elif fmt == "jsonl":
        for row in rows:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
    elif fmt == "csv":
        CSVWriter(sys.stdout, columns).write(rows)
    else:
        _table(rows, columns)


def show_json(document: Any, *, indent: bool = False) -> None:
    print(orjson.dumps(document, option=orjson.OPT_INDENT_2 if indent else 0).decode())


def show_lines(lines: Iterable[str]) -> None:
    """Lines of text that quote stored values, escaped."""
    for line in lines:
        print(visible(line))


@contextlib.contextmanager
def progress(total: int | None, unit: str) -> Iterator[Callable[[int], None]]:
    """A one-line progress count on stderr, when stderr is a terminal (`total` None: not
    known ahead, the count alone)."""
    done = 0
    shown = sys.stderr.isatty()

    def step(n: int) -> None:
        nonlocal done
        done += n
        if not shown:
            return
        if total is None:
            print(f"\r{done:,} {unit}", end="", file=sys.stderr, flush=True)
        else:
            print(f"\r{done:,} / {total:,} {unit} ({done * 100 // max(total, 1)}%)", end="",
                  file=sys.stderr, flush=True)

    try:
        yield step
    finally:
        if shown:
            print(file=sys.stderr)


def _table(rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    cells = [["" if r.get(c) is None else visible(str(r[c])) for c in columns]
             for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.rjust(w) if v.replace(".", "").isdigit() else v.ljust(w)
                        for v, w in zip(row, widths, strict=True)).rstrip())
    if not cells:
        print("(none)")
