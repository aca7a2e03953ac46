"""`tokometer billing-export`: Stripe meter events, OpenMeter CloudEvents and Lago events from
the ledger, on SQLite and PostgreSQL. A re-run writes the same records with the same ids (so
the billing system drops them); the tokens each tenant is billed for, kind by kind, equal the
events' sums worked out here; refusals without a tenant and kinds without tokens have no
record, and a correction's records are its negative differences."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import make_event
from processes import cli
from test_stores import stored
from tokometer.events import Event, rfc3339

AT = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def _events() -> list[Event]:
    out = [make_event(tenant=tenant, time=rfc3339(AT.replace(minute=i)), input_tokens=1000 + i,
                      cache_read_tokens=100 * (i % 3), cache_write_tokens=50 * (i % 2),
                      output_tokens=200 + i, model="gpt-4o-mini")
           for i, tenant in enumerate(["acme", "acme", "globex", "acme", "globex"])]
    out.append(make_event(tenant=None, key_id=None, app=None, input_tokens=0, output_tokens=0,
                          status=401, time=rfc3339(AT)))  # refused before a key was known
    out.append(make_event(tenant="acme", input_tokens=0, output_tokens=-150, cost=None,
                          model="gpt-4o-mini",
                          corrects=out[0].id, time=rfc3339(AT.replace(hour=11))))
    return out


@pytest.fixture
def config(store_location: Any, tmp_path: Path) -> tuple[Path, list[Event]]:
    events = _events()
    return stored(store_location, tmp_path, events), events


def export(config: Path, shape: str, *extra: str) -> list[dict[str, Any]]:
    done = cli(config, "billing-export", "--to", shape, *extra)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def expected(events: list[Event]) -> Counter[tuple[str, str]]:
    sums: Counter[tuple[str, str]] = Counter()
    for e in events:
        if e.tenant:
            sums[e.tenant, "input"] += (e.input_tokens - e.cache_read_tokens
                                        - e.cache_write_tokens)
            sums[e.tenant, "cache_read"] += e.cache_read_tokens
            sums[e.tenant, "cache_write"] += e.cache_write_tokens
            sums[e.tenant, "output"] += e.output_tokens
    return Counter({k: v for k, v in sums.items() if v})  # no tokens of a kind: no record


@pytest.mark.parametrize("shape", ["stripe", "openmeter", "lago"])
def test_each_shape_bills_the_events_tokens_once_with_stable_ids(config, shape):
    path, events = config
    first, again = export(path, shape), export(path, shape)
    assert first == again  # a re-run: the same records, the same ids
    billed: Counter[tuple[str, str]] = Counter()
    ids = []
    for r in first:
        if shape == "stripe":
            kind = r["event_name"].removeprefix("tokometer_").removesuffix("_tokens")
            billed[r["payload"]["stripe_customer_id"], kind] += int(r["payload"]["value"])
            ids.append(r["identifier"])
            assert r["timestamp"] >= int(AT.timestamp())
        elif shape == "openmeter":
            assert (r["specversion"], r["type"], r["source"]) == ("1.0", "tokometer_tokens",
                                                                  "tokometer")
            billed[r["subject"], r["data"]["kind"]] += r["data"]["tokens"]
            ids.append(r["id"])
            assert r["data"]["model"] == "gpt-4o-mini"
        else:
            event = r["event"]
            assert event["code"] == "tokometer_tokens"
            billed[event["external_subscription_id"], event["properties"]["kind"]] += \
                event["properties"]["tokens"]
            ids.append(event["transaction_id"])
    assert billed == expected(events)
    assert len(ids) == len(set(ids)) == len(first)
    assert {i.rsplit("-", 1)[0] for i in ids} <= {e.id for e in events if e.tenant}
    assert ("acme", "output") in billed and -150 in [
        int(r["payload"]["value"]) if shape == "stripe" else
        r["data"]["tokens"] if shape == "openmeter" else r["event"]["properties"]["tokens"]
        for r in first]  # the correction, as its difference


def test_a_file_and_a_window(config, tmp_path):
    path, events = config
    out = tmp_path / "lago.jsonl"
    done = cli(path, "billing-export", "--to", "lago", "-o", str(out), "--until",
               rfc3339(AT.replace(minute=2)))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert f"wrote {len(records)} lago records" in done.stdout
    assert {r["event"]["transaction_id"].rsplit("-", 1)[0] for r in records} == {
        e.id for e in events[:2]}
    bad = cli(path, "billing-export", "--to", "paypal")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
