"""Audit of issue 13's shared budgets and rate limits (policy/shared.py) against an oracle
worked out here from the ledger's raw events (`tokometer events --format jsonl`) by the
documented rules: a money budget counts `cost` in its currency, a token budget input + output
tokens, in the UTC calendar period holding the event's `time`; a rate limit's minute counts
the requests it admitted and their input + output tokens.

The load is mixed and concurrent, spread over the processes sharing one store (three
PostgreSQL replicas, or two SQLite workers): whole, streamed with and without
`stream_options.include_usage`, n = 2, a failing provider, clients leaving streams early, the
OpenAI and Anthropic wire formats, models priced by a tariff and by genai-prices; several
budgets at once (USD and tokens; day, week, month, total; tenant, app and key_id; from the
config and set at run time with `tokometer budgets set`) and rate limits (rpm, tpm)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import genai_prices
import httpx
import orjson
import pytest
from genai_prices import data_snapshot

import test_replicas
from conftest import Gateway
from fake_upstream import FIXTURES
from processes import cli
from test_replicas import METERED_MODEL, ONE_REQUEST
from tokometer.config import Scope, config_budget_id
from tokometer.ledger import open_store

ADMIN = "audit-shared-admin"
_T = TypeVar("_T")
sharing = test_replicas.sharing  # the fixture: three replicas, or two workers, on one store
FREE_INPUT = "{ input = 0, cache_read = 0, cache_write = 0, output = 10 }"
CLAUDE_OUT = 393  # what the fake's Anthropic answer reports as output, whole or streamed
ONE_CLAUDE = Decimal(CLAUDE_OUT) * 10 / 1_000_000
MODELS = METERED_MODEL + "".join(
    f'[[models]]\nname = "{name}"\nroutes = [{{ provider = "{provider}", model = "{model}" }}]\n'
    + (f'tokenizer = "tiktoken:o200k_base"\nprice = {FREE_INPUT}\n' if priced else "")
    for name, provider, model, priced in (
        ("metered-claude", "fake-anthropic", "claude-sonnet-5-delayed", True),
        ("metered-fail", "fake-openai", "fail-500", True),
        ("metered-broken", "fake-openai", "broken", True),  # the provider drops the stream
        ("metered-slow", "fake-openai", "slow", True),  # holds its stream till released
        ("metered-resp", "fake-openai", "gpt-4.1-delayed", True),  # the Responses API
        ("metered-text", "fake-openai", "gpt-3.5-turbo-instruct-delayed", True),  # completions
        ("priced", "fake-openai", "gpt-4o-mini", False)))  # genai-prices prices it




@pytest.fixture
def shared(sharing, monkeypatch) -> Any:
    """test_replicas.sharing with an admin token and the audit's models, for a policy."""
    monkeypatch.setenv("AUDIT_ADMIN", ADMIN)
    return lambda policy: sharing(policy, server='admin_token_env = "AUDIT_ADMIN"\n',
                                  models=MODELS)


# --- the oracle ---------------------------------------------------------------------------

