"""Provenance fingerprints find registered texts through edits and excerpts, and nothing else.

The corpus is paragraphs of the standard library's docstrings (40 words or more, no two
sharing a run of 8 words: the standard library repeats docstrings, and a repeat is a true
copy, not an unrelated text). A fixed 160 are registered as responses; the rest are unrelated.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import inspect
import math
import random
import re
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokometer.provenance import (
    GUARANTEED_RUN,
    Index,
    Match,
    fingerprint_set_sha256,
    fingerprints,
    text_sha256,
    tier,
    words,
)

KEY = b"registry key, test only"
RESPONSES = 160
MODULES = (
    "_collections_abc", "_compat_pickle", "_markupbase", "_pydecimal", "_pyio", "_strptime",
    "_threading_local", "_weakrefset", "abc", "argparse", "array", "ast", "asyncio",
    "asyncio.base_events", "asyncio.events", "asyncio.futures", "asyncio.locks",
    "asyncio.protocols", "asyncio.queues", "asyncio.runners", "asyncio.selector_events",
    "asyncio.sslproto", "asyncio.streams", "asyncio.taskgroups", "asyncio.tasks",
    "asyncio.timeouts", "asyncio.transports", "asyncio.unix_events", "base64", "bdb",
    "binascii", "bz2", "calendar", "cmd", "code", "codecs", "codeop", "collections",
    "collections.abc", "colorsys", "compileall", "concurrent.futures",
    "concurrent.futures._base", "concurrent.futures.process", "configparser", "contextlib",
    "contextvars", "copy", "cProfile", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "dis", "doctest", "email._header_value_parser", "email.charset", "email.contentmanager",
    "email.encoders", "email.feedparser", "email.generator", "email.header",
    "email.headerregistry", "email.iterators", "email.message", "email.mime.base",
    "email.policy", "email.utils", "ensurepip", "enum", "filecmp", "fileinput", "fnmatch",
    "fractions", "ftplib", "functools", "genericpath", "getpass", "gettext", "glob", "graphlib",
    "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client", "http.cookiejar",
    "http.cookies", "http.server", "imaplib", "importlib._bootstrap_external", "importlib.abc",
    "importlib.metadata", "importlib.util", "inspect", "io", "ipaddress", "itertools", "json",
    "json.decoder", "json.encoder", "keyword", "linecache", "locale", "logging",
    "logging.config", "logging.handlers", "lzma", "mailbox", "mimetypes", "modulefinder",
    "multiprocessing", "multiprocessing.connection", "multiprocessing.context",
    "multiprocessing.managers", "multiprocessing.pool", "multiprocessing.queues",
    "multiprocessing.shared_memory", "netrc", "nntplib", "ntpath", "numbers", "opcode",
    "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil",
    "platform", "plistlib", "poplib", "posixpath", "pprint", "pstats", "py_compile", "pyclbr",
    "pydoc", "queue", "quopri", "random", "re", "reprlib", "runpy", "sched", "secrets",
    "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "sqlite3",
    "sqlite3.dbapi2", "sre_parse", "ssl", "stat", "statistics", "string", "struct",
    "subprocess", "symtable", "sysconfig", "tabnanny", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "tracemalloc", "types", "typing",
    "unittest", "unittest.async_case", "unittest.case", "unittest.loader", "unittest.mock",
    "unittest.runner", "unittest.suite", "urllib.error", "urllib.parse", "urllib.request",
    "urllib.response", "urllib.robotparser", "uuid", "venv", "warnings", "wave", "weakref",
    "wsgiref.handlers", "wsgiref.validate", "xml.dom.minidom", "xml.dom.pulldom",
    "xml.etree.ElementPath", "xml.etree.ElementTree", "xml.sax.saxutils", "xml.sax.xmlreader",
    "xmlrpc.client", "xmlrpc.server", "zipapp", "zipfile", "zoneinfo",
)
DISCLAIMER = ("This answer was generated automatically and may contain mistakes, so please "
              "check the official documentation before relying on it.")
# Registered Chinese responses, and one unrelated paragraph.
CHINESE = (
    "根据国家标准《网络安全技术 人工智能生成合成内容标识方法》，服务提供者应当在生成的文本中添加"
    "显式标识和隐式标识。显式标识可以采用文字提示的方式，在文本的起始、末尾或者中间适当位置添加，"
    "说明该内容由人工智能生成。隐式标识则写入文件的元数据，记录服务提供者的名称、内容编号以及生成"
    "时间等信息，便于日后追溯和核验。",
    "今天早上我去市场买了新鲜的西红柿和鸡蛋，打算中午做一道家常菜。先把西红柿切成小块，再把鸡蛋"
    "打散，加一点盐搅拌均匀。锅里倒油烧热以后，先炒鸡蛋，盛出备用，然后炒西红柿，等汤汁变浓再把"
    "鸡蛋倒回去，最后撒上葱花就可以出锅了。",
    "这座城市的地铁系统始建于上世纪九十年代，目前已经开通了十几条线路，每天运送乘客超过一千万人次"
    "。为了缓解高峰时段的拥挤，运营公司延长了列车编组，缩短了发车间隔，并在换乘站增加了引导人员。"
    "乘客可以使用手机扫码进站，也可以购买传统的单程票。",
)
CHINESE_UNRELATED = (
    "春天来了，公园里的桃花和樱花都开了，许多家庭带着孩子出来散步、放风筝。湖边的柳树长出了嫩绿"
    "的新芽，小鸟在枝头唱歌。老人们在亭子里下棋聊天，年轻人则沿着湖边跑步锻炼身体，整个公园充满"
    "了生机和欢笑。")


def _docs(obj: Any, depth: int = 0) -> Iterator[str]:
    """The docstrings of a module, its classes and functions, and their methods."""
    doc = inspect.getdoc(obj)
    if doc:
        yield doc
    if depth == 2:
        return
    for name, member in sorted(getattr(obj, "__dict__", {}).items()):
        if name.startswith("_") or not (inspect.isclass(member) or inspect.isroutine(member)):
            continue
        if depth == 0 and getattr(member, "__module__", None) not in (obj.__name__, None):
            continue  # imported from elsewhere
        yield from _docs(member, depth + 1)


def _paragraphs() -> list[str]:
    seen: set[tuple[str, ...]] = set()
    kept = []
    for name in MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated modules and names (typing.io)
            docs = list(_docs(importlib.import_module(name)))
        for doc in docs:
            for paragraph in re.split(r"\n\s*\n", doc):
                tokens = re.findall(r"\w+", paragraph.lower())
                runs = {tuple(tokens[i:i + 8]) for i in range(len(tokens) - 7)}
                if len(tokens) >= 40 and not runs & seen:
                    seen |= runs
                    kept.append(paragraph)
    return kept


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    """The registered responses and the unrelated paragraphs."""
    paragraphs = _paragraphs()
    random.Random(2026).shuffle(paragraphs)
    return paragraphs[:RESPONSES], paragraphs[RESPONSES:]


@pytest.fixture(scope="module")
def registry(corpus: tuple[list[str], list[str]]) -> Index:
    index = Index(KEY)
    for i, text in enumerate(corpus[0]):
        index.add(f"r{i}", text)
    return index


@pytest.fixture(scope="module")
def vocabulary(corpus: tuple[list[str], list[str]]) -> list[str]:
    """Words edits draw from: the unrelated paragraphs'."""
    return sorted({w for text in corpus[1] for w in words(text)})


