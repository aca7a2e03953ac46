"""Reports, rankings and flows from the rollups, checked against the raw events they sum."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pyarrow.parquet as pq
import pytest

from conftest import Gateway
from tokometer.analytics import flows, rankings, report
from tokometer.analytics.charts import flows_chart, rankings_chart, report_chart
from tokometer.analytics.export import export
from tokometer.analytics.report import rollup_grain
from tokometer.analytics.tasks import agents, tasks
from tokometer.catalog import vendor_of
from tokometer.errors import RequestError
from tokometer.events import Event, new_event_id, rfc3339
from tokometer.ledger import SQLiteLedger, open_store
from tokometer.ledger.read import iter_events
from tokometer.ledger.rollups import ROLLUPS, table_for
from tokometer.ledger.signer import load_signer

START = datetime(2026, 10, 26, tzinfo=UTC)  # a Monday
DAYS = 35
MODELS = [("gpt-4o-mini", "US"), ("deepseek-chat", "CN"), ("claude-sonnet-4", "US"),
          ("qwen-plus", "CN"), ("mistral-large", "FR")]
BASE = Event(id="", time="", duration_ms=10.0, ttft_ms=None, key_id="k", tenant="t", app="a",
             agent=None, task=None, end_user=None, consumer_region=None, api="openai",
             operation="chat", stream=False, provider="p", provider_region="US",
             model_requested="m", model="m", model_origin="US", input_tokens=0,
             cache_read_tokens=0, cache_write_tokens=0, output_tokens=0, reasoning_tokens=0,
             usage_source="reported", counted_input_tokens=None, counted_output_tokens=None,
             cost=None, currency="USD", price_ref=None, status=200, error_type=None,
             finish_reason="stop")


def generated(n: int, seed: int = 7) -> list[Event]:
    """n events over five weeks, with growth for some models so shares move."""
    rnd = random.Random(seed)
    events = []
    for _ in range(n):
        at = START + timedelta(seconds=rnd.randrange(DAYS * 86400))
        week = (at - START).days // 7
        model, origin = rnd.choices(MODELS, weights=[5, 1 + week, 3, 1 + 2 * week, 1])[0]
        inp = rnd.randrange(0, 5000)
        events.append(dataclasses.replace(
            BASE, id=new_event_id(), time=rfc3339(at), model=model, model_origin=origin,
            tenant=rnd.choice(["acme", "globex", "initech"]), app=rnd.choice(["bot", "search"]),
            agent=rnd.choice([None, "planner", "coder"]),
            provider=rnd.choice(["openai", "deepseek", "azure"]),
            provider_region=rnd.choice(["US", "CN", "DE", None]),
            consumer_region=rnd.choice(["DE", "FR", "US", None]),
            input_tokens=inp, cache_read_tokens=rnd.randrange(0, inp + 1),
            output_tokens=rnd.randrange(0, 2000), reasoning_tokens=rnd.randrange(0, 10),
            cost=rnd.choice([None, Decimal(rnd.randrange(0, 10**6)) / 10**8]),
            status=rnd.choice([200, 200, 200, 429, 402])))
    return events


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    work = tmp_path_factory.mktemp("analytics")

    async def fill() -> None:
        ledger = SQLiteLedger(work / "t.db", load_signer(work / "key.pem", None))
        ledger.start()
        await asyncio.gather(*(ledger.append(e) for e in generated(3000)))
        await ledger.close()

    asyncio.run(fill())
    conn = open_store(work / "t.db")
    yield conn
    conn.close()


def truth(conn, keys, since=None, until=None):
    """The same sums worked out in Python over every raw event."""
    out: dict[tuple, dict] = defaultdict(lambda: {"requests": 0, "input_tokens": 0,
                                                  "output_tokens": 0, "cost": Decimal(0)})
    for e in iter_events(conn, since, until):
        e["vendor"] = vendor_of(e["model"]).vendor if vendor_of(e["model"]) else None
        e["day"] = e["time"][:10]
        d = date.fromisoformat(e["day"])
        e["week"] = (d - timedelta(days=d.weekday())).isoformat()
        e["month"] = e["day"][:7]
        acc = out[tuple(e[k] for k in keys)]
        acc["requests"] += 1
        acc["input_tokens"] += e["input_tokens"]
        acc["output_tokens"] += e["output_tokens"]
        acc["cost"] += Decimal(e["cost"] or 0)
    return dict(out)


def as_truth(rows, keys):
    return {tuple(r[k] for k in keys): {"requests": r["requests"],
                                        "input_tokens": r["input_tokens"],
                                        "output_tokens": r["output_tokens"],
                                        "cost": Decimal(r["cost"] or 0)} for r in rows}


def test_rollups_are_far_fewer_rows_than_events(store):
    for name in ROLLUPS:
        days = store.execute(f"SELECT COUNT(*) FROM {name} WHERE period = 'day'").fetchone()[0]
        assert 0 < days < 3000, name


def test_a_report_reads_the_rollup_that_grows_least_with_tenants():
    """Countries and models are few, tenants many: a question that names no tenant never
    reads a per-tenant rollup (at 10M events, rankings by model fell from 86 to 5 ms)."""
    assert table_for({"model_origin"}) == "rollup_flows"
    assert table_for({"model"}) == table_for({"vendor"}) == "rollup_models"
    assert table_for({"tenant", "model"}) == "rollup_tenant_models"
    assert table_for({"app", "agent"}) == "rollup_tenants"
    assert table_for(set()) == "rollup_flows"
    assert table_for({"task"}) is None


@pytest.mark.parametrize(("by", "period", "keys"), [
    (["tenant", "model"], "day", ["day", "tenant", "model"]),
    (["vendor"], "week", ["week", "vendor"]),
    (["app", "agent"], None, ["app", "agent"]),
    (["consumer_region", "model_origin"], "month", ["month", "consumer_region", "model_origin"]),
    (["provider", "provider_region", "model_origin"], "week",
     ["week", "provider", "provider_region", "model_origin"]),
])
def test_report_from_rollups_matches_the_events(store, by, period, keys):
    assert rollup_grain(by, None, None, period) == "day"
    rows = report(store, by, period=period)
    names = (["period"] if period else []) + by
    assert as_truth(rows, names) == truth(store, keys)


def test_hour_aligned_ranges_use_hour_rollups_and_others_scan(store):
    since, until = "2026-11-02T06:00:00.000Z", "2026-11-09T18:00:00.000Z"
    assert rollup_grain(["model"], since, until, None) == "hour"
    assert rollup_grain(["model"], "2026-11-02T06:30:00.000Z", until, None) is None
    assert rollup_grain(["task"], None, None, None) is None
    assert rollup_grain(["agent", "consumer_region"], None, None, None) is None  # no such rollup
    assert as_truth(report(store, ["agent", "consumer_region"]), ["agent", "consumer_region"]) \
        == truth(store, ["agent", "consumer_region"])
    rows = report(store, ["model"], since, until)
    assert as_truth(rows, ["model"]) == truth(store, ["model"], since, until)
    odd = "2026-11-02T06:30:00.000Z"
    assert as_truth(report(store, ["model"], odd, until), ["model"]) == \
        truth(store, ["model"], odd, until)


def test_top_keeps_the_groups_with_most_tokens(store):
    everything = report(store, ["tenant", "app"])
    top = report(store, ["tenant", "app"], top=2)
    ranked = sorted(everything, key=lambda r: -(r["input_tokens"] + r["output_tokens"]))
    assert top == ranked[:2]


def test_rankings_give_each_weeks_share_and_its_change(store):
    today = START.date() + timedelta(days=DAYS - 1)  # in the fifth week
    rows = rankings(store, "vendor", weeks=3, today=today)
    weeks = truth(store, ["week", "vendor"])
    tokens: dict[str, dict] = defaultdict(dict)
    for (week, vendor), acc in weeks.items():
        tokens[week][vendor] = acc["input_tokens"] + acc["output_tokens"]
    shown = sorted({r["week"] for r in rows})
    assert len(shown) == 3 and shown[-1] == (START.date() + timedelta(weeks=4)).isoformat()
    for r in rows:
        week_tokens = tokens[r["week"]]
        before = tokens[(date.fromisoformat(r["week"]) - timedelta(weeks=1)).isoformat()]
        share = week_tokens[r["vendor"]] / sum(week_tokens.values())
        share_before = before.get(r["vendor"], 0) / sum(before.values())
        assert r["tokens"] == week_tokens[r["vendor"]]
        assert r["share"] == pytest.approx(share, abs=1e-6)
        assert r["change_pp"] == pytest.approx((share - share_before) * 100, abs=1e-3)
    deepseek = [r for r in rows if r["vendor"] == "deepseek"]
    assert deepseek and all(r["share"] > 0 for r in deepseek)


def test_flows_match_the_events(store):
    expected = truth(store, ["consumer_region", "provider_region", "model_origin"])
    got = {(r["from"], r["to"], r["model_origin"]): (r["requests"], r["tokens"],
                                                     Decimal(r["cost"] or 0))
           for r in flows(store)}
    assert got == {k: (v["requests"], v["input_tokens"] + v["output_tokens"], v["cost"])
                   for k, v in expected.items()}


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"by": ["nonsense"]}, "cannot group by"),
    ({"by": ["model"], "period": "year"}, "period must be"),
    ({"by": ["model"], "top": 0}, "top must be"),
    ({"by": ["vendor"], "since": "2026-11-02T06:30:00.000Z"}, "vendor is kept in the rollups"),
])
def test_report_refuses_bad_questions(store, kwargs, fragment):
    with pytest.raises(RequestError) as e:
        report(store, **kwargs)
    assert fragment in e.value.message


def test_rankings_refuse_bad_input(store):
    with pytest.raises(RequestError):
        rankings(store, "colour")
    with pytest.raises(RequestError):
        rankings(store, "model", weeks=0)


# --- agent tasks and outcomes, through a real gateway ------------------------------------------

def chat_cost(gw: Gateway, key: str, task: str, agent: str) -> Decimal:
    """What one chat of a task by an agent cost, as the gateway told its client."""
    r = gw.chat("gpt-4o-mini", "x", key=key,
                headers={"x-tokometer-task": task, "x-tokometer-agent": agent})
    assert r.status_code == 200
    return Decimal(r.headers["x-tokometer-cost"])


def test_tasks_outcomes_and_cost_per_success(gateway):
    key, _ = gateway.new_key("task-co", "agents")
    costs = {"t-1": chat_cost(gateway, key, "t-1", "writer") + chat_cost(gateway, key, "t-1",
                                                                         "writer"),
             "t-2": chat_cost(gateway, key, "t-2", "writer"),
             "t-3": chat_cost(gateway, key, "t-3", "reviewer")}
    for task, outcome in (("t-1", "failure"), ("t-1", "success"), ("t-2", "failure"),
                          ("t-3", "success")):
        r = gateway.post("/v1/outcomes", {"task": task, "outcome": outcome, "value": "5"},
                         key=key)
        assert r.status_code == 201, r.text
    conn = open_store(gateway.store)
    try:
        mine = {t["task"]: t for t in tasks(conn) if t["tenant"] == "task-co"}
        per_agent = {a["agent"]: a for a in agents(conn) if a["tenant"] == "task-co"}
    finally:
        conn.close()
    assert {k: (v["requests"], Decimal(v["cost"]), v["outcome"]) for k, v in mine.items()} == {
        "t-1": (2, costs["t-1"], "success"), "t-2": (1, costs["t-2"], "failure"),
        "t-3": (1, costs["t-3"], "success")}
    assert mine["t-1"]["duration_ms"] > 0 and mine["t-1"]["value"] == "5"
    writer = per_agent["writer"]
    assert (writer["tasks"], writer["successes"]) == (2, 1)
    assert Decimal(writer["cost_per_success"]) == costs["t-1"] + costs["t-2"]  # failures count
    assert Decimal(per_agent["reviewer"]["cost_per_success"]) == costs["t-3"]


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"task": "never-seen", "outcome": "success"}, 404, "no requests of task"),
    ({"task": "t-x", "outcome": "great"}, 400, "'outcome' must be one of"),
    ({"outcome": "success"}, 400, "'task' must be"),
    ({"task": "t-x", "outcome": "success", "value": 1.5}, 400, "decimal string"),
    ({"task": "t-x", "outcome": "success", "cost": 1}, 400, "unknown field"),
    (b"{nope", 400, "not valid JSON"),
    ([1], 400, "JSON object"),
])
def test_bad_outcomes_are_refused(gateway, body, status, fragment):
    key, _ = gateway.new_key("outcome-co", "agents")
    chat_cost(gateway, key, "t-x", "a")
    r = gateway.post("/v1/outcomes", body, key=key)
    assert r.status_code == status and fragment in r.json()["error"]["message"]


def test_outcomes_need_the_tasks_own_tenant_and_a_key(gateway):
    key, _ = gateway.new_key("owner-co", "agents")
    chat_cost(gateway, key, "private-task", "a")
    other, _ = gateway.new_key("other-co", "agents")
    done = {"task": "private-task", "outcome": "success"}
    assert gateway.post("/v1/outcomes", done, key=other).status_code == 404
    assert gateway.post("/v1/outcomes", done, key="tkm-bad").status_code == 401


# --- export ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_holds_every_event_exactly(store, tmp_path, fmt):
    out = tmp_path / f"events.{fmt}"
    since = "2026-11-02T00:00:00.000Z"
    assert export(store, fmt, out, since=since) == len(list(iter_events(store, since)))
    raw = list(iter_events(store, since))
    if fmt == "parquet":
        table = pq.read_table(out)
        assert table.schema.field("cost").type.precision == 38
        assert table.schema.field("output_tokens").type == "int64"
        rows = table.to_pylist()
        costs = [r["cost"] for r in rows]
    else:
        with out.open() as f:
            rows = list(csv.DictReader(f))
        costs = [Decimal(r["cost"]) if r["cost"] else None for r in rows]
    assert [r["id"] for r in rows] == [e["id"] for e in raw]
    assert sum(int(r["output_tokens"]) for r in rows) == sum(e["output_tokens"] for e in raw)
    assert sum(c for c in costs if c is not None) == \
        sum(Decimal(e["cost"]) for e in raw if e["cost"] is not None)


# --- charts -------------------------------------------------------------------------------------

def test_charts_draw_the_numbers_they_are_given(store, tmp_path):
    rows = report(store, ["vendor"], period="week")
    report_chart(rows, ["vendor"], "week", tmp_path / "report.svg")
    svg = (tmp_path / "report.svg").read_text()
    assert all(v in svg for v in ("deepseek", "openai", "Tokens by vendor per week"))
    assert all(r["period"] in svg for r in rows)
    ranked = rankings(store, "origin", weeks=3, today=START.date() + timedelta(days=DAYS - 1))
    rankings_chart(ranked, "origin", tmp_path / "rankings.png")
    png = (tmp_path / "rankings.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    flows_chart(flows(store), tmp_path / "flows.svg")
    svg = (tmp_path / "flows.svg").read_text()
    total = sum(r["tokens"] for r in flows(store) if (r["from"], r["to"]) == ("DE", "CN"))
    assert "served in" in svg and f"{total:,}" in svg  # the DE → CN cell shows its tokens


def test_a_chart_needs_png_or_svg(store, tmp_path):
    with pytest.raises(RequestError):
        flows_chart(flows(store), tmp_path / "flows.gif")



def test_rollups_catch_up_from_their_watermark_after_a_restart(tmp_path):
    """Events committed but not yet rolled up when the writer stopped are folded in at start."""
    async def run(events: list[Event], drop_watermark: bool) -> None:
        ledger = SQLiteLedger(tmp_path / "t.db", load_signer(tmp_path / "key.pem", None))
        ledger.start()
        await asyncio.gather(*(ledger.append(e) for e in events))
        await ledger.close()
        if drop_watermark:  # as if killed before the rollups were written
            conn = open_store(tmp_path / "t.db")
            with conn.transaction():
                for name in ROLLUPS:
                    conn.execute(f"DELETE FROM {name}")
                conn.execute("UPDATE ledger_meta SET value = 0 WHERE key = 'rolled_up'")
            conn.close()

    batch = generated(300, seed=11)
    asyncio.run(run(batch[:200], drop_watermark=True))
    asyncio.run(run(batch[200:], drop_watermark=False))
    conn = open_store(tmp_path / "t.db")
    try:
        assert as_truth(report(conn, ["model"]), ["model"]) == truth(conn, ["model"])
    finally:
        conn.close()
