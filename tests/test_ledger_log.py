"""The verifiable ledger: receipts check offline, and tampering of any kind is caught."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (
    FAKE_KEYS,
    MODELS_TOML,
    Gateway,
    chat_event,
    providers_toml,
    start_gateway,
    stop_gateway,
)
from processes import cli
from tokometer.errors import ConfigError
from tokometer.events import DECIMAL_FIELDS, FIELDS, Event, new_event_id
from tokometer.ledger import SQLiteLedger, SQLiteStore, open_store, receipts
from tokometer.ledger.canonical import canonical_json, leaf_document
from tokometer.ledger.log import stored_nodes
from tokometer.ledger.merkle import Tree, leaf_hash, verify_consistency
from tokometer.ledger.read import event_of_row, iter_events
from tokometer.ledger.receipts import verify_receipt
from tokometer.ledger.rows import leaf_of
from tokometer.ledger.signer import TreeHead, load_signer, parse_public_key

REQUESTS = 12



@pytest.fixture(scope="module")
def logged(upstream, tmp_path_factory) -> tuple[Gateway, list[str], str]:
    """A gateway's store after REQUESTS requests, the gateway stopped; and the log's key."""
    gw = start_gateway(tmp_path_factory.mktemp("log"), providers_toml(upstream) + MODELS_TOML,
                       env=FAKE_KEYS)
    ids = []
    try:
        for i in range(REQUESTS):
            r = gw.chat("gpt-4o-mini", f"hi {i}", stream=i % 2 == 1)
            assert r.status_code == 200
            ids.append(r.headers["x-tokometer-event-id"])
    finally:
        stop_gateway(gw)
    pubkey = cli(gw.config, "ledger", "pubkey").stdout.strip()
    return gw, ids, pubkey


def copy_of(gw: Gateway, tmp_path: Path) -> Path:
    """A copy of the gateway's config and store to tamper with (same signing key)."""
    target = tmp_path / "copy"
    shutil.copytree(gw.config.parent, target)
    return target / "tokometer.toml"


def sql(config: Path, statement: str, *params) -> None:
    conn = sqlite3.connect(config.parent / "tokometer.db")
    with conn:
        conn.execute(statement, params)
    conn.close()


def test_the_log_audits_clean_and_every_event_has_a_leaf(logged):
    gw, ids, _ = logged
    assert sorted(gw.event(i)["leaf_index"] for i in ids) == list(range(REQUESTS))
    out = cli(gw.config, "ledger", "audit")
    assert out.returncode == 0 and "audits clean" in out.stdout
    assert f"{REQUESTS} events, {REQUESTS} leaves" in out.stdout


def test_a_receipt_verifies_offline(logged, tmp_path):
    gw, ids, pubkey = logged
    receipt = cli(gw.config, "receipt", ids[5])
    assert receipt.returncode == 0, receipt.stderr
    doc = json.loads(receipt.stdout)
    assert doc["event"]["id"] == ids[5] and doc["tree_head"]["tree_size"] >= 6
    (tmp_path / "r.json").write_text(receipt.stdout)
    ok = cli(gw.config, "verify-receipt", str(tmp_path / "r.json"), "--pubkey", pubkey)
    assert ok.returncode == 0 and "valid" in ok.stdout


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("output_tokens", 1, "altered"),
    ("cost", "0", "altered"),
    ("leaf_index", 0, "the event says leaf 0"),
])
def test_an_edited_receipt_fails_and_says_why(logged, field, value, problem):
    gw, ids, pubkey = logged
    doc = json.loads(cli(gw.config, "receipt", ids[3]).stdout)
    doc["event"][field] = value
    bad = cli(gw.config, "verify-receipt", "-", "--pubkey", pubkey, stdin=json.dumps(doc))
    assert bad.returncode == 1 and "INVALID" in bad.stdout and problem in bad.stdout


def test_a_receipt_fails_under_another_key_and_with_a_moved_size(logged, tmp_path):
    gw, ids, pubkey = logged
    doc = json.loads(cli(gw.config, "receipt", ids[2]).stdout)
    other = copy_of(gw, tmp_path)
    (other.parent / "data" / "ledger-ed25519.pem").unlink()
    other_key = cli(other, "ledger", "pubkey").stdout.strip()  # a new key is made
    assert other_key != pubkey
    bad = cli(gw.config, "verify-receipt", "-", "--pubkey", other_key, stdin=json.dumps(doc))
    assert bad.returncode == 1 and "signature" in bad.stdout
    doc["tree_head"]["tree_size"] += 1
    bad = cli(gw.config, "verify-receipt", "-", "--pubkey", pubkey, stdin=json.dumps(doc))
    assert bad.returncode == 1 and "signature" in bad.stdout