def _edited(text: str, rate: float, seed: int, vocabulary: list[str]) -> str:
    """The text with round(rate * its words) random substitutions, deletions and insertions."""
    rng = random.Random(seed)
    ws = words(text)
    for _ in range(round(rate * len(ws))):
        at = rng.randrange(len(ws))
        edit = rng.choice(("substitute", "delete", "insert"))
        if edit == "substitute":
            ws[at] = rng.choice(vocabulary)
        elif edit == "delete":
            del ws[at]
        else:
            ws.insert(at, rng.choice(vocabulary))
    return " ".join(ws)


def _lookups(registry: Index, queries: list[str]) -> list[tuple[str, str | None]]:
    """Per query, its tier and the best match's doc_id (None: no match)."""
    found = []
    for query in queries:
        level, matches = registry.lookup(query)
        found.append((level, matches[0].doc_id if matches else None))
    return found


def test_the_corpus_is_large_enough(corpus):
    responses, unrelated = corpus
    assert len(responses) == RESPONSES
    assert len(unrelated) >= 500
    assert min(len(words(text)) for text in responses + unrelated) >= 40


def test_a_response_is_exact_whatever_its_case_spacing_and_punctuation(corpus, registry):
    for i, text in enumerate(corpus[0]):
        restyled = "  ".join(text.upper().split()).replace(".", " ;").replace(",", " ,") + "!"
        level, matches = registry.lookup(restyled)
        assert (level, matches[0].doc_id, matches[0].share) == ("exact", f"r{i}", 1.0)


def test_a_tenth_edited_is_strong(corpus, registry, vocabulary):
    """Measured: 160 of 160 strong (shares 0.375 and up)."""
    queries = [_edited(text, 0.10, i, vocabulary) for i, text in enumerate(corpus[0])]
    found = _lookups(registry, queries)
    assert sum(level == "strong" for level, _ in found) >= 0.95 * RESPONSES
    assert [doc_id for _, doc_id in found] == [f"r{i}" for i in range(RESPONSES)]


