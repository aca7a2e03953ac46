"""Statements: `tokometer statement` signs a tenant's month, on SQLite and PostgreSQL, and
`tokometer verify-statement` checks it offline: it holds with the tenant's own export (every
line recomputed, here also worked out by hand), and fails on an edited line, a removed
event, an added one, an altered one, or another key; corrections are lines of their own; a
statement of thousands of events is as small as one of a few."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import make_event
from processes import cli
from test_stores import stored
from tokometer.events import Event, rfc3339
from tokometer.ledger.signer import load_signer

NOV = datetime(2026, 11, 1, tzinfo=UTC)


def _events(n: int = 12) -> list[Event]:
    out = []
    for i in range(n):
        at = NOV + timedelta(days=i % 29, hours=i % 24, minutes=i % 60)
        out.append(make_event(
            time=rfc3339(at), tenant="acme" if i % 3 else "globex",
            model=("gpt-4o-mini", "deepseek-chat")[i % 2], input_tokens=1000 + i,
            cache_read_tokens=i, output_tokens=100 + i, reasoning_tokens=i % 5,
            cost=Decimal("0.001") + Decimal(i) / 100000,
            charge=Decimal("0.0015") + Decimal(i) / 100000 if i % 4 else None,
            energy_wh=Decimal("0.01") * (i % 3) if i % 7 else None))
    out.append(make_event(time=rfc3339(NOV + timedelta(days=5)), tenant="acme",
                          model="gpt-4o-mini", input_tokens=0, output_tokens=-50,
                          cost=Decimal("-0.0005"), corrects=out[1].id))
    out.append(make_event(time=rfc3339(NOV + timedelta(days=3)), tenant="acme",
                          model="gpt-4o-mini", cost=Decimal("0.04"), currency="EUR"))
    out.append(make_event(time=rfc3339(NOV - timedelta(seconds=1)), tenant="acme"))  # October
    out.append(make_event(time=rfc3339(NOV + timedelta(days=30)), tenant="acme"))  # December
    return out


@pytest.fixture
def ledger(store_location: Any, tmp_path: Path) -> tuple[Path, list[Event]]:
    events = _events()
    return stored(store_location, tmp_path, events), events


def statement(config: Path, tenant: str = "acme") -> dict[str, Any]:
    done = cli(config, "statement", "--tenant", tenant, "--period", "2026-11")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def verify(config: Path, tmp_path: Path, document: dict[str, Any],
           events: list[dict[str, Any]] | None = None) -> tuple[int, str]:
    path, export = tmp_path / "statement.json", tmp_path / "events.jsonl"
    path.write_text(json.dumps(document))
    pubkey = cli(config, "ledger", "pubkey").stdout.strip()
    extra = []
    if events is not None:
        export.write_text("".join(json.dumps(e) + "\n" for e in events))
        extra = ["--events", str(export)]
    done = cli(config, "verify-statement", str(path), "--pubkey", pubkey, *extra)
    return done.returncode, done.stdout + done.stderr


def exported(config: Path) -> list[dict[str, Any]]:
    done = cli(config, "events", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_statement_holds_and_its_lines_are_the_events_sums(ledger, tmp_path):
    config, events = ledger
    document = statement(config)
    everything = exported(config)
    assert verify(config, tmp_path, document)[0] == 0  # the signatures and totals alone
    code, said = verify(config, tmp_path, document, everything)
    assert code == 0 and "every line recomputed" in said
    mine = [e for e in events if e.tenant == "acme" and e.time.startswith("2026-11")]
    assert document["events"]["count"] == len(mine)
    lines = {(line["model"], line["currency"], line["correction"]): line
             for line in document["lines"]}
    for (model, currency, correction), line in lines.items():
        covered = [e for e in mine if (e.model, e.currency, e.corrects is not None)
                   == (model, currency, correction)]
        assert line["requests"] == len(covered)
        assert line["output_tokens"] == sum(e.output_tokens for e in covered)
        assert Decimal(line["cost"]) == sum(e.cost for e in covered)
        charged = [e.charge for e in covered if e.charge is not None]
        assert (Decimal(line["charge"]) if line["charge"] else None) == (
            sum(charged) if charged else None)
    assert lines["gpt-4o-mini", "USD", True]["output_tokens"] == -50  # the correction's own
    assert {t["currency"] for t in document["totals"]} == {"EUR", "USD"}
    html = cli(config, "statement", "--tenant", "acme", "--period", "2026-11", "--format",
               "html").stdout
    assert "Statement for acme, 2026-11" in html and "deepseek-chat" in html


def test_an_edited_line_another_key_a_removed_added_or_altered_event_fail(ledger, tmp_path):
    config, _ = ledger
    document, everything = statement(config), exported(config)
    edited = json.loads(json.dumps(document))
    edited["lines"][0]["cost"] = "0"
    code, said = verify(config, tmp_path, edited)
    assert code == 1 and "signature does not verify" in said

    acme = [e for e in everything if e["tenant"] == "acme"
            and e["time"].startswith("2026-11")]
    removed = [e for e in everything if e["id"] != acme[0]["id"]]
    code, said = verify(config, tmp_path, document, removed)
    assert code == 1 and "not the ones the statement covers" in said

    added = [*everything, {**acme[0], "id": "0190a0a0-0000-7000-8000-000000000000",
                           "leaf_index": max(e["leaf_index"] for e in everything) - 1}]
    assert verify(config, tmp_path, document, added)[0] == 1

    altered = [{**e, "output_tokens": e["output_tokens"] + 1} if e["id"] == acme[1]["id"]
               else e for e in everything]
    code, said = verify(config, tmp_path, document, altered)
    assert code == 1 and "is not what the events add up to" in said

    other = tmp_path / "other"
    other.mkdir()
    stranger = load_signer(other / "key.pem").public_key_text()
    (tmp_path / "s.json").write_text(json.dumps(document))
    done = cli(config, "verify-statement", str(tmp_path / "s.json"), "--pubkey", stranger)
    assert done.returncode == 1 and "signature does not verify" in done.stdout


def test_a_statement_of_thousands_of_events_is_as_small_as_one_of_a_few(tmp_path):
    sizes = []
    for n in (20, 5000):
        where = tmp_path / str(n)
        where.mkdir()
        document = statement(stored(where / "t.db", where, _events(n)))
        assert document["events"]["count"] > n // 2
        sizes.append(len(json.dumps(document)))
    assert sizes[1] < 2 * sizes[0] < 20_000


@pytest.mark.parametrize("period", ["2026-13", "2026-1", "november", "2026-11-01"])
def test_a_bad_period_is_refused(ledger, period):
    config, _ = ledger
    done = cli(config, "statement", "--tenant", "acme", "--period", period)
    assert done.returncode == 2 and "month like 2026-11" in done.stderr
