"""Every store feature on every store: the same events in SQLite and in PostgreSQL give the
same keys, budgets, reports, receipts and audit, through the one Store protocol."""

from __future__ import annotations

import fcntl
import os
import random
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import MINIMAL_CONFIG, make_event
from tokometer.analytics import flows, rankings, report
from tokometer.analytics.tasks import agents, tasks
from tokometer.cli import main
from tokometer.config import Budget, PostgresURL, Scope
from tokometer.errors import LedgerError, RequestError
from tokometer.events import Event, rfc3339
from tokometer.ledger import Store, open_store
from tokometer.ledger.audit import audit
from tokometer.ledger.derive import fold, grow_log, insert_leaves, sign_head
from tokometer.ledger.log import MerkleLog, leaf_count
from tokometer.ledger.read import count_events, iter_events
from tokometer.ledger.receipts import build_receipt, verify_receipt
from tokometer.ledger.rows import event_row
from tokometer.ledger.signer import Signer, load_signer
from tokometer.policy import create_key, list_keys, revoke_key
from tokometer.policy.budgets import (
    all_budgets,
    budget_statuses,
    remove_budget,
    set_budget,
    stored_budgets,
)
from tokometer.provenance.fingerprint import mark_sha256

NOW = datetime.now(UTC)


def events(n: int = 120, seed: int = 3) -> list[Event]:
    """Varied events over the last three weeks: tenants, agents, tasks, currencies, errors."""
    rnd = random.Random(seed)
    return [make_event(
        time=rfc3339(NOW - timedelta(seconds=rnd.randrange(21 * 86400))),
        tenant=rnd.choice(["acme", "globex"]), app=rnd.choice(["bot", "search"]),
        agent=rnd.choice([None, "planner"]), task=rnd.choice([None, "t1", "t2"]),
        model=rnd.choice(["gpt-4o-mini", "deepseek-chat"]),
        consumer_region=rnd.choice(["DE", "US", None]), provider_region=rnd.choice(["US", "CN"]),
        input_tokens=rnd.randrange(1, 3000), output_tokens=rnd.randrange(0, 900),
        cost=rnd.choice([None, Decimal(rnd.randrange(1, 10**6)) / 10**8]),
        currency=rnd.choice(["USD", "USD", "CNY"]), status=rnd.choice([200, 200, 429]))
        for _ in range(n)]


def append(store: Store, batch: list[Event], signer: Signer) -> None:
    """The writer's work in one transaction, through the protocol: events as the next leaves,
    the tree nodes above them, the rollups, a signed head."""
    with store.transaction():
        size = leaf_count(store)
        rows = [event_row(e) for e in sorted(batch, key=lambda e: e.time)]
        tree = grow_log(store, MerkleLog.load(store, size), insert_leaves(store, rows, size))
        fold(store, rows)
        sign_head(store, signer, tree.size, tree.root(), int(NOW.timestamp() * 1000) + size)


def stored(store_location: Any, tmp_path: Path, batch: list[Event]) -> Path:
    """A config whose store (SQLite's file or a PostgreSQL database) holds `batch` as the
    log's leaves, signed with tmp_path/key.pem, the config's key too."""
    with open_store(store_location, create=True) as store:
        append(store, batch, load_signer(tmp_path / "key.pem"))
    url = store_location.url if isinstance(store_location, PostgresURL) \
        else f"sqlite:///{store_location}"
    path = tmp_path / "tokometer.toml"
    path.write_text(f'[server]\nstore = "{url}"\nsigning_key = "{tmp_path / "key.pem"}"\n'
                    + MINIMAL_CONFIG)
    return path


@pytest.fixture
def filled(store_location: Any, tmp_path: Path) -> Any:
    signer = load_signer(tmp_path / "key.pem")
    with open_store(store_location, create=True) as store:
        batch = events()
        append(store, batch[:70], signer)
        append(store, batch[70:], signer)
    return store_location, signer


def test_a_store_is_created_only_when_asked(store_location):
    with pytest.raises(LedgerError, match="there is no store at"):
        open_store(store_location)
    open_store(store_location, create=True).close()
    with open_store(store_location) as store:
        assert count_events(store) == 0


def test_a_postgresql_store_that_cannot_be_reached_is_a_clear_error():
    with pytest.raises(LedgerError, match=r"cannot open the store at postgresql://u@127\.0\.0\.1:1/db"):
        open_store(PostgresURL("postgresql://u:secret@127.0.0.1:1/db"))


