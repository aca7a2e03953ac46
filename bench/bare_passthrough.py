"""The reference points for gateway overhead: the least a Python ASGI proxy can do.

granian + uvloop + one pooled aiohttp session + orjson: read the request, forward it, read
the answer, send it back; no metering at all. bench/overhead.py runs it beside tokometer so
that what metering itself costs is visible. With LEDGER=PATH it also does the least a
*durable* meter must do: one row per request committed to SQLite (WAL) by a writer thread
before the response's last byte is sent, so the price of that rule alone can be measured.
Run by overhead.py, not by hand:

    UPSTREAM=http://127.0.0.1:PORT granian --interface asgi --loop uvloop bench.bare_passthrough:app
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from typing import Any

import aiohttp
import orjson


class Ledger:
    """One writer thread, group commits, a future per row: the minimum of durable metering."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS readings (id INTEGER PRIMARY KEY, "
                          "status INTEGER, bytes INTEGER)")
        self.queue: queue.SimpleQueue[tuple[tuple[int, int], asyncio.Future[None]]] = (
            queue.SimpleQueue())
        self.loop = asyncio.get_running_loop()
        threading.Thread(target=self._write_forever, daemon=True).start()

    async def append(self, status: int, size: int) -> None:
        done = self.loop.create_future()
        self.queue.put(((status, size), done))
        await done

    def _write_forever(self) -> None:
        while True:
            batch = [self.queue.get()]
            while True:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany("INSERT INTO readings (status, bytes) VALUES (?, ?)",
                                      [row for row, _ in batch])
            self.loop.call_soon_threadsafe(_resolve, [done for _, done in batch])


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for done in futures:
        done.set_result(None)


class BarePassThrough:
    def __init__(self) -> None:
        self.upstream = os.environ.get("UPSTREAM", "")
        self.session: aiohttp.ClientSession | None = None
        self.ledger: Ledger | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                if path := os.environ.get("LEDGER"):
                    self.ledger = Ledger(path)
                await send({"type": "lifespan.startup.complete"})
            assert self.session is not None
            await self.session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        assert self.session is not None
        if not body:  # a readiness probe
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        request = orjson.loads(body)
        size = 0
        async with self.session.post(self.upstream + scope["path"], data=orjson.dumps(request),
                                     headers={"content-type": "application/json"}) as r:
            await send({"type": "http.response.start", "status": r.status,
                        "headers": [(b"content-type", r.headers["content-type"].encode())]})
            async for chunk in r.content.iter_any():
                size += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.ledger is not None:
            await self.ledger.append(r.status, size)
        await send({"type": "http.response.body", "body": b""})


app = BarePassThrough()
