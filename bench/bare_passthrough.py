"""The reference point for gateway overhead: the least a Python ASGI proxy can do.

granian + uvloop + one pooled aiohttp session + orjson: read the request, forward it, read
the answer, send it back; no metering at all. bench/overhead.py runs it beside tokometer so
that what metering itself costs is visible. Run by overhead.py, not by hand:

    UPSTREAM=http://127.0.0.1:PORT granian --interface asgi --loop uvloop bench.bare_passthrough:app
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import orjson


class BarePassThrough:
    def __init__(self) -> None:
        self.upstream = os.environ.get("UPSTREAM", "")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
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
        async with self.session.post(self.upstream + scope["path"], data=orjson.dumps(request),
                                     headers={"content-type": "application/json"}) as r:
            await send({"type": "http.response.start", "status": r.status,
                        "headers": [(b"content-type", r.headers["content-type"].encode())]})
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


app = BarePassThrough()
