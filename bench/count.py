"""Corpus counting's speed: `tokometer count`'s MB/s for each tokenizer family against the
tokenizer library called directly, text by text, on one core (pinned: some libraries start
threads of their own), in the same run.

    .venv/bin/python bench/count.py                   # every default family, ~32 MB corpus
    .venv/bin/python bench/count.py --families o200k  # one

The corpus is real and in many languages, from what is installed: every translation
pycountry ships (country, language, currency and script names in ~600 catalogues: Latin,
Cyrillic, Arabic, Indic, CJK, Hangul, ... scripts) and the standard library's Python source.
"""

from __future__ import annotations

import argparse
import gettext
import os
import sysconfig
import tempfile
import time
from pathlib import Path

import pycountry

from tokometer.counting.corpus import DEFAULT_FAMILIES, count, spec_of
from tokometer.counting.registry import TokenizerRegistry

SOURCE_BYTES = 25_000_000  # of the standard library's Python source


def corpus() -> list[str]:
    """The texts: a catalogue, a source file."""
    texts: list[str] = []
    for catalogue in sorted((Path(pycountry.__file__).parent / "locales").glob("*/*/*.mo")):
        with catalogue.open("rb") as f:
            texts.append("\n".join(v for k, v in gettext.GNUTranslations(f)._catalog.items()
                                   if k and isinstance(v, str)))
    held = 0
    for source in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if held > SOURCE_BYTES:
            break
        try:
            text = source.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        held += len(text.encode())
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES))
    args = parser.parse_args()
    texts = corpus()
    size = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{size:.1f} MB in {len(texts)} texts; {os.cpu_count()} cores")
    print(f"{'family':<10} {'direct MB/s':>12} {'count MB/s':>11} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as data_dir:
        for family in args.families.split(","):
            spec = spec_of(family)
            tokenizer = TokenizerRegistry(Path(data_dir)).get(spec)
            tokenizer.count(texts[0][:1000])  # warmed; and count's tokenizers loaded:
            count(iter([texts[0][:1000]]), (spec,), Path(data_dir))  # neither timing loads
            cores = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {min(cores)})  # one core, whatever threads it starts
            try:
                start = time.perf_counter()
                direct = sum(tokenizer.count(text) for text in texts)
                direct_s = time.perf_counter() - start
            finally:
                os.sched_setaffinity(0, cores)
            start = time.perf_counter()
            ours = count(iter(texts), (spec,), Path(data_dir)).tokens[spec]
            ours_s = time.perf_counter() - start
            assert ours == direct, (family, ours, direct)
            print(f"{family:<10} {size / direct_s:12.2f} {size / ours_s:11.2f} "
                  f"{direct_s / ours_s:6.2f}")


if __name__ == "__main__":
    main()