def test_bad_receipt_input_is_a_clear_error(logged, tmp_path):
    gw, _, pubkey = logged
    assert "cannot read the receipt" in cli(gw.config, "verify-receipt", str(tmp_path / "none"),
                                            "--pubkey", pubkey).stderr
    out = cli(gw.config, "verify-receipt", "-", "--pubkey", pubkey, stdin='{"event": 1}')
    assert out.returncode == 1 and "malformed" in out.stdout
    out = cli(gw.config, "verify-receipt", "-", "--pubkey", "not-a-key", stdin="{}")
    assert out.returncode == 2 and "--pubkey" in out.stderr
    assert "no event" in cli(gw.config, "receipt", "no-such-id").stderr


def test_audit_catches_a_changed_token_count(logged, tmp_path):
    gw, ids, _ = logged
    config = copy_of(gw, tmp_path)
    sql(config, "UPDATE events SET output_tokens = output_tokens - 1 WHERE id = ?", ids[4])
    out = cli(config, "ledger", "audit")
    assert out.returncode == 1
    assert f"the first: event {ids[4]} at leaf 4 does not match its logged leaf: altered" \
        in out.stdout


def test_audit_catches_a_deleted_row(logged, tmp_path):
    gw, ids, _ = logged
    config = copy_of(gw, tmp_path)
    sql(config, "DELETE FROM events WHERE id = ?", ids[7])
    out = cli(config, "ledger", "audit")
    assert out.returncode == 1 and "the first: leaf 7 has no event: deleted" in out.stdout


def test_audit_catches_an_inserted_row(logged, tmp_path):
    gw, ids, _ = logged
    config = copy_of(gw, tmp_path)
    columns = ", ".join(f for f in FIELDS if f not in ("id", "leaf_index"))
    sql(config, f"INSERT INTO events (id, leaf_index, {columns}) SELECT 'forged', NULL, "
                f"{columns} FROM events WHERE id = ?", ids[1])
    out = cli(config, "ledger", "audit")
    assert out.returncode == 1 and "event forged is not in the log" in out.stdout


def test_the_tree_above_the_leaves_is_derived_again_after_a_crash(logged, upstream, tmp_path):
    """Each event lands with its leaf; the nodes above the leaves are written a moment later.
    What a crash left unwritten (here: the last 3 leaves' nodes, and the heads over them) is
    folded from the leaves by every reader meanwhile, and stored again at the next start."""
    gw, ids, pubkey = logged
    config = copy_of(gw, tmp_path)
    head = json.loads(cli(config, "ledger", "head").stdout)
    assert head["tree_size"] == REQUESTS
    sql(config, "DELETE FROM merkle_nodes WHERE level > 0 AND (idx + 1) << level > ?",
        REQUESTS - 3)
    sql(config, "UPDATE ledger_meta SET value = ? WHERE key = 'logged'", REQUESTS - 3)
    sql(config, "DELETE FROM tree_heads WHERE tree_size > ?", REQUESTS - 3)
    assert "audits clean" in cli(config, "ledger", "audit").stdout
    receipt = cli(config, "receipt", ids[-1])  # signs a head over all 12 leaves first
    assert receipt.returncode == 0, receipt.stderr
    assert json.loads(receipt.stdout)["tree_head"]["root_hash"] == head["root_hash"]
    assert "valid" in cli(config, "verify-receipt", "-", "--pubkey", pubkey,
                          stdin=receipt.stdout).stdout
    again = start_gateway(config.parent, providers_toml(upstream) + MODELS_TOML,
                          env=FAKE_KEYS)
    stop_gateway(again)
    conn = sqlite3.connect(config.parent / "tokometer.db")
    interior = conn.execute("SELECT COUNT(*) FROM merkle_nodes WHERE level > 0").fetchone()[0]
    logged_size = conn.execute("SELECT value FROM ledger_meta WHERE key = 'logged'").fetchone()
    conn.close()
    assert interior == REQUESTS - bin(REQUESTS).count("1")  # one per full subtree above leaves
    assert logged_size == (REQUESTS,)
    out = cli(config, "ledger", "audit")
    assert out.returncode == 0 and "audits clean" in out.stdout, out.stdout