def test_a_quarter_edited_is_found_and_its_response_the_best_match(corpus, registry,
                                                                     vocabulary):
    """Measured: 146 of 160 found (64 strong, 82 partial); the 14 missed kept two matching
    fingerprints or fewer, or under 0.15 of them. The best match is always the right one."""
    queries = [_edited(text, 0.25, i, vocabulary) for i, text in enumerate(corpus[0])]
    found = _lookups(registry, queries)
    assert sum(level != "none" for level, _ in found) >= 0.85 * RESPONSES
    assert [doc_id for _, doc_id in found] == [f"r{i}" for i in range(RESPONSES)]


def test_a_30_percent_excerpt_is_found(corpus, registry):
    """A contiguous 30% of each response (12 words and up). Measured: 160 of 160 found (125
    strong), each its own response."""
    queries = []
    for i, text in enumerate(corpus[0]):
        ws = words(text)
        length = math.ceil(0.3 * len(ws))
        start = random.Random(i).randrange(len(ws) - length + 1)
        queries.append(" ".join(ws[start:start + length]))
    found = _lookups(registry, queries)
    assert sum(level != "none" for level, _ in found) >= 0.95 * RESPONSES
    assert [doc_id for _, doc_id in found] == [f"r{i}" for i in range(RESPONSES)]


def test_a_response_quoted_in_a_longer_text_is_found(corpus, registry):
    """A response between 6 unrelated paragraphs (270 words and more): a small share, but many
    fingerprints (16 and more). Measured: 160 of 160 (157 partial)."""
    responses, unrelated = corpus
    queries = ["\n\n".join([*unrelated[i:i + 3], text, *unrelated[i + 3:i + 6]])
               for i, text in enumerate(responses)]
    found = _lookups(registry, queries)
    assert all(level != "none" for level, _ in found)
    assert [doc_id for _, doc_id in found] == [f"r{i}" for i in range(RESPONSES)]


def test_no_unrelated_paragraph_matches(corpus, registry):
    """645 paragraphs. Measured: none; at most three shared fingerprints, 0.12 of a
    paragraph's."""
    assert all(level == "none" for level, _ in _lookups(registry, corpus[1]))


def test_a_disclaimer_many_responses_share_makes_no_match(corpus, vocabulary):
    responses, unrelated = corpus
    index = Index(KEY)
    for i, text in enumerate(responses):
        index.add(f"r{i}", f"{text} {DISCLAIMER}" if i < 50 else text)
    assert index.lookup(DISCLAIMER) == ("none", [])
    for text in unrelated[:100]:
        assert index.lookup(f"{text}\n\n{DISCLAIMER}")[0] == "none"
    # A response with the disclaimer is still found by its own words.
    level, matches = index.lookup(_edited(f"{responses[0]} {DISCLAIMER}", 0.1, 0, vocabulary))
    assert (level, matches[0].doc_id) == ("strong", "r0")


def test_an_answer_registered_many_times_is_no_boilerplate(corpus, vocabulary):
    """The same text given to many users counts once towards document frequencies."""
    responses, _ = corpus
    index = Index(KEY)
    for i, text in enumerate(responses[:20]):
        index.add(f"r{i}", text)
    for copy in range(10):
        index.add(f"again{copy}", responses[0])
    level, matches = index.lookup(_edited(responses[0], 0.1, 0, vocabulary))
    assert level == "strong"
    assert {m.doc_id for m in matches[:11]} == {"r0"} | {f"again{c}" for c in range(10)}


def test_another_key_gives_other_fingerprints(corpus):
    ours = set().union(*(fingerprints(text, KEY) for text in corpus[0]))
    theirs = set().union(*(fingerprints(text, b"another key") for text in corpus[0]))
    assert ours and theirs and not ours & theirs


@pytest.mark.parametrize("key", [b"", KEY, b"k" * 64, b"a key longer than a block " * 3])
def test_fingerprints_are_hmac_sha256_truncated_to_64_bits(key):
    digest = hmac.digest(key, b"a b c d e", "sha256")  # one n-gram
    assert fingerprints("A, b, c, d, e.", key) == {int.from_bytes(digest[:8], "big")}


def test_cjk_characters_are_words():
    assert words("GB 45438—2025 规定：人工智能生成的内容") == [
        "gb", "45438", "2025", "规", "定", "人", "工", "智", "能", "生", "成", "的", "内", "容"]
    assert words("カタカナ・テスト、ひらがな") == list("カタカナテストひらがな")
    assert words("한국어 텍스트") == list("한국어텍스트")
    assert words("ＡＢＣ１２３ snake_case ﬁne") == ["abc123", "snake", "case", "fine"]


