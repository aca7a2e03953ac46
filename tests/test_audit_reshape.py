"""Audit of issue 12's reshape, which promised behaviour unchanged: one store built by a real
gateway under a varied workload, and the numbers read from it checked against oracles written
here independently of tokometer (sqlite3 + Decimal sums, an RFC 9162 inclusion check, a fresh
fold of the rollups, tiktoken's own encodings). (The one-off comparison of every CLI command
and HTTP answer with the code before the reshape is in issue 12's closing note.)"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import random
import shutil
import sqlite3
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    FAKE_KEYS,
    TARIFF_TOML,
    Gateway,
    _model,
    old_rollup_table,
    providers_toml,
    start_gateway,
    stop_gateway,
)
from fake_upstream import FakeUpstream
from processes import cli

SRC = Path(__file__).resolve().parents[1] / "src" / "tokometer"
ADMIN = "audit-reshape-admin"

MODELS = "".join([
    _model("gpt-4o-mini"),
    _model("yuan-model", upstream_model="gpt-4o-mini",
           extra='price = { input = 7, output = 21, currency = "CNY" }'),
    _model("cheap", upstream_model="gpt-4o-mini",
           extra="price = { input = 0.15, cache_read = 0.075, output = 0.6 }"),
    _model("deepseek-chat", provider="deepseek", extra=""),
    _model("claude-sonnet-5", provider="fake-anthropic"),
    _model("fail-400"), _model("fail-500"),
    """[[models]]
name = "fallback"
routes = [{ provider = "dead", model = "gpt-4o-mini" },
          { provider = "fake-openai", model = "fail-500" },
          { provider = "fake-openai", model = "gpt-4o-mini" }]
price = """ + TARIFF_TOML + "\n",
])
BUDGETS = """
[[budgets]]
tenant = "acme"
limit = 1000
unit = "USD"
period = "month"
[[budgets]]
tenant = "acme"
limit = 100000000
unit = "tokens"
period = "day"
[[budgets]]
app = "bot"
limit = 50
unit = "USD"
period = "total"
"""


# --- the workload ------------------------------------------------------------------------------

def _drive(gw: Gateway) -> None:
    """Several tenants, apps, agents and tasks; priced in USD and CNY and not at all; streamed
    and whole; errors; an outcome; a correction through the admin API; budgets set at run time
    through the CLI and the admin API."""
    keys = [gw.key, gw.new_key("acme", "other")[0], gw.new_key("beta", "bot", "FR")[0],
            gw.new_key("gamma", "svc", None)[0]]
    ids = []
    for i, key in enumerate(keys):
        for j, model in enumerate(("gpt-4o-mini", "yuan-model", "cheap", "deepseek-chat",
                                   "fallback")):
            headers = {"x-tokometer-agent": f"agent-{i % 2}",
                       "x-tokometer-task": f"task-{i}-{j % 2}",
                       "x-tokometer-user": f"user-{j}"} if (i + j) % 3 else {}
            r = gw.chat(model, "hello " * (i + j + 1), key=key, headers=headers)
            # A model priced in another currency cannot be held to a USD budget: refused
            # (402) under one (gamma's budget counts tokens).
            held = model == "yuan-model" and i < 3
            assert r.status_code == (402 if held else 200), r.text
            ids.append(r.headers["x-tokometer-event-id"])
        body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": f"stream {i}"}]}
        with gw.stream("/v1/chat/completions", body, key=key,
                       headers={"x-tokometer-task": f"task-{i}-0"}) as r:
            assert r.status_code == 200
            r.read()
        for model in ("fail-400", "fail-500"):
            assert gw.chat(model, key=key).status_code >= 400
        r = gw.post("/v1/messages", {"model": "claude-sonnet-5", "max_tokens": 10,
                                     "messages": [{"role": "user", "content": "hi"}]}, key=key)
        assert r.status_code == 200, r.text
    assert gw.post("/v1/outcomes", {"task": "task-1-0", "outcome": "success", "value": "5"},
                   key=keys[1]).status_code == 201
    r = gw.post("/admin/corrections", {"event_id": ids[0], "reason": "audit",
                                       "output_tokens": -3, "cost": "-0.00001"}, key=ADMIN)
    assert r.status_code == 201, r.text
    r = gw.request("PUT", "/admin/budgets", {"tenant": "gamma", "limit": 20000,
                                             "unit": "tokens", "period": "week"}, key=ADMIN)
    assert r.status_code == 200, r.text
    cli(gw.config, "budgets", "set", "--tenant", "beta", "--limit", "0.5",
        "--period", "day")
    cli(gw.config, "budgets", "set", "--key-id", gw.key_id, "--limit", "2",
        "--period", "week")


@pytest.fixture(scope="module")
def built(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of a gateway's config, store and signing key after the workload, with the
    gateway stopped, its rollups and signed head covering every event."""
    body = f'admin_token_env = "AUDIT_RESHAPE_ADMIN"\n{providers_toml(upstream)}{MODELS}{BUDGETS}'
    gw = start_gateway(tmp_path_factory.mktemp("reshape"), body,
                       env={**FAKE_KEYS, "AUDIT_RESHAPE_ADMIN": ADMIN})
    try:
        _drive(gw)
        gw.wait_rolled_up()
        deadline = datetime.now(UTC) + timedelta(seconds=15)
        while _head_size(gw.store) < gw.count_events():
            assert datetime.now(UTC) < deadline, "no signed head covers every event"
            time.sleep(0.05)  # readiness poll of the gateway's writer, which signs heads
    finally:
        stop_gateway(gw)
    return gw.config.parent


