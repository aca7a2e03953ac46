"""A store written before the late event fields (1-hour cache writes, web searches, service
tier) and before rollups were keyed by currency: after the upgrade it opens, audits clean
(`tokometer ledger audit`), its old receipts still verify, its rollups answer right, and new
events with the new fields join the same log."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import old_rollup_table
from tokometer.analytics import report
from tokometer.analytics.report import rollup_grain
from tokometer.events import FIELDS, LATE_FIELDS, Event, new_event_id, rfc3339
from tokometer.ledger import SQLiteLedger, open_store
from tokometer.ledger.audit import audit
from tokometer.ledger.canonical import canonical_json
from tokometer.ledger.log import INSERT_NODE, MerkleLog, stored_nodes
from tokometer.ledger.merkle import Tree, leaf_hash
from tokometer.ledger.receipts import build_receipt, verify_receipt
from tokometer.ledger.rollups import ROLLUPS
from tokometer.ledger.rows import event_row
from tokometer.ledger.schema import _TYPES, SCHEMA
from tokometer.ledger.signer import load_signer

BASE_TIME = datetime(2026, 11, 30, 11, 0, tzinfo=UTC)
OLD_FIELDS = tuple(f for f in FIELDS if f not in LATE_FIELDS)  # the field set before them
BASE = Event(id="", time="", duration_ms=12.0, ttft_ms=None, key_id="k", tenant="acme",
             app="bot", agent=None, task=None, end_user=None, consumer_region="DE",
             api="openai", operation="chat", stream=False, provider="openai",
             provider_region="US", model_requested="gpt-4o-mini", model="gpt-4o-mini",
             model_origin="US", input_tokens=100, cache_read_tokens=0, cache_write_tokens=0,
             output_tokens=20, reasoning_tokens=0, usage_source="reported",
             counted_input_tokens=None, counted_output_tokens=None, cost=Decimal("0.000027"),
             currency="USD", price_ref="tariff:config", status=200, error_type=None,
             finish_reason="stop")


def old_store(directory: Path, n: int = 5) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    """A store as the gateway wrote it before the late fields: its events, leaves (JCS of every
    stored column), tree nodes, a signed head; returns it, its events and a receipt it issued."""
    path = directory / "tokometer.db"
    conn = sqlite3.connect(path, isolation_level=None)
    columns = ", ".join(f"{f} {_TYPES.get(f, 'TEXT')}{' PRIMARY KEY' if f == 'id' else ''}"
                        for f in OLD_FIELDS)
    conn.execute(f"CREATE TABLE events ({columns}) WITHOUT ROWID")
    for name, dims in ROLLUPS.items():
        conn.execute(old_rollup_table(name, dims))
    conn.executescript(SCHEMA)  # every other table; the events table stays as it was
    documents, leaves = [], []
    for i in range(n):
        event = dataclasses.replace(BASE, id=new_event_id(),
                                    time=rfc3339(BASE_TIME) if i else "2026-11-30T10:00:00.000Z",
                                    tenant=("acme", "globex")[i % 2], leaf_index=i)
        row = dict(zip(FIELDS, event_row(event), strict=True))
        document = {f: row[f] for f in OLD_FIELDS}
        document["stream"] = bool(document["stream"])
        conn.execute(f"INSERT INTO events ({', '.join(OLD_FIELDS)}) VALUES "
                     f"({', '.join('?' for _ in OLD_FIELDS)})",
                     [row[f] for f in OLD_FIELDS])
        documents.append(document)
        leaves.append(leaf_hash(canonical_json(document)))
    log, nodes = MerkleLog(0, ()).extend(leaves)
    conn.executemany(INSERT_NODE, nodes)
    conn.executemany("INSERT INTO ledger_meta (key, value) VALUES (?, ?)",
                     [("logged", n), ("rolled_up", n)])  # as if its rollups held them all
    signer = load_signer(directory / "data" / "ledger-ed25519.pem", None)
    head = signer.sign(n, log.root(), 1_764_000_000_000)
    conn.execute("INSERT INTO tree_heads VALUES (?,?,?,?)",
                 (head.tree_size, head.root_hash, head.timestamp, head.signature))
    receipt = {"receipt_version": 1, "event": documents[2], "leaf_index": 2,
               "leaf_hash": leaves[2].hex(),
               "inclusion_proof": [p.hex() for p in Tree(stored_nodes(conn), n)
                                   .inclusion_proof(2)],
               "tree_head": head.to_json()}
    conn.close()
    return path, documents, receipt


@pytest.fixture
def upgraded(tmp_path):
    path, documents, receipt = old_store(tmp_path)
    (tmp_path / "tokometer.toml").write_text('[server]\nstore = "sqlite:///tokometer.db"\n')
    return path, documents, receipt


def audit_cli(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokometer.cli", "ledger", "audit", "--config",
                           str(directory / "tokometer.toml")],
                          capture_output=True, text=True, timeout=120)


def test_an_old_store_audits_clean_and_keeps_its_receipts(upgraded):
    path, documents, receipt = upgraded
    out = audit_cli(path.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    conn = open_store(path)
    try:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
        assert columns >= LATE_FIELDS  # the upgrade added them
        key = load_signer(path.parent / "data" / "ledger-ed25519.pem", None).public_key
        assert audit(conn, key).clean
        assert verify_receipt(receipt, key) == []  # issued before the upgrade
        again = build_receipt(conn, documents[2]["id"])
        assert again is not None and again["event"] == documents[2]  # no late keys in it
        assert verify_receipt(again, key) == []
    finally:
        conn.close()


def test_a_null_late_field_in_the_leaf_would_have_broken_the_old_leaves(upgraded):
    """Why the rule exists: hashing the new columns as nulls changes every old leaf."""
    _path, documents, receipt = upgraded
    with_nulls = {**documents[2], **dict.fromkeys(LATE_FIELDS)}
    assert leaf_hash(canonical_json(with_nulls)).hex() != receipt["leaf_hash"]


def test_new_events_with_late_fields_join_the_upgraded_log(upgraded):
    path, documents, _ = upgraded
    signer = load_signer(path.parent / "data" / "ledger-ed25519.pem", None)
    new = dataclasses.replace(BASE, id=new_event_id(), time=rfc3339(BASE_TIME),
                              cache_write_1h_tokens=0, web_search_requests=3,
                              service_tier="priority")

    async def append() -> None:
        ledger = SQLiteLedger(path, signer)
        ledger.start()
        await ledger.append(new)  # the writer signs a head over it right after its commit
        await ledger.close()

    asyncio.run(append())
    assert audit_cli(path.parent).returncode == 0
    conn = open_store(path)
    try:
        receipt = build_receipt(conn, new.id)
        assert receipt is not None and receipt["leaf_index"] == len(documents)
        assert (receipt["event"]["web_search_requests"], receipt["event"]["service_tier"],
                receipt["event"]["cache_write_1h_tokens"]) == (3, "priority", 0)
        assert verify_receipt(receipt, signer.public_key) == []
        tampered = {**receipt, "event": {**receipt["event"], "web_search_requests": 0}}
        assert verify_receipt(tampered, signer.public_key)  # the new fields are covered
    finally:
        conn.close()


def test_old_rollups_are_refolded_by_currency_from_the_events(upgraded):
    path, documents, _ = upgraded
    conn = open_store(path)
    try:
        assert rollup_grain(["tenant"], None, None, None) == "day"
        rows = {(r["tenant"], r["currency"]): (r["requests"], Decimal(r["cost"]))
                for r in report(conn, ["tenant"])}
        expected: dict[tuple[str, str], tuple[int, Decimal]] = {}
        for d in documents:
            n, cost = expected.get((d["tenant"], d["currency"]), (0, Decimal(0)))
            expected[d["tenant"], d["currency"]] = (n + 1, cost + Decimal(d["cost"]))
        assert rows == expected
    finally:
        conn.close()