def test_a_postgresql_url_keeps_its_password_out_of_reprs_and_logs():
    url = PostgresURL("postgresql://meter:hunter2@db.internal:5432/tokometer")
    assert "hunter2" not in repr(url) and "hunter2" not in str(url)
    assert str(url) == "postgresql://meter@db.internal:5432/tokometer"


def test_keys_are_created_listed_and_revoked(store_location):
    with open_store(store_location, create=True) as store:
        key, key_id = create_key(store, "acme", "bot", "DE")
        assert key.startswith("tkm-")
        assert [(k["key_id"], k["tenant"], k["revoked"]) for k in list_keys(store)] == [
            (key_id, "acme", None)]
        revoke_key(store, key_id)
        assert list_keys(store)[0]["revoked"] is not None
        with pytest.raises(RequestError):
            revoke_key(store, "no-such-key")


def test_budgets_are_set_changed_removed_and_spent_from_the_ledger(filled):
    location, _ = filled
    config = (Budget("cfg", Scope("tenant", "acme"), Decimal("100"), "USD", "total"),)
    with open_store(location) as store:
        first = set_budget(store, Budget("", Scope("app", "bot"), Decimal("5"), "USD", "month"),
                           ["cfg"])
        again = set_budget(store, Budget("", Scope("app", "bot"), Decimal("7"), "USD", "month"),
                           ["cfg"])
        assert again.id == first.id and stored_budgets(store)[0].limit == Decimal("7")
        statuses = {s["budget_id"]: s
                    for s in budget_statuses(store, all_budgets(store, config), NOW)}
        all_events = list(iter_events(store))
        spent = sum((Decimal(e["cost"]) for e in all_events
                     if e["tenant"] == "acme" and e["currency"] == "USD" and e["cost"]),
                    Decimal(0))
        assert Decimal(statuses["cfg"]["spent"]) == spent
        remove_budget(store, first.id, ["cfg"])
        assert stored_budgets(store) == []
        with pytest.raises(RequestError, match="config file"):
            remove_budget(store, "cfg", ["cfg"])


def test_reports_read_the_same_on_both_stores(tmp_path, postgres):
    """The one oracle that covers every query: identical events, identical answers."""
    batch, signer = events(seed=11), load_signer(tmp_path / "key.pem")
    answers = []
    for location in (tmp_path / "t.db", PostgresURL(postgres.new_database())):
        with open_store(location, create=True) as store:
            append(store, batch, signer)
            answers.append([
                report(store, ["tenant", "model"]),
                report(store, ["app"], period="week"),
                report(store, ["agent"], period="day", since=rfc3339(NOW - timedelta(days=7))),
                report(store, ["model"], period="hour", top=2),
                rankings(store, "model", 3), flows(store), tasks(store), agents(store),
                list(iter_events(store)),
            ])
    assert answers[0] == answers[1]
    assert any(row["cost"] for row in answers[0][0]) and answers[0][6]  # not empty answers


def test_receipts_verify_and_the_log_audits_clean(filled):
    location, signer = filled
    with open_store(location) as store:
        ids = [e["id"] for e in iter_events(store)]
        for event_id in ids[::17]:
            receipt = build_receipt(store, event_id)
            assert receipt is not None and verify_receipt(receipt, signer.public_key) == []
        report_ = audit(store, signer.public_key)
    assert (report_.events, report_.leaves, report_.heads, report_.findings) == (120, 120, 2, [])


def test_the_audit_finds_an_altered_event_on_either_store(filled):
    location, signer = filled
    with open_store(location) as store:
        victim = next(iter_events(store))["id"]
        store.execute("UPDATE events SET output_tokens = output_tokens + 1 WHERE id = ?",
                      (victim,))
        found = audit(store, signer.public_key).first()
    assert found is not None and "altered" in found.what


