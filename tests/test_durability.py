"""Nothing lost: kill -9 the gateway under load; every response that completed has its event."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx

from conftest import FAKE_KEYS, MODELS_TOML, Gateway, providers_toml, start_gateway, stop_gateway
from processes import cli, group_members

REQUESTS, CONCURRENCY = 600, 16


def kill_9(gw: Gateway) -> None:
    """SIGKILL every process of the gateway at once: granian's supervisor and its worker."""
    os.killpg(gw.process.pid, signal.SIGKILL)


async def _load(gw: Gateway, completed: list[str]) -> None:
    """Mixed whole and streamed requests; an id counts as completed only once the client
    has its response's end (the whole body, or the stream's [DONE])."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    killed: list[bool] = []
    for i in range(REQUESTS):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            stream = i % 2 == 1
            body = {"model": "gpt-4o-mini", "stream": stream,
                    "messages": [{"role": "user", "content": f"request {i}"}]}
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    data = b"".join([c async for c in r.aiter_bytes()])
                    assert r.status_code in (200, 500), r.status_code  # 500: the kill
                    ok = r.status_code == 200 and (b"[DONE]" in data if stream
                                                   else data.endswith(b"}\n") or
                                                   data.endswith(b"}"))
                    if ok:
                        completed.append(r.headers["x-tokometer-event-id"])
                if len(completed) >= REQUESTS // 3 and not killed:
                    killed.append(True)
                    kill_9(gw)
            except httpx.TransportError:
                continue  # the gateway is gone: this response never completed

    headers = {"Authorization": f"Bearer {gw.key}"}
    async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))


def test_kill_9_under_load_loses_no_completed_event(upstream, tmp_path):
    gw = start_gateway(tmp_path, providers_toml(upstream) + MODELS_TOML, env=FAKE_KEYS)
    completed: list[str] = []
    asyncio.run(_load(gw, completed))
    gw.process.wait(10)
    assert gw.process.returncode == -signal.SIGKILL
    assert REQUESTS // 3 <= len(completed) < REQUESTS  # killed mid-load
    assert group_members(gw.process.pid) == []  # the worker died too
    # Each event landed with its leaf, so the log audits clean even before a restart, though
    # the kill left the tree's latest nodes unwritten...
    assert "audits clean" in _audit(gw.config)
    # ...and a restarted gateway on the same store sees every completed event.
    again = start_gateway(tmp_path, providers_toml(upstream) + MODELS_TOML, env=FAKE_KEYS)
    try:
        missing = [eid for eid in completed if not _has(again, eid)]
        assert missing == []
        assert again.count_events() >= len(completed)
        assert all(again.event(eid)["leaf_index"] is not None for eid in completed)
    finally:
        stop_gateway(again)
    # ...with the tree above the leaves derived again at the restart.
    assert "audits clean" in _audit(again.config)


def _audit(config: Path) -> str:
    out = cli(config, "ledger", "audit")
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _has(gw: Gateway, event_id: str) -> bool:
    try:
        gw.event(event_id)
    except AssertionError:
        return False
    return True
