"""Attacks on `tokometer count`: defects found in review, one failing test each."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from processes import cli
from tokometer.counting import corpus
from tokometer.counting.corpus import BATCH_BYTES, Tally, count, texts

O200K = ("tiktoken:o200k_base",)


# --- 1. a cut "at a line end" splits a run of newlines, and the count changes ------------------

@pytest.mark.parametrize("unit", ["Lorem ipsum dolor sit amet.\n\n",          # paragraphs
                                  "Lorem ipsum dolor sit amet.\r\n\r\n",      # CRLF paragraphs
                                  "def f(x):\n    return x\n\n\n"])          # code
def test_a_text_file_counts_as_the_whole_file_counts(tmp_path, unit):
    path = tmp_path / "doc.txt"
    path.write_bytes((unit * (3 * BATCH_BYTES // len(unit))).encode())
    whole = count([path.read_bytes().decode()], O200K, tmp_path, workers=1)
    pieces = count(texts([path]), O200K, tmp_path, workers=1)
    assert pieces.tokens == whole.tokens  # o200k: 160000 whole vs 160003 in pieces, etc.


# --- 2. the whole corpus is held in memory before the first batch is counted --------------------

class _Cheap:
    def count(self, text: str) -> int:
        return len(text) // 4


@pytest.fixture
def cheap(monkeypatch):
    """A tokenizer that costs nothing, already loaded (forked workers inherit it)."""
    monkeypatch.setitem(corpus._WORKER, "specs", ("cheap",))
    monkeypatch.setitem(corpus._WORKER, "tokenizers", {"cheap": _Cheap()})
    return ("cheap",)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_large_corpus_is_not_read_whole_before_counting(tmp_path, cheap, workers):
    n = 80  # 80 texts of a batch each: 20 MB
    pulled = [0]
    at_first: list[int] = []

    def stream():
        for _ in range(n):
            pulled[0] += 1
            yield "x" * BATCH_BYTES

    def progress(total: Tally) -> None:
        if not at_first:
            at_first.append(pulled[0])

    tally = count(stream(), cheap, tmp_path, workers=workers, progress=progress)
    assert tally.texts == n
    # Serial: `(*first, *pending)` builds a tuple of every batch; parallel: Executor.map
    # (Python < 3.14) submits every batch before yielding a result. Both read all 80 first.
    assert at_first[0] < n // 2, f"{at_first[0]} of {n} texts read before the first count"


def test_a_file_without_newlines_is_not_read_whole(tmp_path):
    """(Mended.) A 2 MB line is cut between words, in pieces of about two batches, and
    counts as it counts whole."""
    path = tmp_path / "one-line.txt"
    path.write_text("word " * (BATCH_BYTES * 8 // 5), encoding="utf-8")  # 2 MB, no newline
    pieces = list(texts([path]))
    assert len(pieces) > 2 and max(map(len, pieces)) <= 2 * BATCH_BYTES + 16
    whole = count([path.read_text(encoding="utf-8")], O200K, tmp_path, workers=1)
    assert count(pieces, O200K, tmp_path, workers=1).tokens == whole.tokens


# --- 3. readers ----------------------------------------------------------------------------

def test_a_csv_with_a_byte_order_mark_has_its_first_column(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,n\nhello,1\n".encode())
    assert list(texts([path], columns=("text",))) == ["hello"]  # was: no column text


def test_a_csv_with_duplicate_headers_counts_each_cell_once(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("text,text\nfirst dup,second dup\n", encoding="utf-8")
    assert sorted(texts([path])) == ["first dup", "second dup"]  # got second dup twice


def test_json_lines_with_a_byte_order_mark_are_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes('\ufeff{"t": "bom"}\n'.encode())
    assert list(texts([path], field="t")) == ["bom"]  # "line 1: not JSON"


@pytest.mark.parametrize("array", [
    pa.array(["dict a", "dict b", "dict a"]).dictionary_encode(),  # pandas categoricals
    pa.array(["view a", "view b", "view c"], pa.string_view()),
])
def test_parquet_string_columns_of_every_encoding_are_read(tmp_path, array):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"t": array}), path)
    assert len(list(texts([path]))) == 3  # silently 0 texts; --column t: "no column t"


# --- 4. hostile text ends in a traceback ----------------------------------------------------

@pytest.mark.parametrize(("line", "tokenizers"), [
    ('{"t": "a \\ud800 b"}', "deepseek"),  # a lone surrogate: TypeError in tokenizers
    ('{"t": "a \\ud800 b"}', "llama3"),    # UnicodeEncodeError in splintr
    ('{"t": ' + "[" * 100_000 + "]" * 100_000 + "}", "o200k"),  # RecursionError
])
def test_hostile_json_lines_are_a_clear_error_or_counted(tmp_path, line, tokenizers):
    path = tmp_path / "h.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    done = cli(tmp_path / "none.toml", "count", str(path), "--field", "t",
               "--tokenizers", tokenizers)
    assert "Traceback" not in done.stderr, done.stderr[-300:]