def _events(gw: Gateway) -> list[dict[str, Any]]:
    out = cli(gw.config, "events", "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    return [orjson.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _period_start(period: str, at: datetime) -> datetime | None:
    """The UTC calendar period holding `at`, worked out by hand (weeks start on Monday)."""
    day = datetime(at.year, at.month, at.day, tzinfo=UTC)
    return {"day": day, "week": day - timedelta(days=day.weekday()),
            "month": datetime(at.year, at.month, 1, tzinfo=UTC), "total": None}[period]


def _period_end(period: str, at: datetime) -> datetime | None:
    start = _period_start(period, at)
    if start is None:
        return None
    if period == "month":
        return datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
    return start + timedelta(days=1 if period == "day" else 7)


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _oracle(events: list[dict[str, Any]], budget: dict[str, Any]
            ) -> dict[datetime | None, Decimal]:
    """A budget's spend per period, summed by hand from the raw events."""
    sums: dict[datetime | None, Decimal] = defaultdict(Decimal)
    for e in events:
        if e[budget["scope"]] != budget["scope_value"]:
            continue
        if budget["unit"] == "tokens":
            amount = Decimal(e["input_tokens"] + e["output_tokens"])
        elif e["cost"] is None:
            raise AssertionError(f"event {e['id']} has no cost: its reservation is unknown here")
        else:
            amount = Decimal(e["cost"]) if e["currency"] == budget["unit"] else Decimal(0)
        sums[_period_start(budget["period"], _when(e["time"]))] += amount
    return sums


def _spend_rows(gw: Gateway) -> dict[tuple[str, datetime | None], Decimal]:
    with open_store(gw.store) as store:
        rows = store.execute("SELECT budget_id, period_start, spent FROM budget_spend").fetchall()
    return {(b, _when(p) if p else None): Decimal(s) for b, p, s in rows}


def _admitted(e: dict[str, Any]) -> bool:
    return e["status"] not in (402, 429)


# --- the load -----------------------------------------------------------------------------

KINDS = ("whole", "stream_usage", "stream_bare", "n2", "fail", "broken", "leave", "hang_up",
         "claude", "claude_stream", "responses", "responses_stream", "text", "text_stream")
HUNG_UP = 0  # the status _one gives a request whose client hung up before the answer


async def _one(client: httpx.AsyncClient, gw: Gateway, key: str, kind: str) -> int:
    """One request of a kind; its status (a client that leaves early: the stream's)."""
    headers = {"Authorization": f"Bearer {key}"}
    chat = {"model": "metered", "max_tokens": 300,
            "messages": [{"role": "user", "content": f"audit {kind}"}]}
    if kind == "whole":
        body = chat
    elif kind == "stream_usage":
        body = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    elif kind == "stream_bare":
        body = {**chat, "stream": True}
    elif kind == "n2":
        body = {**chat, "n": 2}
    elif kind == "fail":
        body = {**chat, "model": "metered-fail"}
    elif kind == "broken":
        body = {**chat, "model": "metered-broken", "stream": True}
    elif kind == "priced":
        body = {**chat, "model": "priced"}
    elif kind == "priced_stream":
        body = {**chat, "model": "priced", "stream": True,
                "stream_options": {"include_usage": True}}
    else:
        body = None
    if kind.startswith("claude"):
        claude = {"model": "metered-claude", "max_tokens": CLAUDE_OUT,
                  "messages": [{"role": "user", "content": "audit claude"}],
                  "stream": kind == "claude_stream"}
        r = await client.post(gw.url + "/v1/messages", json=claude,
                              headers={**headers, "anthropic-version": "2023-06-01"})
        return r.status_code
    if kind.startswith("responses"):
        r = await client.post(gw.url + "/v1/responses", headers=headers, json={
            "model": "metered-resp", "input": "audit", "max_output_tokens": 300,
            "stream": kind.endswith("stream")})
        return r.status_code
    if kind.startswith("text"):
        r = await client.post(gw.url + "/v1/completions", headers=headers, json={
            "model": "metered-text", "prompt": "audit", "max_tokens": 300,
            "stream": kind.endswith("stream"), **({"stream_options": {"include_usage": True}}
                                                  if kind.endswith("stream") else {})})
        return r.status_code
    if kind == "leave":
        async with client.stream("POST", gw.url + "/v1/chat/completions",
                                 json={**chat, "model": "metered-slow", "stream": True},
                                 headers=headers) as r:
            async for _ in r.aiter_raw():
                break  # the client leaves after the first bytes
            return r.status_code
    if kind == "hang_up":  # the provider takes 0.2 s to answer; the client waits 0.05 s
        try:  # for the answer: its request surely sent (a busy machine may take 0.05 s to
            # connect, and a request never sent is no event)
            r = await client.post(gw.url + "/v1/chat/completions", json=chat, headers=headers,
                                  timeout=httpx.Timeout(10, read=0.05))
        except httpx.TimeoutException:
            return HUNG_UP
        assert r.status_code == 402, r.text  # refused at once; an answer takes 0.2 s
        return r.status_code
    assert body is not None
    r = await client.post(gw.url + "/v1/chat/completions", json=body, headers=headers)
    return r.status_code


async def _load(jobs: list[tuple[Gateway, str, str]]) -> list[int]:
    limits = httpx.Limits(max_connections=len(jobs))
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return list(await asyncio.gather(*(_one(client, gw, key, kind)
                                           for gw, key, kind in jobs)))


def _wait_settled(gw: Gateway, events: int, timeout: float = 15) -> None:
    """Until the store holds `events` events and no budget hold: every request ended and
    settled (a stream's event is recorded after its last byte, a leaver's once noticed)."""
    deadline = time.monotonic() + timeout
    while True:
        with open_store(gw.store) as store:
            (n,) = store.execute("SELECT COUNT(*) FROM events").fetchone()
            (held,) = store.execute("SELECT COUNT(*) FROM budget_holds").fetchone()
        if n >= events and held == 0:
            return
        assert time.monotonic() < deadline, f"{n} of {events} events, {held} holds left"
        time.sleep(0.05)  # readiness poll of other processes' writers


def _taken_up(gateways: list[Gateway], probe_key: str) -> int:
    """Until every process refuses the probe key (a budget of 0 set after the others), so has
    taken up the budgets set before it; the number of probes sent (each is an event)."""
    sent = 0
    for gw in gateways:
        streak, deadline = 0, time.monotonic() + 10
        while streak < 8:  # workers: the kernel picks who answers, so several in a row
            sent += 1
            status = gw.chat("metered", key=probe_key, max_tokens=1).status_code
            streak = streak + 1 if status == 402 else 0
            assert time.monotonic() < deadline, "a process never took the budgets up"
            if status != 402:
                time.sleep(0.05)  # readiness poll: processes read the store twice a second
    return sent


def _set(gw: Gateway, *args: str) -> None:
    out = cli(gw.config, "budgets", "set", *args)
    assert out.returncode == 0, out.stdout + out.stderr


# --- the checks ---------------------------------------------------------------------------

ACME_DAY = 20  # requests' worth: the binding budget
BATCH_KEY_MONTH = 5


def _policy() -> str:
    return (f'[[budgets]]\ntenant = "acme"\nlimit = {ACME_DAY * ONE_REQUEST}\nunit = "USD"\n'
            'period = "day"\n'
            '[[budgets]]\napp = "tests"\nlimit = 10000000\nunit = "tokens"\nperiod = "week"\n'
            '[[budgets]]\ntenant = "globex"\nlimit = 1000\nunit = "USD"\nperiod = "total"\n'
            '[[limits]]\ntenant = "globex"\nrpm = 1000\ntpm = 10000000\n'
            '[[limits]]\napp = "batch"\ntpm = 10000000\n'
            '[[limits]]\napp = "tests"\nrpm = 1000\n')


def test_mixed_load_spend_equals_the_events_sums(shared, upstream):
    """Seven budgets (USD and tokens; day, week, month, total; tenant, app and key_id; three
    from the config, four set with `tokometer budgets set`, one of them the probe's) and three
    limits (rpm, tpm) under a mixed load of 102 requests from three consumers spread over the
    processes. Once it is over:
    no hold is left; every budget_spend row equals the oracle's sum for its budget and period,
    exactly; the binding money budgets never pass their limits (here each request's worst
    case is at least its cost); each limit's minute in rate_seconds counts exactly the
    requests its scope admitted and their input + output tokens; `budgets status` and every
    process's GET /admin/budgets say the oracle's spend, nothing reserved and the rest left;
    each event's cost is its tariff by hand or genai-prices' calculator; `tokometer report`
    equals the raw events."""
    gateways = shared(_policy())
    gw = gateways[0]
    batch_key, batch_id = gw.new_key(tenant="acme", app="batch")
    globex_key, _ = gw.new_key(tenant="globex", app="tests")
    probe_key, probe_id = gw.new_key(tenant="probe", app="probe")
    _set(gw, "--key-id", batch_id, "--limit", str(BATCH_KEY_MONTH * ONE_REQUEST), "--unit",
         "USD", "--period", "month")
    _set(gw, "--app", "batch", "--limit", "10000000", "--unit", "tokens", "--period", "total")
    _set(gw, "--tenant", "globex", "--limit", "10000000", "--unit", "tokens", "--period",
         "month")
    _set(gw, "--key-id", probe_id, "--limit", "0", "--unit", "tokens", "--period", "day")
    probes = _taken_up(gateways, probe_key)

    consumers = [(None, 3, KINDS), (batch_key, 2, KINDS),
                 (globex_key, 2, (*KINDS, "priced", "priced_stream"))]
    jobs = []
    for key, times, kinds in consumers:
        for kind in kinds:
            for _ in range(times):
                target = gateways[len(jobs) % len(gateways)]
                jobs.append((target, key or target.key, kind))
    upstream.release_slow.clear()  # "slow" streams hang after two events until set
    try:
        codes = asyncio.run(_load(jobs))
        upstream.release_slow.set()  # the streams their clients left go on, and end
        _wait_settled(gw, len(jobs) + probes)
    finally:
        upstream.release_slow.set()  # as the other tests leave it
    assert set(codes) <= {HUNG_UP, 200, 402, 500, 502}, codes
    assert 402 in codes  # the acme budget binds

    events = _events(gw)
    assert len(events) == len(jobs) + probes
    assert all(e["cost"] is not None for e in events if _admitted(e))
    kinds = {(e["model_requested"], e["stream"], e["status"]) for e in events}
    assert {("metered-slow", True, 499), ("metered-fail", False, 500), ("priced", True, 200),
            ("metered-claude", True, 200), ("metered-broken", True, 502),
            ("metered-resp", True, 200), ("metered-text", True, 200)} <= kinds, kinds
    budgets = _statuses_cli(gw)
    assert len(budgets) == 7, budgets
    rows = _spend_rows(gw)
    for b in budgets:
        expected = _oracle(events, b)
        found = {period: spent for (budget_id, period), spent in rows.items()
                 if budget_id == b["budget_id"]}
        if b["scope_value"] != probe_id and any(  # the probe's refuses all: never started
                _admitted(e) and e[b["scope"]] == b["scope_value"] for e in events):
            assert found, b  # a request admitted under a budget started its period
        for period, spent in found.items():  # a period with no row is not started yet
            assert spent == expected.get(period, Decimal(0)), (
                b["budget_id"], b["scope"], b["scope_value"], b["unit"], period,
                spent, expected.get(period))
    acme = config_budget_id(Scope("tenant", "acme"), "USD", "day")
    day = _period_start("day", datetime.now(UTC))
    assert rows[acme, day] <= ACME_DAY * ONE_REQUEST
    batch = next(b["budget_id"] for b in budgets if b["scope"] == "key_id"
                 and b["scope_value"] == batch_id)
    month = _period_start("month", datetime.now(UTC))
    assert rows.get((batch, month), Decimal(0)) <= BATCH_KEY_MONTH * ONE_REQUEST

    seconds = _rate_seconds(gw)
    for scope, value in (("tenant", "globex"), ("app", "batch"), ("app", "tests")):
        mine = [e for e in events if e[scope] == value and _admitted(e)]
        assert seconds.get(f"{scope}:{value}", (0, 0)) == (
            len(mine), sum(e["input_tokens"] + e["output_tokens"] for e in mine)), (scope, value)
    _check_statuses(gateways, events)
    _check_costs(events)
    _check_report(gw, events, "tenant,app,key_id,model_requested,stream,status")
    _check_report(gw, events, "api,provider,model,usage_source,currency", period="hour")


def _check_statuses(gateways: list[Gateway], events: list[dict[str, Any]]) -> None:
    """`budgets status --json` and `GET /admin/budgets` of every process (several times on
    workers: the kernel picks which answers) say what the oracle says of the current period:
    spent its sum, nothing reserved, remaining the limit less the sum."""
    now = datetime.now(UTC)
    views = [("cli", _statuses_cli(gateways[0]))]
    for gw in gateways * (4 if len(gateways) == 1 else 1):
        r = gw.get("/admin/budgets", key=ADMIN)
        assert r.status_code == 200, r.text
        views.append((gw.url, r.json()["data"]))
    for where, view in views:
        assert len(view) == 7, (where, view)
        for b in view:
            spent = _oracle(events, b).get(_period_start(b["period"], now), Decimal(0))
            left = max(Decimal(b["limit"]) - spent, Decimal(0))
            assert (Decimal(b["spent"]), Decimal(b["reserved"]), Decimal(b["remaining"])) == (
                spent, 0, left), (where, b)
            start = _period_start(b["period"], now)
            assert (_when(b["period_start"]) if b["period_start"] else None) == start
            assert (_when(b["resets"]) if b["resets"] else None) == _period_end(b["period"], now)


def _check_costs(events: list[dict[str, Any]]) -> None:
    """The costs the budgets sum: output at 10 per 1M on the tariff models (input free), and
    genai-prices' own calculator on the fake's usage for the model it prices."""
    usage = orjson.loads((FIXTURES / "openai_chat.json").read_bytes())["usage"]
    reading = data_snapshot.get_snapshot().extract_usage(
        {"model": "gpt-4o-mini", "usage": usage}, provider_id="openai", api_flavor="chat").usage
    priced = 0
    for e in events:
        if not _admitted(e):
            assert Decimal(e["cost"]) == 0, e
        elif e["model_requested"] == "priced":
            at = _when(e["time"])
            expected = genai_prices.calc_price(reading, e["model"], provider_id="openai",
                                               genai_request_timestamp=at).total_price
            assert (e["input_tokens"], e["cache_read_tokens"], e["output_tokens"]) == (
                reading.input_tokens, reading.cache_read_tokens, reading.output_tokens)
            assert Decimal(e["cost"]) == expected, (e, expected)
            priced += 1
        else:
            assert Decimal(e["cost"]) == Decimal(e["output_tokens"]) * 10 / 1_000_000, e
    assert priced >= 2


def _hour(text: str) -> datetime:
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _check_report(gw: Gateway, events: list[dict[str, Any]], by: str,
                  period: str | None = None) -> None:
    """`tokometer report` (from the rollups the processes derive once) equals the raw
    events' sums, group by group (and UTC hour)."""
    gw.wait_rolled_up()
    out = cli(gw.config, "report", "--by", by, "--format", "json",
              *(["--period", period] if period else []))
    assert out.returncode == 0, out.stderr
    rows = orjson.loads(out.stdout)
    fields = by.split(",")

    def key(row: dict[str, Any], hour: str | None) -> tuple[Any, ...]:
        return (*(row[f] for f in fields), *([_hour(hour)] if hour else []))

    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        groups[key(e, e["time"] if period else None)].append(e)
    assert sum(row["requests"] for row in rows) == len(events)
    assert len(rows) == len(groups)
    for row in rows:
        mine = groups[key(row, row["period"] if period else None)]
        assert row["requests"] == len(mine), row
        for field in ("input_tokens", "cache_read_tokens", "cache_write_tokens",
                      "output_tokens", "reasoning_tokens"):
            assert row[field] == sum(e[field] for e in mine), (row, field)
        assert Decimal(row["cost"]) == sum((Decimal(e["cost"]) for e in mine), Decimal(0)), row


def _rate_seconds(gw: Gateway) -> dict[str, tuple[int, int]]:
    with open_store(gw.store) as store:
        rows = store.execute("SELECT limit_name, SUM(requests), SUM(tokens) FROM rate_seconds "
                             "GROUP BY limit_name").fetchall()
    return {name: (int(n), int(t)) for name, n, t in rows}


def _statuses_cli(gw: Gateway) -> list[dict[str, Any]]:
    out = cli(gw.config, "budgets", "status", "--json")
    assert out.returncode == 0, out.stderr
    text = out.stdout.strip()
    if text.startswith("["):
        return orjson.loads(text)
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


async def _identical(pairs: list[tuple[Gateway, str]], stream_every: int = 2) -> list[int]:
    """One metered request (300 output tokens, what it reserves, at 10 per 1M) per
    (process, key), all at once; every `stream_every`-th streamed with its usage."""
    async with httpx.AsyncClient(timeout=60,
                                 limits=httpx.Limits(max_connections=len(pairs))) as client:
        return list(await asyncio.gather(*(
            _one(client, gw, key, "stream_usage" if i % stream_every else "whole")
            for i, (gw, key) in enumerate(pairs))))


def _spread_over(gateways: list[Gateway], keys: list[str]) -> list[tuple[Gateway, str]]:
    return [(gateways[i % len(gateways)], key) for i, key in enumerate(keys)]


def test_identical_requests_are_admitted_exactly_as_two_budgets_allow(shared):
    """Each request's worst case is exactly what it costs, so the admitted counts are known
    by hand: a key budget set at run time worth 7 admits 7 of 30 concurrent requests of its
    key; then, of 30 more (15 of that key, 15 of another key of the tenant), the tenant's
    config budget worth 20 admits the 13 it has left, all of the other key's; 402 for the
    40 others. Both budgets' spend is then exactly their limit."""
    gateways = shared(f'[[budgets]]\ntenant = "acme"\nlimit = {20 * ONE_REQUEST}\n'
                      'unit = "USD"\nperiod = "day"\n')
    gw = gateways[0]
    batch_key, batch_id = gw.new_key(tenant="acme", app="batch")
    probe_key, probe_id = gw.new_key(tenant="probe", app="probe")
    _set(gw, "--key-id", batch_id, "--limit", str(7 * ONE_REQUEST), "--unit", "USD",
         "--period", "month")
    _set(gw, "--key-id", probe_id, "--limit", "0", "--unit", "tokens", "--period", "day")
    _taken_up(gateways, probe_key)

    first = asyncio.run(_identical(_spread_over(gateways, [batch_key] * 30)))
    assert (first.count(200), first.count(402)) == (7, 23), first
    other, _ = gw.new_key(tenant="acme", app="tests")
    second = asyncio.run(_identical(_spread_over(gateways, [batch_key, other] * 15)))
    assert [c for i, c in enumerate(second) if i % 2 == 0] == [402] * 15, second
    assert sorted(c for i, c in enumerate(second) if i % 2) == [200] * 13 + [402] * 2, second

    with open_store(gw.store) as store:
        (held,) = store.execute("SELECT COUNT(*) FROM budget_holds").fetchone()
    assert held == 0
    rows = _spend_rows(gw)
    now = datetime.now(UTC)
    acme = config_budget_id(Scope("tenant", "acme"), "USD", "day")
    assert rows[acme, _period_start("day", now)] == 20 * ONE_REQUEST
    batch = [s for (b, p), s in rows.items() if b not in (acme,)
             and p == _period_start("month", now)]
    assert batch == [7 * ONE_REQUEST], rows


def test_rpm_admits_exactly_its_limit_over_the_processes(shared):
    """An rpm limit of 7 and 20 concurrent requests spread over the processes: exactly 7
    answered, 13 refused with 429 and Retry-After; rate_seconds counts the 7 and their
    reported tokens; a request after them is refused too, on every process."""
    gateways = shared('[[limits]]\ntenant = "initech"\nrpm = 7\n')
    key, _ = gateways[0].new_key(tenant="initech", app="tests")
    codes = asyncio.run(_identical(_spread_over(gateways, [key] * 20)))
    assert (codes.count(200), codes.count(429)) == (7, 13), codes
    for gw in gateways:
        again = gw.chat("metered", key=key, max_tokens=300)
        assert again.status_code == 429 and int(again.headers["retry-after"]) >= 1, again.text
    _wait_settled(gateways[0], 20 + len(gateways))  # every request's event is stored
    events = [e for e in _events(gateways[0]) if e["tenant"] == "initech"]
    admitted = [e for e in events if _admitted(e)]
    assert len(admitted) == 7
    assert _rate_seconds(gateways[0])["tenant:initech"] == (
        7, sum(e["input_tokens"] + e["output_tokens"] for e in admitted))


def _corrected_load(shared: Any) -> tuple[list[Gateway], str, Decimal]:
    """12 requests spread over the processes, and a correction posted to the last process
    for an event another recorded; the processes, the id of a budget (app "tests", USD per
    week, set through the admin API before the load) and its spend by the oracle."""
    gateways = shared(f'[[budgets]]\ntenant = "acme"\nlimit = {1000 * ONE_REQUEST}\n'
                      'unit = "USD"\nperiod = "day"\n'
                      '[[budgets]]\ntenant = "acme"\nlimit = 10000000\nunit = "tokens"\n'
                      'period = "month"\n')
    gw = gateways[0]
    r = gw.request("PUT", "/admin/budgets", {"app": "tests", "limit": "1", "unit": "USD",
                                             "period": "week"}, key=ADMIN)
    assert r.status_code == 200, r.text
    week_id = r.json()["budget_id"]
    probe_key, probe_id = gw.new_key(tenant="probe", app="probe")
    _set(gw, "--key-id", probe_id, "--limit", "0", "--unit", "tokens", "--period", "day")
    probes = _taken_up(gateways, probe_key)
    pairs = [(g, g.key) for g in gateways] * 12
    codes = asyncio.run(_identical(pairs[:12]))
    assert codes == [200] * 12, codes
    _wait_settled(gw, 12 + probes)
    original = next(e for e in _events(gw) if e["tenant"] == "acme")
    fixed = gateways[-1].post("/admin/corrections", {
        "event_id": original["id"], "reason": "audit", "output_tokens": 7,
        "cost": "0.00007"}, key=ADMIN)
    assert fixed.status_code == 201, fixed.text
    _wait_settled(gw, 12 + probes + 1)
    week = next(b for b in _statuses_cli(gw) if b["budget_id"] == week_id)
    spent = _oracle(_events(gw), week)[_period_start("week", datetime.now(UTC))]
    assert spent == 12 * ONE_REQUEST + Decimal("0.00007")
    return gateways, week_id, spent


def test_a_correction_on_one_process_keeps_the_shared_books(shared):
    """A correction posted to one process for an event another recorded: every budget_spend
    row (day, month and week; tenant and app; USD and tokens; config and admin API) still
    equals the events' sums, and `budgets status` and GET /admin/budgets say so."""
    gateways, week_id, spent = _corrected_load(shared)
    gw = gateways[0]
    events = _events(gw)
    rows = _spend_rows(gw)
    budgets = _statuses_cli(gw)
    for b in budgets:
        found = [(p, s) for (i, p), s in rows.items() if i == b["budget_id"]]
        if b["scope"] != "key_id":  # the probe's budget refuses all: never started
            assert found, b
        for period, row in found:
            assert row == _oracle(events, b).get(period, Decimal(0)), (b, row)
    assert Decimal(next(b for b in budgets if b["budget_id"] == week_id)["spent"]) == spent
    for g in gateways:
        r = g.get("/admin/budgets", key=ADMIN)
        assert r.status_code == 200, r.text
        assert Decimal(next(b for b in r.json()["data"]
                            if b["budget_id"] == week_id)["spent"]) == spent


@pytest.mark.parametrize("sharing", ["replicas"], indirect=True)  # workers: see below
def test_the_admin_api_answers_a_budget_change_with_the_shared_spend(shared):
    """PUT /admin/budgets answers with the budget's status as ONE process sees it (the spend
    it had when it took the budget up plus what its own requests settled), not the store's:
    after 12 requests of 0.003 USD spread over the processes and a correction of 0.00007 on
    another process, the answer to a limit change said 0.012 or 0.01207 spent (replicas: the
    4 requests the answering replica served) and 0.012 or 0.024 (workers: the answering
    worker's share) where the store, GET /admin/budgets and `budgets status` all say
    0.03607: short by 0.012 to 0.024 USD (a third to two thirds of the spend); `remaining`
    too high by the same amount, `reserved` only the answering process's. An operator who
    raises or lowers a limit through the API is told the tenant has far more left than it
    has. On two workers the answer depends on which worker the kernel hands the PUT and how
    many requests it served (it would be right by luck if one served them all), so the test
    runs on replicas, where the answering one served exactly 4."""
    gateways, week_id, spent = _corrected_load(shared)
    changed = gateways[0].request("PUT", "/admin/budgets", {
        "app": "tests", "limit": "2", "unit": "USD", "period": "week"}, key=ADMIN)
    assert changed.status_code == 200, changed.text
    answer = changed.json()
    assert answer["budget_id"] == week_id
    assert (Decimal(answer["spent"]), Decimal(answer["remaining"])) == (
        spent, 2 - spent), answer


def test_in_flight_reservations_are_the_store_wide_worst_cases(shared, upstream, o200k):
    """9 streams spread over the processes, held by the provider: while they run, every
    process's GET /admin/budgets and `budgets status` report 9 worst cases reserved (USD:
    300 output tokens at 10 per 1M; tokens: the chat's input by OpenAI's published accounting
    with tiktoken itself, plus 300) and nothing spent, and the tpm limit's minute holds 9
    requests of those tokens; once they end, nothing is reserved, the spend and the minute's
    tokens are the events' sums."""
    gateways = shared('[[budgets]]\napp = "tests"\nlimit = 1\nunit = "USD"\nperiod = "week"\n'
                      '[[budgets]]\napp = "tests"\nlimit = 10000000\nunit = "tokens"\n'
                      'period = "total"\n[[limits]]\napp = "tests"\ntpm = 10000000\n')
    worst_tokens = 3 + 3 + len(o200k.encode("user")) + len(o200k.encode("hold")) + 300
    worst = {"USD": 300 * Decimal(10) / 1_000_000, "tokens": Decimal(worst_tokens)}
    body = {"model": "metered-slow", "max_tokens": 300, "stream": True,
            "messages": [{"role": "user", "content": "hold"}]}

    def held() -> int:
        with open_store(gateways[0].store) as store:
            return store.execute("SELECT COUNT(*) FROM budget_holds").fetchone()[0]

    def while_held() -> list[tuple[str, list[dict[str, Any]]]]:
        deadline = time.monotonic() + 15
        while held() < 18:  # 9 requests, 2 budgets
            assert time.monotonic() < deadline, held()
            time.sleep(0.05)  # readiness poll of the processes' reservations
        views = [("cli", _statuses_cli(gateways[0]))]
        for gw in gateways * (4 if len(gateways) == 1 else 1):
            views.append((gw.url, gw.get("/admin/budgets", key=ADMIN).json()["data"]))
        views.append(("rate", [dict(zip(("requests", "tokens"),
                                        _rate_seconds(gateways[0])["app:tests"],
                                        strict=True))]))
        return views

    async def run() -> list[tuple[str, list[dict[str, Any]]]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=9)) as c:
            tasks = _spread(c, gateways, body, 9)
            try:
                views = await asyncio.to_thread(while_held)
            finally:
                upstream.release_slow.set()
            assert await asyncio.gather(*tasks) == [200] * 9
            return views

    views = _held(upstream, run, gateways[0], 9)
    for where, view in views[:-1]:
        assert {(b["unit"], Decimal(b["spent"]), Decimal(b["reserved"])) for b in view} == {
            (unit, Decimal(0), 9 * amount) for unit, amount in worst.items()}, (where, view)
    assert views[-1][1] == [{"requests": 9, "tokens": 9 * worst_tokens}]
    events = _events(gateways[0])
    assert len(events) == 9
    for b in _statuses_cli(gateways[0]):
        spent = _oracle(events, b)[_period_start(b["period"], datetime.now(UTC))]
        assert (Decimal(b["spent"]), Decimal(b["reserved"])) == (spent, 0), b
    assert _rate_seconds(gateways[0])["app:tests"] == (
        9, sum(e["input_tokens"] + e["output_tokens"] for e in events))