def test_audit_catches_an_event_rewritten_with_its_leaf(logged, tmp_path):
    """The forger updates the stored leaf too: the signed roots still give it away."""
    gw, ids, _ = logged
    config = copy_of(gw, tmp_path)
    sql(config, "UPDATE events SET cost = '0' WHERE id = ?", ids[0])
    conn = sqlite3.connect(config.parent / "tokometer.db")
    row = conn.execute(f"SELECT {', '.join(FIELDS)} FROM events WHERE id = ?", (ids[0],)).fetchone()
    with conn:
        conn.execute("UPDATE merkle_nodes SET hash = ? WHERE level = 0 AND idx = 0",
                     (leaf_of(list(row)),))
    conn.close()
    out = cli(config, "ledger", "audit")
    assert out.returncode == 1 and "do not reproduce the signed root" in out.stdout


def test_audit_catches_heads_signed_with_another_key(logged, tmp_path):
    gw, _, _ = logged
    config = copy_of(gw, tmp_path)
    (config.parent / "data" / "ledger-ed25519.pem").unlink()  # the auditor trusts a new key
    out = cli(config, "ledger", "audit")
    assert out.returncode == 1 and "bad signature" in out.stdout


def test_audit_catches_a_rollup_that_disagrees_with_its_events(logged, tmp_path):
    gw, _, _ = logged
    config = copy_of(gw, tmp_path)
    conn = sqlite3.connect(config.parent / "tokometer.db")
    costs = [Decimal(c) for (c,) in conn.execute("SELECT cost FROM events WHERE tenant = 'acme'")]
    day, requests, cost = conn.execute(
        "SELECT start, requests, cost FROM rollup_tenants WHERE period = 'day'").fetchone()
    conn.close()
    assert (requests, Decimal(cost)) == (REQUESTS, sum(costs))  # the oracle: the raw events
    sql(config, "UPDATE rollup_tenants SET cost = '0.5' WHERE period = 'day'")
    sql(config, "DELETE FROM rollup_flows WHERE period = 'hour'")
    out = cli(config, "ledger", "audit")
    assert out.returncode == 1
    assert "NOT CLEAN: 2 problem(s)" in out.stdout
    assert f"the rollup rollup_tenants at day, {day}, acme, tests, " in out.stdout
    # (requests, errors, tokens by kind, energy tokens, cost, energy, CO2e)
    assert f"holds ({REQUESTS}, 0, " in out.stdout and ", 0.5, " in out.stdout
    assert f"but its events sum to ({REQUESTS}, 0, " in out.stdout
    assert f", {sum(costs).normalize():f}, " in out.stdout
    assert "the rollup rollup_flows at hour, " in out.stdout and "holds nothing" in out.stdout


def _forge_heads(config: Path, *heads: tuple[int, int]) -> None:
    """Replace the signed heads with (tree size, timestamp) pairs, signed with the log's own
    key over the right roots: only their order or the stored tree can be wrong."""
    signer = load_signer(config.parent / "data" / "ledger-ed25519.pem", None)
    conn = sqlite3.connect(config.parent / "tokometer.db")
    with conn:
        conn.execute("DELETE FROM tree_heads")
        for size, timestamp in heads:
            head = signer.sign(size, Tree(stored_nodes(conn), size).root(), timestamp)
            conn.execute("INSERT INTO tree_heads VALUES (?, ?, ?, ?)",
                         (head.tree_size, head.root_hash, head.timestamp, head.signature))
    conn.close()


def test_audit_catches_signed_heads_that_go_backwards(logged, tmp_path):
    """What two gateways on one store did: each signed its own view of the log."""
    gw, _, _ = logged
    config = copy_of(gw, tmp_path)
    _forge_heads(config, (3, 1_000), (REQUESTS, 2_000), (3, 3_000))
    out = cli(config, "ledger", "audit")
    assert out.returncode == 1
    assert "the head signed at 3000 covers 3 leaves, fewer than the one before it (12): the " \
           "signed log went backwards" in out.stdout
    _forge_heads(config, (3, 1_000), (3, 2_000), (REQUESTS, 3_000))
    assert cli(config, "ledger", "audit").returncode == 0


