"""A provenance look-up against a large registry: `tokometer provenance check`'s time with N
registered answers in a SQLite store.

    .venv/bin/python bench/provenance_lookup.py                      # 1,000,000 answers
    .venv/bin/python bench/provenance_lookup.py --registered 100000  # a quick look

The registry holds 1,000 real answers (500-word runs of the standard library's docstrings,
fingerprinted as the gateway fingerprints them) and, for the rest, rows of random
fingerprints as many as a real answer has: the same bytes to read and compare. Three
look-ups: a registered answer word for word, a 30% excerpt of one, and an unrelated text.
The rows' events are bare (no Merkle leaves): the receipt a match comes with is left out,
its time is the ledger's (bench/ledger.py: under a millisecond at a million events).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from provenance import corpus
from tokometer.events import new_event_id
from tokometer.ledger import open_store
from tokometer.provenance import registry as registry_module
from tokometer.provenance.registry import Registry

KEY = b"bench key, 32 bytes long.........."
REAL = 1_000
BATCH = 10_000


def build(store_path: Path, registered: int, registry: Registry) -> list[str]:
    """A store with `registered` answers; the texts of the real ones."""
    texts = corpus(REAL * 500)[:REAL]
    marks = [asyncio.run(registry.mark(text)) for text in texts]
    sizes = [len(m.fingerprints) for m in marks if m is not None]
    size = int(statistics.mean(sizes)) // 8 * 8
    store = open_store(store_path, create=True)
    conn = store.conn  # type: ignore[attr-defined]
    start = time.perf_counter()
    for first in range(0, registered, BATCH):
        rows = []
        for i in range(first, min(first + BATCH, registered)):
            mark = marks[i] if i < len(marks) else None
            rows.append((new_event_id(), mark.text_sha256 if mark else os.urandom(32).hex(),
                         mark.fingerprints if mark else os.urandom(size)))
        with conn:
            conn.executemany("INSERT INTO events (id, tenant) VALUES (?, 'acme')",
                             [(r[0],) for r in rows])
            conn.executemany("INSERT INTO provenance (event_id, text_sha256, fingerprints) "
                             "VALUES (?, ?, ?)", rows)
        done = min(first + BATCH, registered)
        rate = done / (time.perf_counter() - start)
        print(f"\rregistered {done:,} of {registered:,} ({rate:,.0f}/s)", end="",
              file=sys.stderr, flush=True)
    print(file=sys.stderr)
    store.close()
    print(f"{registered:,} answers, {size // 8} fingerprints each on average "
          f"({store_path.stat().st_size / 1e9:.2f} GB store)")
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registered", type=int, default=1_000_000)
    args = parser.parse_args()
    registry = Registry(KEY)
    registry_module.build_receipt = lambda store, event_id: None  # bare events: no leaves
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "registry.db"
        texts = build(path, args.registered, registry)
        words = texts[7].split()
        unrelated = " ".join(reversed(texts[-1].split()))  # the same words, no shared run
        with open_store(path) as store:
            for name, text in (("exact copy", texts[3]),
                               ("30% excerpt", " ".join(words[100:250])),
                               ("unrelated", unrelated)):
                start = time.perf_counter()
                answer = registry.check(store, registry.query(text))
                took = time.perf_counter() - start
                print(f"{name:<12} {took:7.2f} s  tier {answer['tier']:<8} "
                      f"{args.registered / took:12,.0f} answers/s")


if __name__ == "__main__":
    main()