def _held(upstream: Any, run: Callable[[], Coroutine[Any, Any, _T]], gw: Gateway,
          events: int) -> _T:
    """`run`, the fake provider holding its "slow" streams after two events until `run`
    lets them go; then until the store holds `events` events and no budget hold."""
    upstream.release_slow.clear()
    try:
        result = asyncio.run(run())
        _wait_settled(gw, events)
    finally:
        upstream.release_slow.set()  # as the other tests leave it
    return result


def _spread(client: httpx.AsyncClient, gateways: list[Gateway], body: dict[str, Any],
            count: int) -> list[asyncio.Future[int]]:
    """`count` requests of `body` under way, spread over the processes; each ends with its
    status once its answer (a stream) has been read to its end."""
    async def one(gw: Gateway) -> int:
        async with client.stream("POST", gw.url + "/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {gw.key}"}) as r:
            await r.aread()
            return r.status_code
    return [asyncio.ensure_future(one(gateways[i % len(gateways)])) for i in range(count)]


def test_a_token_budget_admits_exactly_the_worst_cases_it_can_hold(shared, upstream, o200k):
    """12 streams at once, spread over the processes, held by the provider until all have
    asked, against a token budget (app, per day) with room for 5.5 of their worst cases
    (input counted by OpenAI's published chat accounting with tiktoken itself, plus 300):
    exactly 5 admitted, 7 refused with 402; the provider sends no usage, so the reading is the
    recount, within the worst case, and the spend is the events' sum, within the limit."""
    worst = 3 + 3 + len(o200k.encode("user")) + len(o200k.encode("hold")) + 300
    limit = 5 * worst + worst // 2
    gateways = shared(f'[[budgets]]\napp = "tests"\nlimit = {limit}\nunit = "tokens"\n'
                      'period = "day"\n')
    body = {"model": "metered-slow", "max_tokens": 300, "stream": True,
            "messages": [{"role": "user", "content": "hold"}]}

    def held() -> int:
        with open_store(gateways[0].store) as store:
            return store.execute("SELECT COUNT(*) FROM budget_holds").fetchone()[0]

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=12)) as c:
            tasks = _spread(c, gateways, body, 12)
            try:
                deadline = time.monotonic() + 15
                while sum(t.done() for t in tasks) < 7 or await asyncio.to_thread(held) < 5:
                    assert time.monotonic() < deadline, ([t.done() for t in tasks], held())
                    await asyncio.sleep(0.05)  # readiness poll: the refusals and the holds
            finally:
                upstream.release_slow.set()
            return list(await asyncio.gather(*tasks))

    codes = _held(upstream, run, gateways[0], 12)
    assert sorted(codes) == [200] * 5 + [402] * 7, codes
    events = _events(gateways[0])
    admitted = [e for e in events if _admitted(e)]
    assert len(admitted) == 5
    assert all(e["input_tokens"] + e["output_tokens"] <= worst for e in admitted), admitted
    (budget,) = _statuses_cli(gateways[0])
    day = _period_start("day", datetime.now(UTC))
    spent = _oracle(events, budget)[day]
    assert _spend_rows(gateways[0])[budget["budget_id"], day] == spent <= limit
    assert Decimal(budget["spent"]) == spent


