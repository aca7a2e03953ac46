"""`tokometer reconcile`: a provider's usage and cost exports (OpenAI's and Anthropic's report
formats, and CSV) against the ledger, day by day and model by model, on both stores: equal
lines pass, a line off by more than the tolerance is flagged (exit code 1), and every figure
is the sum worked out here from the events written."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import MINIMAL_CONFIG, make_event
from processes import cli
from test_stores import append
from tokometer.events import Event, rfc3339
from tokometer.ledger import open_store
from tokometer.ledger.signer import load_signer

DAY1, DAY2 = datetime(2026, 11, 2, 9, tzinfo=UTC), datetime(2026, 11, 3, 23, 30, tzinfo=UTC)
GPT, CLAUDE = "gpt-4o-mini-2024-07-18", "claude-sonnet-4-20250514"


def _events() -> list[Event]:
    """Two days, two models, of provider "p"; and provider "q"'s, which stay out."""
    out = []
    for at, model, n in ((DAY1, GPT, 3), (DAY2, GPT, 2), (DAY2, CLAUDE, 4)):
        for i in range(n):
            out.append(make_event(
                time=rfc3339(at.replace(minute=i)), provider="p", model=model,
                input_tokens=1000 + i, cache_read_tokens=200, cache_write_tokens=50 * i,
                output_tokens=300 + i, cost=Decimal("0.0123") + i))
    out.append(make_event(time=rfc3339(DAY1), provider="q", model=GPT, input_tokens=99))
    return out


def _sums(events: list[Event], day: str, model: str) -> dict[str, Any]:
    mine = [e for e in events if e.provider == "p" and e.time[:10] == day and e.model == model]
    return {"requests": len(mine), "input": sum(e.input_tokens for e in mine),
            "cached": sum(e.cache_read_tokens for e in mine),
            "written": sum(e.cache_write_tokens for e in mine),
            "output": sum(e.output_tokens for e in mine),
            "cost": sum((e.cost or Decimal(0) for e in mine), Decimal(0))}


@pytest.fixture
def ledger(store_location: Any, tmp_path: Path) -> tuple[Path, list[Event]]:
    """A config whose store holds the events (SQLite, then PostgreSQL)."""
    events = _events()
    with open_store(store_location, create=True) as store:
        append(store, events, load_signer(tmp_path / "key.pem"))
    config = tmp_path / "tokometer.toml"
    url = (f"sqlite:///{store_location}" if isinstance(store_location, Path)
           else store_location.url)
    config.write_text(f'[server]\nstore = "{url}"\nsigning_key = "{tmp_path / "key.pem"}"\n'
                      + MINIMAL_CONFIG + '[[providers]]\nname = "q"\napi = "openai"\n'
                      'base_url = "http://127.0.0.1:2/v1"\n')
    return config, events