def test_a_chinese_response_is_found_after_a_tenth_of_its_characters_edited():
    index = Index(KEY)
    for i, text in enumerate(CHINESE):
        index.add(f"zh{i}", text)
    characters = sorted(set("".join(CHINESE) + CHINESE_UNRELATED) - set("，。、《》：  "))
    for i, text in enumerate(CHINESE):
        level, matches = index.lookup(text.replace("，", ", ").replace("。", "."))
        assert (level, matches[0].doc_id) == ("exact", f"zh{i}")
        for seed in range(10):
            level, matches = index.lookup(_edited(text, 0.1, seed, characters))
            assert (level, matches[0].doc_id) == ("strong", f"zh{i}")
    assert index.lookup(CHINESE_UNRELATED) == ("none", [])


def test_a_short_text_matches_itself_only():
    index = Index(KEY)
    index.add("short", "Yes, of course!")
    assert len(fingerprints("yes of course", KEY)) == 1
    level, matches = index.lookup("yes... OF COURSE")
    assert (level, [m.doc_id for m in matches]) == ("exact", ["short"])
    assert index.lookup("No, of course not") == ("none", [])
    assert fingerprints(" ... ", KEY) == frozenset()
    assert index.lookup("") == ("none", [])


def test_an_exact_copy_is_found_even_when_all_of_it_is_boilerplate():
    stock = "I am happy to help with that question"  # at least GUARANTEED_RUN words, so
    index = Index(KEY)  # its fingerprints are those of any text containing it
    for i in range(4):  # with the stock answer, 5 sets: more than boilerplate_limit(5) = 3
        index.add(f"r{i}", f"Response {i}. {stock}, of course.")
    index.add("stock", stock)
    assert index.lookup(stock.upper()) == ("exact", [Match("stock", 0.0, 0)])
    assert index.lookup(f"Anything else. {stock}!") == ("none", [])


def test_a_doc_id_is_registered_once():
    index = Index(KEY)
    index.add("r0", "one two three four five six seven")
    with pytest.raises(ValueError, match="registered already"):
        index.add("r0", "something else entirely")


def test_the_set_digest_commits_to_sorted_big_endian_fingerprints():
    fps = fingerprints("one two three four five six seven eight nine ten eleven", KEY)
    assert len(fps) > 1
    expected = hashlib.sha256(b"".join(fp.to_bytes(8, "big") for fp in sorted(fps)))
    assert fingerprint_set_sha256(reversed(sorted(fps))) == expected.hexdigest()


def test_tiers_need_enough_fingerprints():
    assert tier(1.0, 2, exact=False) == "none"  # two shared fingerprints are never evidence
    assert tier(1.0, 3, exact=False) == "partial"
    assert tier(0.3, 5, exact=False) == "strong"
    assert tier(0.29, 40, exact=False) == "partial"
    assert tier(0.05, 10, exact=False) == "partial"  # quoted in a much longer text
    assert tier(0.05, 9, exact=False) == "none"
    assert tier(0.0, 0, exact=True) == "exact"


WORD = (st.text(alphabet="abcdefghijklmnopqrstuvwxyzäéß0123456789", min_size=1, max_size=8)
        | st.sampled_from(list("人工智能生成かなカナ한국")))
SEPARATOR = st.text(alphabet=" \t\n.,;:!?\"'()[]-–—…/_*", min_size=1, max_size=3)
CASES = (str.upper, str.lower, str.title, str.swapcase)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(WORD, SEPARATOR, st.sampled_from(CASES)), min_size=1, max_size=30))
def test_case_spacing_and_punctuation_do_not_matter(spelled):
    plain = " ".join(word for word, _, _ in spelled)
    styled = "".join(case(word) + separator for word, separator, case in spelled)
    assert words(styled) == words(plain)
    assert text_sha256(styled) == text_sha256(plain)


PLAIN_WORD = st.text(alphabet="abcdefghij", min_size=1, max_size=4)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(run=st.lists(PLAIN_WORD, min_size=GUARANTEED_RUN, max_size=30),
       contexts=st.lists(st.lists(PLAIN_WORD, max_size=20), min_size=4, max_size=4))
def test_a_shared_run_of_guaranteed_length_is_detected(run, contexts):
    """Every window of the run's n-gram hashes is one of any text containing it, so its
    fingerprints are theirs: two texts sharing the run share fingerprints."""
    own = fingerprints(run, KEY)
    one = fingerprints(contexts[0] + run + contexts[1], KEY)
    other = fingerprints(contexts[2] + run + contexts[3], KEY)
    assert own and own <= one and own <= other