def test_two_writers_on_one_store_keep_one_log(logged, tmp_path):
    """Two writers on one file (what two gateway workers run): each batch's leaves follow the
    last stored one, whoever wrote it, and each head covers what either committed. Before
    the writers sequenced in the store, the second's appends failed (its leaves were taken)
    and each signed its own view, so the signed heads went backwards."""
    gw, _, _ = logged
    config = copy_of(gw, tmp_path)
    store = config.parent / "tokometer.db"
    conn = open_store(store)
    row = next(iter_events(conn))
    conn.close()
    row.update({k: Decimal(row[k]) for k in DECIMAL_FIELDS if row[k]})
    signer = load_signer(config.parent / "data" / "ledger-ed25519.pem", None)

    def event() -> Event:  # no provenance mark: the registry has no row for a copy
        return Event(**{**row, "id": new_event_id(), "leaf_index": None,
                        "fingerprint_sha256": None})

    async def two_writers() -> tuple[TreeHead, TreeHead]:
        first, second = SQLiteLedger(store, signer), SQLiteLedger(store, signer)
        first.start()
        second.start()
        try:
            await asyncio.gather(*(writer.append(event()) for _ in range(20)
                                   for writer in (first, second)))
            ahead = await first.sign_now()
            await second.append(event())
            await asyncio.sleep(0.01)  # so the heads' millisecond timestamps differ
            return ahead, await second.sign_now()
        finally:
            await first.close()
            await second.close()

    ahead, after = asyncio.run(two_writers())
    assert (ahead.tree_size, after.tree_size) == (REQUESTS + 40, REQUESTS + 41)
    conn = open_store(store)
    indexes = [i for (i,) in conn.execute("SELECT leaf_index FROM events ORDER BY leaf_index")]
    conn.close()
    assert indexes == list(range(REQUESTS + 41))
    out = cli(config, "ledger", "audit")
    assert out.returncode == 0, out.stdout + out.stderr


def test_audit_catches_a_stored_tree_that_proves_no_consistency(logged, tmp_path):
    """The roots come from the events, but clients get their proofs from the stored nodes."""
    gw, _, _ = logged
    config = copy_of(gw, tmp_path)
    _forge_heads(config, (3, 1_000), (REQUESTS, 2_000))
    assert cli(config, "ledger", "audit").returncode == 0
    # PROOF(3, D[0:12]) ends with the subtree over leaves 8-11: level 2, index 2.
    sql(config, "UPDATE merkle_nodes SET hash = zeroblob(32) WHERE level = 2 AND idx = 2")
    out = cli(config, "ledger", "audit")
    assert out.returncode == 1
    assert "the log proves no consistency from the head of 3 leaves to the next one, of 12" \
        in out.stdout


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.sampled_from(FIELDS),
    st.one_of(st.none(), st.booleans(), st.integers(-2**53 + 1, 2**53 - 1),
              st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
              .map(lambda f: round(f, 3)), st.text())))
def test_canonical_form_is_rfc8785(document):
    assert canonical_json(document) == rfc8785.dumps(document)


# --- over HTTP -------------------------------------------------------------------------------

def test_a_consumer_gets_its_receipt_at_once_and_it_verifies(gateway):
    event_id = chat_event(gateway)["id"]
    receipt = gateway.get(f"/v1/receipts/{event_id}")  # newer than any signed head
    assert receipt.status_code == 200, receipt.text
    head = gateway.get("/v1/ledger/head").json()
    key = parse_public_key(head["public_key"])
    assert verify_receipt(receipt.json(), key) == []
    other, _ = gateway.new_key("someone-else")
    assert gateway.get(f"/v1/receipts/{event_id}", key=other).status_code == 404
    assert gateway.get("/v1/receipts/nope").status_code == 404
    assert gateway.get(f"/v1/receipts/{event_id}", key="tkm-bad").status_code == 401


def test_consistency_between_two_signed_heads(gateway):
    chat_event(gateway)
    first = gateway.get(f"/v1/receipts/{chat_event(gateway)['id']}").json()["tree_head"]
    chat_event(gateway)
    second = gateway.get(f"/v1/receipts/{chat_event(gateway)['id']}").json()["tree_head"]
    assert second["tree_size"] > first["tree_size"]
    r = gateway.get(f"/v1/ledger/consistency?first={first['tree_size']}"
                     f"&second={second['tree_size']}")
    proof = [bytes.fromhex(p) for p in r.json()["proof"]]
    assert verify_consistency(first["tree_size"], second["tree_size"], proof,
                              bytes.fromhex(first["root_hash"]), bytes.fromhex(second["root_hash"]))


@pytest.mark.parametrize("query", ["", "?first=1", "?first=a&second=2", "?first=0&second=1",
                                   "?first=2&second=1", "?first=1&second=999999999"])
def test_bad_consistency_queries_are_a_400(gateway, query):
    r = gateway.get("/v1/ledger/consistency" + query)
    assert r.status_code == 400 and r.json()["error"]["message"]