def _run(config: Path, export: Path, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    done = cli(config, "reconcile", str(export), "--provider", "p", "--format", "json", *extra)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_openai_usage_and_costs_match_and_a_difference_is_flagged(ledger, tmp_path):
    config, events = ledger
    pages = []
    for at, model in ((DAY1, GPT), (DAY2, GPT)):
        s = _sums(events, at.date().isoformat(), model)
        start = int(at.replace(hour=0, minute=0).timestamp())
        pages.append({"object": "page", "data": [{"object": "bucket", "start_time": start,
                                                  "end_time": start + 86400, "results": [{
            "object": "organization.usage.completions.result", "model": model,
            "input_tokens": s["input"], "input_cached_tokens": s["cached"],
            "output_tokens": s["output"] + (40 if at == DAY2 else 0),  # off by ~4%
            "num_model_requests": s["requests"]}]}]})
        pages.append({"object": "page", "data": [{"object": "bucket", "start_time": start,
                                                  "results": [{
            "object": "organization.costs.result", "line_item": f"{model}, input",
            "amount": {"value": float(s["cost"] / 4), "currency": "usd"}}, {
            "object": "organization.costs.result", "line_item": f"{model}, output",
            "amount": {"value": float(s["cost"] * 3 / 4), "currency": "usd"}}]}]})
    export = tmp_path / "openai.json"
    export.write_text(json.dumps(pages))
    code, rows = _run(config, export)
    by = {(r["day"], r["model"]): r for r in rows}
    day1, day2 = DAY1.date().isoformat(), DAY2.date().isoformat()
    assert code == 1 and set(by) == {(day1, GPT), (day2, GPT), (day2, CLAUDE)}
    first = by[(day1, GPT)]
    s = _sums(events, day1, GPT)
    assert (first["input_tokens_provider"], first["input_tokens_ledger"]) == (s["input"],) * 2
    assert first["output_tokens_diff"] == 0 and first["flagged"] is None
    assert first["cache_write_tokens_provider"] is None  # OpenAI's usage does not say
    assert Decimal(first["cost_ledger"]) == s["cost"] and Decimal(first["cost_diff"]) == 0
    assert (by[(day2, GPT)]["output_tokens_diff"], by[(day2, GPT)]["flagged"]) == (
        40, "output_tokens")
    missing = by[(day2, CLAUDE)]  # in the ledger only: all of it is a difference
    assert missing["input_tokens_provider"] == 0 and missing["flagged"]
    code, rows = _run(config, export, "--tolerance", "0.05", "--until", day2)
    assert code == 0 and [r["day"] for r in rows] == [day1]


def test_an_anthropic_usage_report_counts_cache_writes_into_input(ledger, tmp_path):
    config, events = ledger
    day = DAY2.date().isoformat()
    s = _sums(events, day, CLAUDE)
    export = tmp_path / "anthropic.json"
    export.write_text(json.dumps({"data": [{
        "starting_at": f"{day}T00:00:00Z", "ending_at": "later", "results": [{
            "uncached_input_tokens": s["input"] - s["cached"] - s["written"],
            "cache_read_input_tokens": s["cached"], "output_tokens": s["output"],
            "cache_creation": {"ephemeral_5m_input_tokens": s["written"] - 100,
                               "ephemeral_1h_input_tokens": 100},
            "model": CLAUDE, "server_tool_use": {"web_search_requests": 0}}]}],
        "has_more": False}))
    code, rows = _run(config, export, "--since", day)
    claude = next(r for r in rows if r["model"] == CLAUDE)
    assert (claude["input_tokens_provider"], claude["cache_write_tokens_provider"]) == (
        s["input"], s["written"])
    assert claude["flagged"] is None and claude["requests_provider"] is None
    assert code == 1  # the GPT line of that day is in the ledger only


def test_a_csv_export_and_one_not_grouped_by_model(ledger, tmp_path):
    config, events = ledger
    day1 = DAY1.date().isoformat()
    s = _sums(events, day1, GPT)
    export = tmp_path / "usage.csv"
    export.write_text("\ufeffDate,Model,Input_Tokens,Output_Tokens,Cost\n"
                      f"{day1},{GPT},\"{s['input']:,}\",{s['output']},${s['cost']}\n")
    code, rows = _run(config, export, "--until", DAY2.date().isoformat())
    assert code == 0 and rows[0]["input_tokens_diff"] == 0 and rows[0]["cost_diff"] == "0"
    totals = tmp_path / "totals.json"  # no group_by=model: the day's totals
    everything = [_sums(events, day1, GPT)]
    totals.write_text(json.dumps({"object": "page", "data": [{
        "start_time": int(DAY1.replace(hour=0).timestamp()), "results": [{
            "object": "organization.usage.completions.result", "model": None,
            "input_tokens": everything[0]["input"], "output_tokens": everything[0]["output"],
            "num_model_requests": everything[0]["requests"]}]}]}))
    code, rows = _run(config, totals, "--until", DAY2.date().isoformat())
    assert code == 0 and [(r["model"], r["input_tokens_diff"]) for r in rows] == [
        ("(all models)", 0)]


@pytest.mark.parametrize(("content", "args", "message"), [
    ("{oops", (), "not JSON"),
    ('{"data": [{"start_time": 1, "results": [{"weird": 1}]}]}', (), "no known export"),
    ('{"data": [{"start_time": "yesterday", "results": []}]}', (), "not a time or date"),
    ("model,tokens\nm,1\n", (), "needs a date and a model column"),
    ("date,model,input_tokens\n2026-11-02,m,-5\n", (), "line 2: not a count"),
    ('{"data": []}', ("--tolerance", "2"), "expected a share from 0 to 1"),
])
def test_bad_exports_and_arguments_are_clear_errors(tmp_path, content, args, message):
    config = tmp_path / "tokometer.toml"
    config.write_text(f'[server]\nstore = "sqlite:///{tmp_path / "t.db"}"\n' + MINIMAL_CONFIG)
    export = tmp_path / "export.txt"
    export.write_text(content)
    done = cli(config, "reconcile", str(export), "--provider", "p", *args)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    unknown = cli(config, "reconcile", str(export), "--provider", "nope")
    assert "no provider nope in the config (it has p)" in unknown.stderr
