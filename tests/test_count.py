"""`tokometer count`: a corpus's tokens by tokenizer family, checked against the tokenizer
libraries called directly (splintr's own o200k and llama3 vocabularies); what reading it
costs per configured model; every file format; bad input; the same counts across processes."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import splintr

from processes import cli
from tokometer.counting.corpus import count, texts

TEXTS = ["Hello, world: a plain English line.\n", "你好，世界。これは日本語の文です。\n",
         "def f(x):\n    return {'k': [x, 1.5]}\n", "Ünïcödé — émoji 🙂🚀 and Ελληνικά.\n"]


def oracle(name: str, corpus: list[str]) -> int:
    """Tokens as the tokenizer library itself counts them, text by text."""
    tokenizer = splintr.Tokenizer.from_pretrained(name)
    return sum(len(tokenizer.encode_ordinary(text)) for text in corpus)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """One file of each kind under a directory: text, Markdown, JSON Lines (a nested field,
    and lines without it), CSV (two text columns and a number), Parquet."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(TEXTS[0], encoding="utf-8")
    (root / "sub" / "b.md").write_text(TEXTS[1], encoding="utf-8")
    (root / "c.jsonl").write_text(
        json.dumps({"doc": {"body": TEXTS[2]}}) + "\n\n" + json.dumps({"other": 1}) + "\n",
        encoding="utf-8")
    with (root / "d.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["title", "body", "n"], ["", TEXTS[3], "7"]])
    pq.write_table(pa.table({"text": [TEXTS[0], None], "n": [1, 2]}), root / "e.parquet")
    return root


def test_every_format_is_read_and_counted_as_the_libraries_count(corpus):
    found = list(texts([corpus], field="doc.body"))
    assert sorted(found) == sorted([TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[3], "7", TEXTS[0]])
    tally = count(found, ("tiktoken:o200k_base", "splintr:llama3"), corpus, workers=1)
    assert tally.tokens == {"tiktoken:o200k_base": oracle("o200k_base", found),
                            "splintr:llama3": oracle("llama3", found)}
    assert (tally.texts, tally.chars) == (len(found), sum(map(len, found)))
    assert tally.bytes == sum(len(t.encode()) for t in found)


def test_processes_count_what_one_process_counts(tmp_path):
    """A corpus of a few megabytes, counted across 2 processes and in one: the same."""
    big = tmp_path / "big.txt"
    big.write_text("".join(TEXTS) * 40_000, encoding="utf-8")  # ~5 MB
    specs = ("tiktoken:o200k_base",)
    serial = count(texts([big]), specs, tmp_path, workers=1)
    seen: list[int] = []
    parallel = count(texts([big]), specs, tmp_path, workers=2,
                     progress=lambda total: seen.append(total.bytes))
    assert parallel == serial and serial.bytes == big.stat().st_size
    assert len(seen) > 2 and seen == sorted(seen)  # progress as batches come back
    assert serial.tokens[specs[0]] == oracle("o200k_base", TEXTS) * 40_000


def test_the_cli_prints_densities_and_the_cost_per_model(tmp_path, corpus):
    """With a config: each model's cost is its tokenizer's count at its input price."""
    config = tmp_path / "tokometer.toml"
    config.write_text(
        '[[providers]]\nname = "p"\napi = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[[models]]\nname = "m"\nroutes = [{ provider = "p", model = "m" }]\n'
        'tokenizer = "splintr:llama3"\n'
        'price = { input = 2.5, output = 10, cache_read = 1, cache_write = 2.5 }\n')
    done = cli(config, "count", str(corpus), "--field", "doc.body", "--tokenizers",
               "o200k,llama3", "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    found = list(texts([corpus], field="doc.body"))
    llama3 = oracle("llama3", found)
    assert [(r["tokenizer"], r["tokens"], r["model"]) for r in rows] == [
        ("o200k", oracle("o200k_base", found), None), ("llama3", llama3, None),
        ("llama3", llama3, "m")]
    assert Decimal(rows[2]["cost"]) == Decimal("2.5") * llama3 / 1_000_000
    assert Decimal(rows[1]["bytes_per_token"]) == round(
        Decimal(sum(len(t.encode()) for t in found)) / llama3, 3)
    assert "6 texts" in done.stderr
    as_csv = cli(config, "count", str(corpus / "a.txt"), "--tokenizers", "cl100k",
                 "--format", "csv")
    assert as_csv.stdout.splitlines()[0].startswith("tokenizer,tokens,bytes_per_token")


@pytest.mark.parametrize(("args", "message"), [
    (["c.jsonl"], "JSON Lines need --field"),
    (["d.csv", "--column", "nope"], "no column nope (it has title, body, n)"),
    (["e.parquet", "--column", "n"], "no column n (it has text)"),
    (["a.txt", "--tokenizers", "gpt5"], "unknown tokenizer 'gpt5'"),
    (["a.txt", "--tokenizers", ","], "name at least one tokenizer"),
    (["missing.txt"], "no such file or directory"),
    (["latin1.txt"], "can't decode byte"),
    (["broken.jsonl", "--field", "x"], "line 2: not JSON"),
])
def test_bad_input_is_a_clear_error(tmp_path, corpus, args, message):
    (corpus / "latin1.txt").write_bytes("café".encode("latin-1"))
    (corpus / "broken.jsonl").write_text('{"x": "ok"}\n{oops\n', encoding="utf-8")
    done = cli(tmp_path / "none.toml", "count", str(corpus / args[0]), *args[1:])
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_directory_is_read_for_its_text_and_data_files_only(tmp_path, corpus):
    """A repository's .git and its binaries are left out; a file named is read as text."""
    (corpus / ".git").mkdir()
    (corpus / ".git" / "index").write_bytes(b"\xff\xfe binary")
    (corpus / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    (corpus / "notes").write_text("no suffix", encoding="utf-8")
    found = list(texts([corpus], field="doc.body"))
    assert len(found) == 6 and "no suffix" not in found
    assert list(texts([corpus / "notes"])) == ["no suffix"]


def test_workers_must_be_at_least_one(tmp_path, corpus):
    done = cli(tmp_path / "none.toml", "count", str(corpus / "a.txt"), "--workers", "0")
    assert done.returncode == 2 and "expected 1 or more, got 0" in done.stderr
