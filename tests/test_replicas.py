"""Many gateway processes, one store: replicas on one PostgreSQL, or `tokometer serve`'s
workers on one SQLite file. Every process appends to the one Merkle log, whose leaf indexes
stay contiguous (no fork, no gap, no duplicate) and whose heads only grow; budgets and rate
limits hold across them."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from conftest import FAKE_KEYS, MODELS_TOML, Gateway, providers_toml, start_gateway, stop_gateway
from processes import cli
from tokometer.config import PostgresURL
from tokometer.ledger import open_store
from tokometer.ledger.read import iter_events


@pytest.fixture
def replicas(upstream, postgres, tmp_path) -> Any:
    """Three `tokometer serve` processes on one PostgreSQL database, signing with the log's
    one key (replicas share it, as they share the store)."""
    url = PostgresURL(postgres.new_database())
    shared_key = f'signing_key = "{tmp_path / "log-key.pem"}"\n'
    started: list[Gateway] = []
    try:
        for i in range(3):
            started.append(start_gateway(tmp_path / f"r{i}", shared_key + providers_toml(upstream)
                                         + MODELS_TOML, env=FAKE_KEYS, store=url))
        yield started
    finally:
        for gw in started:
            stop_gateway(gw)


def _leaves(gw: Gateway) -> list[int]:
    with open_store(gw.store) as store:
        return sorted(e["leaf_index"] for e in iter_events(store))


async def _spread(gateways: list[Gateway], n: int, *, stream: bool = False,
                  stop_after: int | None = None, kill: Callable[[], None] | None = None
                  ) -> list[str]:
    """n requests at once, round robin over the gateways; the ids whose response completed.
    With `stop_after`, `kill` runs once that many have completed (by default: kill -9 of the
    first gateway, supervisor and workers)."""
    completed: list[str] = []

    async def one(client: httpx.AsyncClient, gw: Gateway, i: int) -> None:
        body = {"model": "gpt-4o-mini", "stream": stream,
                "messages": [{"role": "user", "content": f"request {i}"}]}
        try:
            r = await client.post(gw.url + "/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {gw.key}"})
        except httpx.TransportError:
            return  # a killed replica: this response never completed
        if r.status_code == 200 and (not stream or b"[DONE]" in r.content):
            completed.append(r.headers["x-tokometer-event-id"])
            if stop_after is not None and len(completed) == stop_after:
                (kill or (lambda: os.killpg(gateways[0].process.pid, signal.SIGKILL)))()

    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(one(client, gateways[i % len(gateways)], i) for i in range(n)))
    return completed


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_three_replicas_append_to_one_contiguous_log(replicas, stream):
    completed = asyncio.run(_spread(replicas, 60, stream=stream))
    assert len(completed) == 60
    assert _leaves(replicas[0]) == list(range(60))
    audit = cli(replicas[1].config, "ledger", "audit")
    assert audit.returncode == 0 and "audits clean" in audit.stdout, audit.stdout + audit.stderr


def test_a_replica_killed_mid_load_loses_no_acknowledged_event(replicas):
    completed = asyncio.run(_spread(replicas, 90, stop_after=20))
    survivors = replicas[1:]
    with open_store(survivors[0].store) as store:
        stored = {e["id"]: e["leaf_index"] for e in iter_events(store)}
    assert set(completed) <= set(stored)  # every acknowledged event is in the log...
    assert sorted(stored.values()) == list(range(len(stored)))  # ...which has no gap
    assert survivors[0].chat("gpt-4o-mini").status_code == 200  # the others keep serving
    audit = cli(survivors[1].config, "ledger", "audit")
    assert audit.returncode == 0 and "audits clean" in audit.stdout, audit.stdout + audit.stderr


def test_postgresql_restarting_under_load_is_a_503_and_the_gateway_recovers(upstream, tmp_path):
    """Requests keep coming while the server stops and starts again: each gets 200 (and its
    event is in the log) or 503 store_unavailable (and nothing is recorded for it); the log
    has no gap and no duplicate, the budget's spend is the answered requests', and the same
    gateway records again by itself."""
    from postgres import remove, start_cluster

    cluster = start_cluster()  # its own: this test stops it
    gw = None
    try:
        url = PostgresURL(cluster.new_database())
        gw = start_gateway(tmp_path / "g", providers_toml(upstream) + METERED_MODEL
                           + f'[[budgets]]\ntenant = "acme"\nlimit = {1000 * ONE_REQUEST}\n'
                             'unit = "USD"\nperiod = "day"\n', env=FAKE_KEYS, store=url)
        answers = asyncio.run(_under_load(gw, cluster))
        codes = {r.status_code for r in answers}
        assert codes == {200, 503}, codes
        assert all(r.json()["error"]["type"] == "store_unavailable"
                   for r in answers if r.status_code == 503)
        after = gw.chat("metered", max_tokens=300)
        assert after.status_code == 200, after.text  # recovered by itself
        answered = {r.headers["x-tokometer-event-id"] for r in answers if r.status_code == 200}
        refused = {r.headers.get("x-tokometer-event-id") for r in answers
                   if r.status_code == 503} - {None}  # an id: refused after the provider
        with open_store(url) as store:
            events = list(iter_events(store))
        ids = [e["id"] for e in events]
        assert len(ids) == len(set(ids))  # no duplicate
        assert answered | {after.headers["x-tokometer-event-id"]} <= set(ids)
        assert not refused & set(ids)
        assert sorted(e["leaf_index"] for e in events) == list(range(len(events)))  # no gap
        spent = sum((Decimal(e["cost"]) for e in events if e["status"] == 200), Decimal(0))
        assert spent == (len(answered) + 1) * ONE_REQUEST
        with open_store(url) as store:  # what the budget counts: never less than was spent
            (counted,) = store.execute("SELECT decimal_sum(spent) FROM budget_spend").fetchone()
            (held,) = store.execute("SELECT decimal_sum(amount) FROM budget_holds").fetchone()
        assert Decimal(counted) + Decimal(held or 0) >= spent
        audit = cli(gw.config, "ledger", "audit")
        assert audit.returncode == 0 and "audits clean" in audit.stdout, audit.stdout + audit.stderr
    finally:
        if gw is not None:
            stop_gateway(gw)
        remove(cluster)


async def _under_load(gw: Gateway, cluster: Any) -> list[httpx.Response]:
    """Four clients sending metered requests in a loop while the store stops and starts."""
    answers: list[httpx.Response] = []
    stopped = asyncio.Event()
    body = {"model": "metered", "max_tokens": 300,
            "messages": [{"role": "user", "content": "hi"}]}

    async def client(http: httpx.AsyncClient) -> None:
        while not stopped.is_set() or len(answers) < 200:
            answers.append(await http.post(gw.url + "/v1/chat/completions", json=body,
                                           headers={"Authorization": f"Bearer {gw.key}"}))
            if stopped.is_set() and any(r.status_code == 200 for r in answers[-4:]):
                return  # answering again after the restart

    async def restart() -> None:
        while len(answers) < 40:
            await asyncio.sleep(0.01)  # until the load is under way
        await asyncio.to_thread(cluster.stop)
        while sum(r.status_code == 503 for r in answers) < 10:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(cluster.start)
        stopped.set()

    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(restart(), *(client(http) for _ in range(4)))
    return answers


def test_a_revocation_and_a_budget_reach_every_replica_within_seconds(replicas):
    gw = replicas[0]
    key, key_id = gw.new_key(tenant="globex")
    for replica in replicas:  # each replica has looked the key up, and keeps it
        assert replica.chat("gpt-4o-mini", key=key).status_code == 200

    def everywhere(status: int) -> bool:
        start = time.monotonic()
        pending = list(replicas)
        while pending and time.monotonic() < start + 5:
            pending = [r for r in pending if r.chat("gpt-4o-mini", key=key).status_code != status]
            time.sleep(0.05)  # readiness poll: replicas read the store twice a second
        return not pending

    assert cli(gw.config, "budgets", "set", "--tenant", "globex", "--limit", "0",
               "--unit", "tokens", "--period", "day").returncode == 0
    assert everywhere(402)
    assert cli(gw.config, "keys", "revoke", key_id).returncode == 0
    assert everywhere(401)


FREE_INPUT = "{ input = 0, cache_read = 0, cache_write = 0, output = 10 }"
ONE_REQUEST = Decimal(300) * 10 / 1_000_000  # the fixture's 300 output tokens at 10 per 1M
METERED_MODEL = ('[[models]]\nname = "metered"\n'
                 'routes = [{ provider = "fake-openai", model = "gpt-4o-mini-delayed" }]\n'
                 f'price = {FREE_INPUT}\n')


@pytest.fixture(params=["replicas", "workers"])
def sharing(request, upstream, postgres, tmp_path) -> Any:
    """Start gateway processes that share one store, for a config (`server`: more lines of
    its [server] table): three replicas on one PostgreSQL database, or one `tokometer
    serve` with two workers on one SQLite file."""
    started: list[Gateway] = []

    def start(policy: str, server: str = "", models: str = METERED_MODEL) -> list[Gateway]:
        body = providers_toml(upstream) + models + policy
        if request.param == "workers":
            started.append(start_gateway(tmp_path / "w", server + body, env=FAKE_KEYS,
                                         workers=2))
            assert len(worker_pids(started[0])) == 2
        else:
            url = PostgresURL(postgres.new_database())
            for i in range(3):
                started.append(start_gateway(
                    tmp_path / f"r{i}", server + f'signing_key = "{tmp_path / "log-key.pem"}"\n'
                    + body, env=FAKE_KEYS, store=url))
        return started

    try:
        yield start
    finally:
        for gw in started:
            stop_gateway(gw)


def worker_pids(gw: Gateway) -> list[int]:
    """The gateway's worker processes: the children of `tokometer serve`'s supervisor."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == gw.process.pid:
            children.append(int(stat.parent.name))
    return sorted(children)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_budget_holds_across_processes(sharing, stream):
    """60 concurrent requests spread over the processes against a budget worth 10: exactly
    10 answered (each request's worst case is what it costs), the spend exactly the limit."""
    gateways = sharing(f'[[budgets]]\ntenant = "acme"\nlimit = {10 * ONE_REQUEST}\n'
                       'unit = "USD"\nperiod = "day"\n')
    codes = sorted(asyncio.run(_metered(gateways, 60, stream)))
    assert codes.count(200) == 10 and codes.count(402) == 50, codes
    with open_store(gateways[0].store) as store:
        spent = sum((Decimal(e["cost"]) for e in iter_events(store)
                     if e["status"] == 200 and e["cost"]), Decimal(0))
    assert spent == 10 * ONE_REQUEST


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_tpm_limit_holds_across_processes(sharing, stream, o200k):
    """60 concurrent requests against a tokens-per-minute limit with room for 10 of their
    reservations: exactly 10 answered; settled at their actual tokens (more than reserved),
    they fill the minute, so none of the rest slips in, on any process."""
    reserved = 3 + 3 + len(o200k.encode("user")) + len(o200k.encode("hi")) + 300
    gateways = sharing(f'[[limits]]\ntenant = "acme"\ntpm = {10 * reserved + reserved // 2}\n')
    codes = sorted(asyncio.run(_metered(gateways, 60, stream)))
    assert codes.count(200) == 10 and codes.count(429) == 50, codes
    again = gateways[-1].chat("metered", max_tokens=1)
    assert again.status_code == 429 and int(again.headers["retry-after"]) >= 1


