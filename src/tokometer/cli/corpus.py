"""`tokometer count`: the tokens of a corpus by tokenizer family, and what reading it once
would cost with each configured model."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from .. import config
from ..counting.corpus import (
    DEFAULT_FAMILIES,
    FAMILIES,
    TEXT_SUFFIXES,
    Tally,
    corpus_files,
    count,
    spec_of,
    texts,
)
from ..errors import TokometerError
from ..events import Usage, decimal_str
from .output import progress, show

COLUMNS = ["tokenizer", "tokens", "bytes_per_token", "chars_per_token", "model", "cost",
           "currency"]


def count_command(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.tokenizers.split(",") if n.strip()]
    if not names:
        raise TokometerError("--tokenizers: name at least one tokenizer")
    settings = config.load(args.config) if Path(args.config).is_file() else None
    models = [m for m in (settings.models.values() if settings else ()) if m.tokenizer]
    specs = tuple(dict.fromkeys([*map(spec_of, names), *(m.tokenizer or "" for m in models)]))
    paths = [Path(p) for p in args.paths]
    with progress(_text_size(paths), "bytes of text") as step:
        done = [0]

        def advance(total: Tally) -> None:
            step(total.bytes - done[0])
            done[0] = total.bytes

        tally = count(texts(paths, field=args.field, columns=tuple(args.column or ())),
                      specs, settings.server.data_dir if settings else Path("data"),
                      workers=args.workers, progress=advance)
    print(f"{tally.texts:,} texts, {tally.bytes:,} bytes, {tally.chars:,} characters",
          file=sys.stderr)
    rows: list[dict[str, Any]] = [_density(tally, name, spec_of(name)) for name in names]
    if settings is not None:
        from ..catalog import Pricer

        pricer = Pricer(settings.server.currency, settings.exchange_rates)
        now = datetime.now(UTC)
        for model in models:
            spec = model.tokenizer or ""
            priced = pricer.price(model, model.routes[0],
                                  Usage(input_tokens=tally.tokens[spec]), now)
            rows.append({**_density(tally, _family(spec), spec), "model": model.name,
                         "cost": decimal_str(priced.cost) if priced.cost is not None else None,
                         "currency": priced.currency})
    show(rows, COLUMNS, args.format)
    return 0


def _density(tally: Tally, name: str, spec: str) -> dict[str, Any]:
    tokens = tally.tokens[spec]
    return {"tokenizer": name, "tokens": tokens,
            "bytes_per_token": _ratio(tally.bytes, tokens),
            "chars_per_token": _ratio(tally.chars, tokens),
            "model": None, "cost": None, "currency": None}


def _ratio(amount: int, tokens: int) -> str | None:
    return decimal_str(round(Decimal(amount) / tokens, 3)) if tokens else None


def _family(spec: str) -> str:
    return next((name for name, known in FAMILIES.items() if known == spec), spec)


def _text_size(paths: list[Path]) -> int | None:
    """The bytes of text ahead, known when every file is plain text (its size on disk,
    less a byte-order mark); None when a data file's text is known only once read."""
    files = [f for p in paths for f in (corpus_files(p) if p.is_dir() else [p])]
    if not all(f.suffix.lower() in TEXT_SUFFIXES and f.is_file() for f in files):
        return None
    return sum(f.stat().st_size for f in files)


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


ABOUT = (
    "Count the tokens of a corpus with each tokenizer family, offline: plain text and "
    "Markdown files whole, JSON Lines by --field (a key or dotted path), CSV and Parquet by "
    "--column (default: every text column). Says how many bytes and characters each token "
    "holds (a language's token density differs by family), and, with a config, what reading "
    "the corpus once as input would cost with each configured model, by its own tokenizer. "
    f"Families: {', '.join(FAMILIES)}; or any tokenizer spec (hf:PATH/tokenizer.json). "
    "Counts across every core for a corpus of more than a few megabytes."
)
DEFAULT_TOKENIZERS = ",".join(DEFAULT_FAMILIES)
