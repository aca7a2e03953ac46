"""Provenance fingerprints' cost per 1,000 words, against plain SHA-256 over the same text.

    .venv/bin/python bench/provenance.py               # about 100,000 words of docstrings
    .venv/bin/python bench/provenance.py --words 10000

With the c2pa extra installed it also signs each text with a C2PA text manifest (what
`[[labels]] c2pa = true` adds to an answer) and says what that costs and weighs.

The text is the standard library's docstrings (English prose with code), a response's length
at a time (RESPONSE_WORDS), as the registry will see them.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import statistics
import time
from collections.abc import Callable

from tokometer.provenance import fingerprints, text_sha256, words

KEY = b"bench key, 32 bytes long.........."
RESPONSE_WORDS = 500
MODULES = (argparse, hashlib, inspect, statistics)


def corpus(total: int) -> list[str]:
    """Texts of RESPONSE_WORDS words each, about total words in all, from docstrings."""
    pool = " ".join(inspect.getdoc(member) or "" for module in MODULES
                    for _, member in inspect.getmembers(module)).split()
    pool *= total // len(pool) + 1
    return [" ".join(pool[i:i + RESPONSE_WORDS]) for i in range(0, total, RESPONSE_WORDS)]


def per_1000_words(run: Callable[[str], object], texts: list[str], count: int) -> float:
    """Microseconds per 1,000 words, the best of 5 passes over the texts."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for text in texts:
            run(text)
        best = min(best, time.perf_counter() - start)
    return best / count * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=100_000)
    texts = corpus(parser.parse_args().words)
    count = sum(len(words(text)) for text in texts)
    plain = per_1000_words(lambda text: hashlib.sha256(text.encode()).digest(), texts, count)
    print(f"{len(texts)} texts, {count} words (normalised)")
    for name, run in (("words()", words), ("text_sha256()", text_sha256),
                      ("fingerprints()", lambda text: fingerprints(text, KEY))):
        cost = per_1000_words(run, texts, count)
        print(f"{name:<16} {cost:9.1f} µs per 1,000 words  ({cost / plain:6.1f} x plain SHA-256)")
    print(f"{'plain SHA-256':<16} {plain:9.1f} µs per 1,000 words")
    try:
        from tokometer.provenance.manifests import TextManifests
    except ImportError:
        return
    manifests = TextManifests(bytes(range(32)), "bench")
    signed = manifests.sign(texts[0], event_id="e", model="m")  # learns the manifest's size
    cost = per_1000_words(lambda text: manifests.sign(text, event_id="e", model="m"),
                          texts, count)
    extra = len(signed.encode()) - len(texts[0].encode())
    print(f"{'C2PA manifest':<16} {cost:9.1f} µs per 1,000 words, "
          f"{cost * RESPONSE_WORDS / 1000 / 1000:.2f} ms per {RESPONSE_WORDS}-word answer, "
          f"{extra:,} bytes of UTF-8 added to each")


if __name__ == "__main__":
    main()