def _head_size(store: Path) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COALESCE(MAX(tree_size), 0) FROM tree_heads").fetchone()[0]


def copy(built: Path, to: Path) -> Path:
    shutil.copytree(built, to)
    return to


# --- 2. independent oracles --------------------------------------------------------------------

def _rows(path: Path, sql: str) -> list[Any]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute(sql).fetchall()


def _events(store: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY leaf_index")]


def _bounds(period: str, now: datetime) -> datetime | None:
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    return {"day": day, "week": day - timedelta(days=day.weekday()),
            "month": day.replace(day=1), "total": None}[period]


def test_budget_status_spent_is_the_sum_of_the_events(built: Path) -> None:
    out = cli(built / "tokometer.toml", "budgets", "status", "--json").stdout
    statuses = [json.loads(line) for line in out.splitlines()]
    events, now = _events(built / "tokometer.db"), datetime.now(UTC)
    assert len(statuses) == 6
    for status in statuses:
        start = _bounds(status["period"], now)
        kind = status["scope"]
        mine = [e for e in events if e[kind] == status["scope_value"]
                and (start is None or datetime.fromisoformat(e["time"]) >= start)]
        if status["unit"] == "tokens":
            spent = Decimal(sum(e["input_tokens"] + e["output_tokens"] for e in mine))
        else:
            spent = sum((Decimal(e["cost"]) for e in mine
                         if e["cost"] is not None and e["currency"] == status["unit"]),
                        Decimal(0))
        assert Decimal(status["spent"]) == spent, status
        assert spent > 0, status


def _sums(events: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple[Any, ...], list[Any]]:
    out: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    for e in events:
        row = out[tuple(e[k] for k in keys)]
        row[0] += 1
        row[1] += e["input_tokens"]
        row[2] += e["output_tokens"]
        row[3] += Decimal(e["cost"]) if e["cost"] is not None else 0
    return dict(out)


def test_report_flows_and_tasks_totals_are_the_sums_of_the_events(built: Path) -> None:
    config, events = built / "tokometer.toml", _events(built / "tokometer.db")
    out = cli(config, "report", "--by", "tenant,currency", "--format", "json").stdout
    got = {(r["tenant"], r["currency"]): [r["requests"], r["input_tokens"], r["output_tokens"],
                                          Decimal(r["cost"] or 0)] for r in json.loads(out)}
    assert got == _sums(events, ("tenant", "currency"))
    out = cli(config, "flows", "--format", "json").stdout
    flows = {(f["from"], f["to"], f["model_origin"], f["currency"]):
             [f["requests"], f["tokens"], Decimal(f["cost"] or 0)] for f in json.loads(out)}
    assert flows == {k: [n, i + o, c] for k, (n, i, o, c) in _sums(
        events, ("consumer_region", "provider_region", "model_origin", "currency")).items()}
    out = cli(config, "tasks", "--format", "json").stdout
    tasks = {(t["tenant"], t["task"], t["currency"]):
             [t["requests"], t["tokens"], Decimal(t["cost"] or 0)] for t in json.loads(out)}
    assert tasks == {k: [n, i + o, c] for k, (n, i, o, c) in _sums(
        [e for e in events if e["task"]], ("tenant", "task", "currency")).items()}
    print(f"{len(events)} events; report, {len(flows)} flows and {len(tasks)} tasks summed")


def _leaf(document: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + document).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _root(leaves: list[bytes]) -> bytes:
    """RFC 9162 MTH: split at the largest power of two below n."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return _node(_root(leaves[:k]), _root(leaves[k:]))


def _included(index: int, size: int, leaf: bytes, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2, written out as the RFC gives it."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def _jcs(value: Any) -> str:
    """RFC 8785 for the values an event holds: objects sorted by key, numbers as ECMAScript
    prints them (12.0 is 12), strings as JSON with non-ASCII kept."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_jcs(k)}:{_jcs(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return json.dumps(value, ensure_ascii=False)


def test_every_receipt_and_head_checks_by_an_independent_rfc9162(built: Path,
                                                                 tmp_path: Path) -> None:
    directory = copy(built, tmp_path / "r")
    config, store = directory / "tokometer.toml", directory / "tokometer.db"
    events = _events(store)
    checked = 0
    leaves = []
    for event in events:
        done = cli(config, "receipt", event["id"])
        assert done.returncode == 0, done.stderr
        receipt = json.loads(done.stdout)
        document = receipt["event"]
        assert document["id"] == event["id"]
        leaf = _leaf(_jcs(document).encode())
        leaves.append(leaf)
        index, head = receipt["leaf_index"], receipt["tree_head"]
        size, root = head["tree_size"], bytes.fromhex(head["root_hash"])
        path = [bytes.fromhex(h) for h in receipt["inclusion_proof"]]
        assert (index, receipt["leaf_hash"]) == (event["leaf_index"], leaf.hex())
        assert _included(index, size, leaf, path, root), event["id"]
        checked += 1
    heads = _rows(store, "SELECT tree_size, root_hash FROM tree_heads")
    for size, root in heads:
        stored = root if isinstance(root, bytes) else bytes.fromhex(root)
        assert _root(leaves[:size]) == stored, size
    print(f"{checked} receipts and {len(heads)} signed heads checked")
    assert checked == len(events) > 30 and heads


def test_rollups_rebuilt_by_migrate_equal_a_fresh_fold(built: Path, tmp_path: Path) -> None:
    from tokometer.ledger import open_store
    from tokometer.ledger.rollups import ROLLUPS, TOKENS
    directory = copy(built, tmp_path / "m")
    store = directory / "tokometer.db"

    def rollups() -> dict[str, list[tuple[Any, ...]]]:
        return {name: sorted(_rows(store, f"SELECT * FROM {name}")) for name in ROLLUPS}

    fresh = rollups()
    conn = sqlite3.connect(store, isolation_level=None)
    for name, dims in ROLLUPS.items():  # as stores kept them before currency was a key,
        conn.execute(f"DROP TABLE {name}")  # holding rows the upgrade must not keep
        conn.execute(old_rollup_table(name, dims))
        columns = ["period", "start", *(d for d in dims if d != "currency"), "requests",
                   "errors", *TOKENS, "cost"]
        conn.executemany(f"INSERT OR REPLACE INTO {name} ({', '.join(columns)}) VALUES "
                         f"({', '.join('?' for _ in columns)})",
                         [[*row[:len(columns) - 1], "999"] for row in
                          _rows(built / "tokometer.db", f"SELECT {', '.join(columns)} "
                                f"FROM {name}")])
    conn.close()
    with open_store(store):
        pass
    rebuilt = rollups()
    assert sum(len(v) for v in fresh.values()) > 50
    assert rebuilt == fresh


# --- 3. tokenizer counts -----------------------------------------------------------------------

CORPUS = [
    "Hello, world!", "  leading and trailing   ", "\t\t\n\n\n    \n" * 50, " " * 1000,
    "Größenänderung für Straße — naïve café", "日本語のテキストと漢字、ひらがな。",
    "中文文本测试，标点符号！",
    "Привет, как дела?", "مرحبا بالعالم", "हिन्दी पाठ", "한국어 텍스트", "ภาษาไทย",
    "emoji 👩‍👩‍👧‍👦 🏳️‍🌈 🇩🇪 👍🏽 🤖" * 5, "def f(x):\n    return x ** 2  # square\n" * 20,
    "{\"a\": [1, 2.5e-10, null, true], \"b\": {\"c\": \"\\u00e9\"}}",
    "<|endoftext|> <|im_start|>system<|im_end|> <|fim_prefix|>", "<|endofprompt|>" * 3,
    "1234567890 " * 30, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" * 20, "\u200b\u200d\ufeff",
    "mixed 中文 and English and 😀 and code `x = 1`", "https://example.com/path?q=1&r=2#frag",
    "\r\n\r\n windows lines \r\n", "'s 't 're 've 'm 'll 'd 'S 'T", "x" + "\u0301" * 40,
]


def _reference(name: str, cache: Path) -> Any:
    """tiktoken's own get_encoding, offline: bpe-openai's copy where tiktoken looks for its
    download (TOKENIZERS.md), independently of tokometer's registry."""
    import tiktoken
    spec = importlib.util.find_spec("bpe_openai")
    assert spec is not None and spec.submodule_search_locations
    packaged = Path(spec.submodule_search_locations[0]) / "data" / f"{name}.tiktoken.gz"
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    target = cache / hashlib.sha1(url.encode()).hexdigest()
    target.write_bytes(gzip.decompress(packaged.read_bytes()))
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.get_encoding(name)
    finally:
        del os.environ["TIKTOKEN_CACHE_DIR"]


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_the_registry_counts_as_tiktoken_does(name: str, tmp_path: Path) -> None:
    import tiktoken

    from tokometer.counting.registry import TokenizerRegistry
    reference = _reference(name, tmp_path)
    counter = TokenizerRegistry(tmp_path / "data").get(f"tiktoken:{name}")
    rng = random.Random(12)  # Latin to CJK, emoji, CJK ideographs
    noise = ["".join(chr(rng.choice([rng.randrange(32, 0x3000), rng.randrange(0x1F300, 0x1FAFF),
                                     rng.randrange(0x4E00, 0x9FFF)])) for _ in range(400))
             for _ in range(40)]
    sources = [f.read_text() for f in sorted(SRC.rglob("*.py"))]
    texts = [*CORPUS, "".join(CORPUS), "".join(reversed(CORPUS)) * 3, *noise, *sources]
    for text in texts:
        want = len(reference.encode(text, disallowed_special=()))
        assert (counter.count(text), counter.count_prompt(text)) == (want, want), text
    assert tiktoken.get_encoding  # the reference is tiktoken's, not tokometer's
    print(f"{name}: {len(texts)} texts compared")


def test_budget_periods_cut_at_utc_boundaries(built: Path, tmp_path: Path) -> None:
    """Events a millisecond either side of this day's, week's and month's UTC start: each
    budget's spend as `budgets status` and a sum here count it."""
    from conftest import make_event
    from tokometer.events import FIELDS, rfc3339
    from tokometer.ledger.rows import event_row
    now = datetime.now(UTC)
    edges = [_bounds(p, now) for p in ("day", "week", "month")]
    times = [t + d for t in edges if t is not None
             for d in (timedelta(0), timedelta(milliseconds=-1), timedelta(milliseconds=1))]
    directory = copy(built, tmp_path / "edges")
    with sqlite3.connect(directory / "tokometer.db") as conn:
        for i, at in enumerate(times):
            event = make_event(time=rfc3339(at), tenant="acme", app="bot", key_id="edge",
                               cost=Decimal(f"0.{i + 1:04d}"), input_tokens=i + 1)
            conn.execute(f"INSERT INTO events ({', '.join(FIELDS)}) VALUES "
                         f"({', '.join('?' for _ in FIELDS)})", event_row(event))
    done = cli(directory / "tokometer.toml", "budgets", "status", "--json")
    assert done.returncode == 0, done.stderr
    events = _events(directory / "tokometer.db")
    for status in map(json.loads, done.stdout.splitlines()):
        start = _bounds(status["period"], now)
        mine = [e for e in events if e[status["scope"]] == status["scope_value"]
                and (start is None or datetime.fromisoformat(e["time"]) >= start)]
        want = (sum(e["input_tokens"] + e["output_tokens"] for e in mine)
                if status["unit"] == "tokens" else
                sum((Decimal(e["cost"]) for e in mine if e["currency"] == status["unit"]
                     and e["cost"] is not None), Decimal(0)))
        assert Decimal(status["spent"]) == want, status


def test_in_flight_reservations_show_in_budget_status(upstream: FakeUpstream,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """While a request is held in flight, `budgets status` in another process shows the
    running gateway's reservation (saved in one transaction), the same while it is held."""
    import threading
    slow = _model("slow", extra=f'tokenizer = "tiktoken:o200k_base"\nprice = {TARIFF_TOML}')
    gw = start_gateway(tmp_path_factory.mktemp("in-flight"),
                       providers_toml(upstream) + slow + BUDGETS, env=FAKE_KEYS)
    body = {"model": "slow", "stream": True, "max_tokens": 1000,
            "messages": [{"role": "user", "content": "hold on"}]}

    def held() -> None:
        with gw.stream("/v1/chat/completions", body) as r:
            r.read()
    thread = threading.Thread(target=held)
    upstream.release_slow.clear()
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            out = cli(gw.config, "budgets", "status", "--json").stdout
            statuses = [json.loads(line) for line in out.splitlines()]
            if any(Decimal(s["reserved"]) > 0 for s in statuses):
                break
            assert time.monotonic() < deadline, "no reservation was saved"
            time.sleep(0.2)  # readiness poll: the gateway saves reservations about each second
        # Held, the reservation stays as it is.
        assert cli(gw.config, "budgets", "status", "--json").stdout == out
        assert {s["scope"] for s in statuses if Decimal(s["reserved"]) > 0} == {"tenant"}
    finally:
        upstream.release_slow.set()
        thread.join(20)
        stop_gateway(gw)