def _column(name: str) -> st.SearchStrategy:
    if name in ("duration_ms", "ttft_ms"):
        return st.one_of(st.none(), st.integers(0, 10**6).map(float),
                         st.floats(0, 1e7).map(lambda f: round(f, 3)))
    if name == "stream":
        return st.sampled_from([0, 1])
    return st.one_of(st.none(), st.integers(-(2**53) + 1, 2**53 - 1), st.text())


@settings(max_examples=300, deadline=None)
@given(st.tuples(*(_column(name) for name in FIELDS)))
def test_the_fast_leaf_equals_the_canonical_leaf(row):
    """What the writer and the audit hash is what a receipt's verifier recomputes."""
    assert leaf_of(row) == leaf_hash(canonical_json(leaf_document(event_of_row(row))))


def test_a_head_signed_twice_in_one_millisecond_is_stored_once(logged, tmp_path, monkeypatch):
    """The CLI signing while the gateway just did: the same head, not a broken primary key."""
    gw, _, _ = logged
    config = copy_of(gw, tmp_path)
    signer = load_signer(config.parent / "data" / "ledger-ed25519.pem", None)
    conn = SQLiteStore(sqlite3.connect(config.parent / "tokometer.db", isolation_level=None))
    latest = conn.execute("SELECT MAX(timestamp) FROM tree_heads").fetchone()[0]
    monkeypatch.setattr(receipts.time, "time", lambda: (latest + 1_000) / 1_000)
    first, second = (receipts.sign_stored_head(conn, signer) for _ in range(2))
    assert first == second
    assert conn.execute("SELECT COUNT(*) FROM tree_heads WHERE timestamp = ?",
                        (first.timestamp,)).fetchone()[0] == 1
    conn.close()
    audit = cli(config, "ledger", "audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_audit_findings_cannot_drive_the_terminal(logged, tmp_path):
    """A finding quotes stored names (an agent is whatever a client sent): shown escaped."""
    gw, _, _ = logged
    config = copy_of(gw, tmp_path)
    sql(config, "UPDATE rollup_tenants SET agent = ? WHERE period = 'day'", "evil\x1b[2J\x07")
    out = cli(config, "ledger", "audit")
    assert out.returncode == 1 and "evil\\x1b[2J\\x07" in out.stdout
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout


def test_a_signing_key_given_as_pem_is_used_and_a_bad_one_names_its_variable(tmp_path):
    made = load_signer(tmp_path / "made.pem")
    pem = (tmp_path / "made.pem").read_text()
    given = load_signer(tmp_path / "unused.pem", pem, "LOG_KEY")
    assert given.public_key.public_bytes_raw() == made.public_key.public_bytes_raw()
    assert not (tmp_path / "unused.pem").exists()
    with pytest.raises(ConfigError, match=r"^\$LOG_KEY: not a PEM private key"):
        load_signer(tmp_path / "unused.pem", "not a key", "LOG_KEY")


def test_a_key_being_written_is_never_read_half_written(tmp_path, monkeypatch):
    """Workers and replicas on a fresh setup create the log's key at once. One is held after
    writing half its key; the other must not read that half (before, it got 'not a PEM private
    key' and the gateway did not start): it makes the key, and the first then uses it."""
    from tokometer.ledger import signer

    key_file = tmp_path / "ledger-ed25519.pem"
    half_written, other_done = threading.Event(), threading.Event()
    real_fdopen = os.fdopen

    class SlowFile:  # the first key written stops half-way until the other load is done
        def __init__(self, f: Any):
            self.f = f

        def write(self, data: bytes) -> int:
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            half_written.set()
            assert other_done.wait(10)
            return self.f.write(data[len(data) // 2:])

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> SlowFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    slowed = iter([True])
    monkeypatch.setattr(signer.os, "fdopen", lambda fd, mode: (
        SlowFile(real_fdopen(fd, mode)) if next(slowed, False) else real_fdopen(fd, mode)))
    keys: dict[str, bytes] = {}

    def load(name: str) -> None:
        keys[name] = load_signer(key_file).public_key.public_bytes_raw()

    first = threading.Thread(target=load, args=("first",))
    first.start()
    assert half_written.wait(10)
    try:
        load("second")
    finally:
        other_done.set()
        first.join(10)
    assert keys["first"] == keys["second"]
    assert [p.name for p in tmp_path.iterdir()] == [key_file.name]  # nothing left aside
    assert key_file.stat().st_mode & 0o777 == 0o600
