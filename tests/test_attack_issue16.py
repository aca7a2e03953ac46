"""Attacks on and audits of issue 16's features (plans, billing exports, the price index,
statements): each test failed before its fix."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import make_event
from processes import cli
from test_stores import append
from tokometer.events import FIELDS, rfc3339
from tokometer.ledger import open_store
from tokometer.ledger.read import event_of_row
from tokometer.ledger.signer import Signer, load_signer
from tokometer.ledger.statements import build_statement, verify_statement

NOV = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Signer, dict[str, Any], list[dict[str, Any]]]:
    """A SQLite ledger's statement of acme's November (as its file reads back) and acme's
    events as an export gives them."""
    signer = load_signer(tmp_path / "key.pem")
    events = [make_event(time=rfc3339(NOV + timedelta(hours=i)),
                         tenant="acme" if i % 2 else "globex", cost=Decimal("0.01"),
                         charge=Decimal("0.02") if i % 3 else None) for i in range(8)]
    with open_store(tmp_path / "s.db", create=True) as store:
        append(store, events, signer)
        document = build_statement(store, signer, "acme", "2026-11")
        rows = [event_of_row(r) for r in store.execute(
            f"SELECT {', '.join(FIELDS)} FROM events WHERE tenant = 'acme' "
            "ORDER BY leaf_index")]
    export = [orjson.loads(orjson.dumps(r, default=str)) for r in rows]
    return signer, orjson.loads(orjson.dumps(document)), export


def test_the_statement_and_its_export_hold(signed):
    signer, document, export = signed
    assert verify_statement(document, signer.public_key, export) == []


@pytest.mark.parametrize("bad", [{"input_tokens": "5"}, {"cost": [1]}, {"cost": "sNaN"},
                                 {"model": ["x"]}, {"cost": "1e999999999"}])
def test_a_malformed_event_given_is_said_not_raised(signed, bad):
    signer, document, export = signed
    export[0] = {**export[0], **bad}
    problems = verify_statement(document, signer.public_key, export)
    assert any("events given are malformed" in p for p in problems), problems


def test_an_overflowing_amount_in_a_line_is_said_not_raised(signed):
    signer, document, _ = signed
    document["lines"][0]["cost"] = "1e9999999"
    problems = verify_statement(document, signer.public_key)
    assert any("lines are malformed" in p for p in problems), problems


def test_verify_statement_prints_what_is_wrong_not_a_traceback(signed, tmp_path):
    signer, document, export = signed
    export[0] = {**export[0], "input_tokens": "5"}
    (tmp_path / "st.json").write_bytes(orjson.dumps(document))
    (tmp_path / "ev.jsonl").write_text("".join(json.dumps(e) + "\n" for e in export))
    done = cli(tmp_path, "verify-statement", str(tmp_path / "st.json"), "--pubkey",
               signer.public_key_text(), "--events", str(tmp_path / "ev.jsonl"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "events given are malformed" in done.stdout


def test_a_signature_in_another_base64_spelling_is_refused(signed):
    signer, document, _ = signed
    text = document["signature"]  # 64 bytes: the last character before == has 4 spare bits
    assert text.endswith("==")
    spare = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    at = spare.index(text[-3])
    other = text[:-3] + spare[at ^ 1] + "=="
    assert verify_statement({**document, "signature": other}, signer.public_key)


def test_a_statement_naming_a_key_twice_is_refused(signed, tmp_path):
    signer, document, _ = signed
    text = orjson.dumps(document).decode()
    forged = text.replace('"tenant":"acme"', '"tenant":"globex","tenant":"acme"', 1)
    assert json.loads(forged) == document  # what a last-wins reader (and the verifier) sees
    (tmp_path / "st.json").write_text(forged)
    done = cli(tmp_path, "verify-statement", str(tmp_path / "st.json"), "--pubkey",
               signer.public_key_text())
    assert done.returncode != 0 and "twice" in done.stdout + done.stderr
    (tmp_path / "deep.json").write_text("[" * 1000 + "]" * 1000)
    done = cli(tmp_path, "verify-statement", str(tmp_path / "deep.json"), "--pubkey",
               signer.public_key_text())
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr


def _charged_unpriced(store_location: Any, tmp_path: Path) -> None:
    """acme: one request costing 1 charged 1.5, one of unknown cost charged 2 (a sell tariff
    of an unpriced model), one costing 3 no plan covers."""
    at = datetime(2026, 11, 2, tzinfo=UTC)
    events = [make_event(time=rfc3339(at), tenant="acme", cost=Decimal(1), charge=Decimal("1.5")),
              make_event(time=rfc3339(at + timedelta(minutes=5)), tenant="acme", cost=None,
                         charge=Decimal(2)),
              make_event(time=rfc3339(at + timedelta(minutes=6)), tenant="acme",
                         cost=Decimal(3), charge=None)]
    with open_store(store_location, create=True) as store:
        append(store, events, load_signer(tmp_path / "key.pem"))


@pytest.mark.parametrize("since", [None, "2026-11-02T00:01:00.000Z"])  # rollups, events
def test_no_margin_is_told_where_a_charged_request_has_no_known_cost(store_location, tmp_path,
                                                                      since):
    from tokometer import analytics

    _charged_unpriced(store_location, tmp_path)
    with open_store(store_location) as store:
        [row] = analytics.report(store, ["tenant"], since=since)
    assert row["charge"] == ("3.5" if since is None else "2")  # by hand
    assert row["margin"] is None  # was 2.5 (and 2): the unknown cost taken as zero


def test_an_old_stores_rollups_are_folded_again_for_the_unpriced_charges(tmp_path):
    from tokometer import analytics
    from tokometer.ledger.rollups import ROLLUPS

    _charged_unpriced(tmp_path / "old.db", tmp_path)
    import sqlite3
    with sqlite3.connect(tmp_path / "old.db") as conn:
        for name in ROLLUPS:
            conn.execute(f"ALTER TABLE {name} DROP COLUMN charged_unpriced")
    with open_store(tmp_path / "old.db") as store:
        [row] = analytics.report(store, ["tenant"])
    assert (row["charge"], row["margin"]) == ("3.5", None)