def test_two_sqlite_workers_append_to_one_contiguous_log(upstream, tmp_path):
    gw = start_gateway(tmp_path / "w", 'admin_token_env = "TKM_ADMIN"\n' + providers_toml(upstream)
                       + MODELS_TOML, env={**FAKE_KEYS, "TKM_ADMIN": "admin-token"}, workers=2)
    try:
        workers, sent, served = worker_pids(gw), 0, [0.0]
        while min(served) == 0 and sent < 300:  # the kernel picks who accepts: until both did
            assert len(asyncio.run(_spread([gw], 30, stream=True))) == 30
            sent += 30
            served = _saved_requests(workers, sent)
            assert sum(served) == sent, served
        assert min(served) > 0, served
        assert _scraped_requests(gw, sent) == sent  # a scrape adds up both workers' counts
        victim = workers[0]
        completed = asyncio.run(_spread([gw], 90, stop_after=20,
                                        kill=lambda: os.kill(victim, signal.SIGKILL)))
        with open_store(gw.store) as store:
            stored = {e["id"]: e["leaf_index"] for e in iter_events(store)}
        assert set(completed) <= set(stored)  # every acknowledged event is in the log...
        assert sorted(stored.values()) == list(range(len(stored)))  # ...which has no gap
        assert gw.chat("gpt-4o-mini").status_code == 200  # the other worker keeps serving
        audit = cli(gw.config, "ledger", "audit")
        assert audit.returncode == 0 and "audits clean" in audit.stdout, audit.stdout + audit.stderr
    finally:
        stop_gateway(gw)