@pytest.mark.parametrize("sharing", ["replicas"], indirect=True)  # workers: see below
def test_a_refusal_for_a_request_too_big_says_what_is_left_across_processes(shared):
    """A budget worth 10 requests (0.03 USD), 8 of them spent over three replicas: a request
    whose worst case is 3 (0.009) should be refused as one gateway refuses it, "cannot cover
    this request ... more than the 0.006 left; lower max_tokens or n". The replica whose own
    view has room sends it to the store, which refuses it as "exhausted: 0.024 spent and 0
    reserved of 0.03 USD; it resets at <midnight>": the budget is not exhausted (0.006, a
    fifth of it, is left, and the next request, of worst case 2, is answered), and a client
    told so waits for the reset instead of lowering max_tokens. On two workers the message
    depends on whether the answering worker served the 8 itself (then its own view refuses
    properly), so the test runs on replicas, where each served fewer."""
    gateways = shared(f'[[budgets]]\ntenant = "acme"\nlimit = {10 * ONE_REQUEST}\n'
                      'unit = "USD"\nperiod = "day"\n')
    codes = asyncio.run(_identical([(g, g.key) for g in gateways * 8][:8]))
    assert codes == [200] * 8, codes
    _wait_settled(gateways[0], 8)
    for gw in gateways:
        big = gw.chat("metered", max_tokens=900)
        assert big.status_code == 402, big.text
        message = big.json()["error"]["message"]
        assert "lower max_tokens" in message and "0.006 left" in message, message
    assert gateways[-1].chat("metered", max_tokens=600).status_code == 200
