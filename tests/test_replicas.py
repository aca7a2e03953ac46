"""Many gateways, one PostgreSQL store: every replica appends to the one Merkle log, whose
leaf indexes stay contiguous (no fork, no gap, no duplicate) and whose heads only grow."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from decimal import Decimal
from typing import Any

import httpx
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
                  stop_after: int | None = None) -> list[str]:
    """n requests at once, round robin over the replicas; the ids whose response completed.
    With `stop_after`, the first replica is killed (kill -9) once that many have completed."""
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
                os.killpg(gateways[0].process.pid, signal.SIGKILL)

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


def test_postgresql_restarting_is_a_503_and_the_gateway_recovers_by_itself(upstream, tmp_path):
    """The server stopped: requests get 503 store_unavailable (nothing answered as if it
    were recorded); started again, the same gateway records again, with no gap in the log."""
    from postgres import remove, start_cluster

    cluster = start_cluster()  # its own: this test stops it
    gw = None
    try:
        gw = start_gateway(tmp_path / "g", providers_toml(upstream) + MODELS_TOML,
                           env=FAKE_KEYS, store=PostgresURL(cluster.new_database()))
        before = gw.chat("gpt-4o-mini")
        assert before.status_code == 200
        cluster.stop()
        refused = gw.chat("gpt-4o-mini")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "store_unavailable"
        cluster.start()
        after = gw.chat("gpt-4o-mini")
        assert after.status_code == 200, after.text
        with open_store(gw.store) as store:
            ids = {e["id"]: e["leaf_index"] for e in iter_events(store)}
        assert before.headers["x-tokometer-event-id"] in ids
        assert after.headers["x-tokometer-event-id"] in ids
        assert refused.headers["x-tokometer-event-id"] not in ids
        assert sorted(ids.values()) == list(range(len(ids)))
    finally:
        if gw is not None:
            stop_gateway(gw)
        remove(cluster)


def test_a_revocation_and_a_budget_reach_every_replica_within_seconds(replicas):
    gw = replicas[0]
    key, key_id = gw.new_key(tenant="globex")
    for replica in replicas:  # each replica has looked the key up, and keeps it
        assert replica.chat("gpt-4o-mini", key=key).status_code == 200

    def everywhere(status: int) -> bool:
        deadline = time.monotonic() + 5
        pending = list(replicas)
        while pending and time.monotonic() < deadline:
            pending = [r for r in pending if r.chat("gpt-4o-mini", key=key).status_code != status]
            time.sleep(0.1)  # readiness poll: replicas read the store about once a second
        return not pending

    assert cli(gw.config, "budgets", "set", "--tenant", "globex", "--limit", "0",
               "--unit", "tokens", "--period", "day").returncode == 0
    assert everywhere(402)
    assert cli(gw.config, "keys", "revoke", key_id).returncode == 0
    assert everywhere(401)


FREE_INPUT = "{ input = 0, cache_read = 0, cache_write = 0, output = 10 }"
ONE_REQUEST = Decimal(300) * 10 / 1_000_000  # the fixture's 300 output tokens at 10 per 1M


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_budget_holds_across_replicas(upstream, postgres, tmp_path, stream):
    """60 concurrent requests spread over 3 replicas against a budget worth 10: the spend
    stays within the limit (each request's worst case is what it costs)."""
    url = PostgresURL(postgres.new_database())
    body = (f'signing_key = "{tmp_path / "log-key.pem"}"\n' + providers_toml(upstream)
            + f'[[models]]\nname = "metered"\n'
              f'routes = [{{ provider = "fake-openai", model = "gpt-4o-mini-delayed" }}]\n'
              f'price = {FREE_INPUT}\n'
            + f'[[budgets]]\ntenant = "acme"\nlimit = {10 * ONE_REQUEST}\nunit = "USD"\n'
              'period = "day"\n')
    started = []
    try:
        for i in range(3):
            started.append(start_gateway(tmp_path / f"r{i}", body, env=FAKE_KEYS, store=url))
        responses = asyncio.run(_metered(started, 60, stream))
        codes = sorted(r for r in responses)
        assert codes.count(200) == 10 and codes.count(402) == 50, codes
        with open_store(url) as store:
            spent = sum((Decimal(e["cost"]) for e in iter_events(store)
                         if e["status"] == 200 and e["cost"]), Decimal(0))
        assert spent == 10 * ONE_REQUEST
    finally:
        for gw in started:
            stop_gateway(gw)


async def _metered(gateways: list[Gateway], n: int, stream: bool) -> list[int]:
    body = {"model": "metered", "max_tokens": 300, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:
        answers = await asyncio.gather(*(
            client.post(gateways[i % len(gateways)].url + "/v1/chat/completions", json=body,
                        headers={"Authorization": f"Bearer {gateways[i % len(gateways)].key}"})
            for i in range(n)))
    return [r.status_code for r in answers]
