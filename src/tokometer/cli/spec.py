"""How a command is declared: its words, its help, its arguments and the function it runs.

The parser (cli/__init__.py) is built by walking these declarations, so a command's help,
its arguments and its `--help` test come from one place.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..config import default_path
from ..events import rfc3339


@dataclass(frozen=True, slots=True)
class Arg:
    """One argparse argument: `add_argument(*flags, **options)`."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True, slots=True)
class OneOf:
    """Arguments of which exactly one is given."""

    args: tuple[Arg, ...]


@dataclass(frozen=True, slots=True)
class Command:
    """`words` under the program, e.g. "budgets set"; `run` None makes it a group of commands."""

    words: str
    help: str
    run: Callable[[argparse.Namespace], int] | None = None
    args: tuple[Arg | OneOf, ...] = ()
    about: str = ""  # the --help description, when it says more than `help`
    config: bool = True  # takes --config (every command but the offline verify-receipt)


_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def time_arg(text: str) -> str:
    """An argparse type: an RFC 3339 time, a date or an age, as an RFC 3339 UTC time."""
    try:
        if m := _RELATIVE.match(text):
            return rfc3339(datetime.now(UTC)
                           - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))}))
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return rfc3339(t if t.tzinfo else t.replace(tzinfo=UTC))
    except (ValueError, OverflowError):  # not a time, or before year 1 / after 9999 in UTC
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time in the years 1 to 9999: use 2026-11-28, "
            "2026-11-28T10:00:00Z or an age like 24h") from None


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`."""
    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number from {low} to {high}")
        return number
    return parse


CONFIG = arg("--config", default=default_path(),
             help="the TOML config (default: $TOKOMETER_CONFIG or ./tokometer.toml)")
SINCE = arg("--since", type=time_arg, help="RFC 3339 time, a date, or an age like 24h, 7d")
UNTIL = arg("--until", type=time_arg, help="RFC 3339 time, a date, or an age like 1h")
JSON_LINES = arg("--json", action="store_true", help="print JSON lines")
CHART = arg("--chart", type=Path, help="also draw it to FILE.png or FILE.svg")
TABLE_FORMAT = arg("--format", choices=("table", "csv", "json"), default="table")