def _scraped_requests(gw: Gateway, expected: float) -> float:
    """Requests /metrics counts, polled until `expected` (each worker saves its counts for
    the others once a second) or 10 seconds."""
    deadline, counted = time.monotonic() + 10, 0.0
    while counted != expected and time.monotonic() < deadline:
        scrape = gw.get("/metrics", key="admin-token")
        assert scrape.status_code == 200, scrape.text
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in scrape.text.splitlines()
                      if line.startswith("tokometer_requests_total{"))
        time.sleep(0.1)  # readiness poll
    return counted


def _saved_requests(workers: list[int], expected: float) -> list[float]:
    """The requests each worker counted, from what it saves for the others (metrics.Peers),
    polled until they add up to `expected` (each saves once a second) or 10 seconds."""
    deadline, served = time.monotonic() + 10, [0.0]
    while sum(served) != expected and time.monotonic() < deadline:
        served = []
        for pid in workers:
            saved = list(Path(tempfile.gettempdir()).glob(f"tokometer-workers-*/{pid}.json"))
            counts = orjson.loads(saved[0].read_bytes())["requests"] if saved else []
            served.append(sum(float(row[-1]) for row in counts))
        time.sleep(0.1)  # readiness poll
    return served


async def _metered(gateways: list[Gateway], n: int, stream: bool) -> list[int]:
    body = {"model": "metered", "max_tokens": 300, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:
        answers = await asyncio.gather(*(
            client.post(gateways[i % len(gateways)].url + "/v1/chat/completions", json=body,
                        headers={"Authorization": f"Bearer {gateways[i % len(gateways)].key}"})
            for i in range(n)))
    return [r.status_code for r in answers]