def test_the_cli_reads_a_postgresql_store(tmp_path, postgres, capsys):
    url = postgres.new_database()
    config = tmp_path / "tokometer.toml"
    config.write_text(f'[server]\nstore = "{url}"\n' + MINIMAL_CONFIG)
    assert main(["report", "--config", str(config)]) == 2  # no store yet: says so
    assert "there is no store at" in capsys.readouterr().err
    with open_store(PostgresURL(url), create=True) as store:
        append(store, events(30), load_signer(tmp_path / "key.pem"))
    assert main(["keys", "create", "--tenant", "acme", "--app", "bot", "--config",
                 str(config)]) == 0
    assert main(["report", "--by", "tenant", "--format", "json", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert '"tenant": "acme"' in out or '"tenant":"acme"' in out


def test_migrate_copies_a_store_either_way_and_audits_the_copy(tmp_path, postgres, capsys):
    """SQLite → PostgreSQL → SQLite: every table copied, the copies audit clean with the log's
    key and answer every report as the original does."""
    key = tmp_path / "key.pem"
    config = tmp_path / "tokometer.toml"
    config.write_text(f'[server]\nsigning_key = "{key}"\n' + MINIMAL_CONFIG)
    original, url, back = tmp_path / "a.db", postgres.new_database(), tmp_path / "b.db"
    digest, fingerprints = "ab" * 32, bytes(range(16))  # one answer's provenance mark
    batch = events(90)
    batch[0] = replace(batch[0], fingerprint_sha256=mark_sha256(digest, fingerprints))
    with open_store(original, create=True) as store:
        append(store, batch, load_signer(key))
        store.execute("INSERT INTO provenance (event_id, text_sha256, fingerprints) "
                      "VALUES (?, ?, ?)", (batch[0].id, digest, fingerprints))
        create_key(store, "acme", "bot", "DE")
    for source, target in ((f"sqlite:///{original}", url), (url, f"sqlite:///{back}")):
        assert main(["migrate", "--from", source, "--to", target, "--config", str(config)]) == 0
        out = capsys.readouterr().out
        assert "90 events" in out and "the copy audits clean" in out, out
    answers = []
    for location in (original, PostgresURL(url), back):
        with open_store(location) as store:
            answers.append([report(store, ["tenant", "model"], period="day"), flows(store),
                            tasks(store), list(iter_events(store)), len(list_keys(store)),
                            [(i, d, bytes(f)) for i, d, f in store.execute(
                                "SELECT event_id, text_sha256, fingerprints FROM provenance")]])
    assert answers[0] == answers[1] == answers[2]
    assert answers[2][-1] == [(batch[0].id, digest, fingerprints)]


def test_migrate_refuses_a_target_that_is_not_empty(tmp_path, postgres, capsys):
    config = tmp_path / "tokometer.toml"
    config.write_text(f'[server]\nsigning_key = "{tmp_path / "key.pem"}"\n' + MINIMAL_CONFIG)
    url = postgres.new_database()
    with open_store(PostgresURL(url), create=True) as store:
        append(store, events(5), load_signer(tmp_path / "key.pem"))
    with open_store(tmp_path / "a.db", create=True) as store:
        append(store, events(5), load_signer(tmp_path / "key.pem"))
    assert main(["migrate", "--from", f"sqlite:///{tmp_path / 'a.db'}", "--to", url,
                 "--config", str(config)]) == 2
    assert "the target store is not empty" in capsys.readouterr().err
    assert main(["migrate", "--from", "mysql://x", "--to", url, "--config", str(config)]) == 2
    assert "--from/--to: expected 'sqlite:///PATH'" in capsys.readouterr().err


def test_sqlite_writers_take_turns_on_the_writers_file(tmp_path):
    """A writer waits while another process holds the store's -writers lock (the test
    holds it here), and writes as soon as it is let go: writers take turns there, tried
    again within a millisecond, not on SQLite's own lock, whose retries sleep 1, 2, 5, 10...
    ms. (A writer that never lets go: tests/test_attack_round3.py.)"""
    path = tmp_path / "tokometer.db"
    with open_store(path, create=True) as store:
        holder = os.open(f"{path}-writers", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(holder, fcntl.LOCK_EX)
        written, failed = threading.Event(), []

        def write() -> None:
            try:
                with store.transaction():
                    store.execute("INSERT INTO rate_seconds VALUES ('writer', 1, 1, 0)")
                written.set()
            except Exception as e:  # the test reports it
                failed.append(e)

        thread = threading.Thread(target=write)
        thread.start()
        try:
            assert not written.wait(0.3), "the writer did not wait for the -writers lock"
        finally:
            fcntl.flock(holder, fcntl.LOCK_UN)
            os.close(holder)
        thread.join(10)
        assert written.is_set() and not failed, failed
