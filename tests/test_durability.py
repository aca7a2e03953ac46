"""Nothing lost: kill -9 the gateway under load; every response that completed has its event."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx

from conftest import MODELS_TOML, Gateway, providers_toml, start_gateway, stop_gateway

REQUESTS, CONCURRENCY = 600, 16


async def _load(gw: Gateway, completed: list[str]) -> None:
    """Mixed whole and streamed requests; an id counts as completed only once the client
    has its response's end (the whole body, or the stream's [DONE])."""
    queue: asyncio.Queue[int] = asyncio.Queue()
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
                    ok = r.status_code == 200 and (b"[DONE]" in data if stream
                                                   else data.endswith(b"}\n") or
                                                   data.endswith(b"}"))
                    if ok:
                        completed.append(r.headers["x-tokometer-event-id"])
                if len(completed) == REQUESTS // 3:
                    os.kill(gw.process.pid, signal.SIGKILL)
            except httpx.TransportError:
                continue  # the gateway is gone: this response never completed

    headers = {"Authorization": f"Bearer {gw.key}"}
    async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))


def test_kill_9_under_load_loses_no_completed_event(upstream, tmp_path):
    gw = start_gateway(tmp_path, providers_toml(upstream) + MODELS_TOML)
    completed: list[str] = []
    asyncio.run(_load(gw, completed))
    gw.process.wait(10)
    assert gw.process.returncode == -signal.SIGKILL
    assert len(completed) >= REQUESTS // 3
    # A restarted gateway on the same store sees every completed event.
    again = start_gateway(tmp_path, providers_toml(upstream) + MODELS_TOML)
    try:
        missing = [eid for eid in completed if not _has(again, eid)]
        assert missing == []
        assert again.count_events() >= len(completed)
    finally:
        stop_gateway(again)


def _has(gw: Gateway, event_id: str) -> bool:
    try:
        gw.event(event_id)
    except AssertionError:
        return False
    return True
