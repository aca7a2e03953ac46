"""A fake provider whose every answer the test scripts: usage, text, chunks, and when to answer.

The script is looked up by the request's `user` (OpenAI APIs) or `metadata.user_id`
(Anthropic), which the gateway passes through; unscripted requests get a small default
answer. A script's `hold` (a threading.Event) keeps the request waiting until it is set, so a
test can read the gateway's reservations while the request is in flight.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Script:
    body: dict[str, Any] | None = None  # a JSON answer
    raw: bytes | None = None  # a JSON answer's bytes as they are (what json.dumps cannot make)
    events: list[bytes] | None = None  # SSE events (each without its blank line)
    cut_after: int | None = None  # drop the connection after this many events
    tail: bytes = b""  # what is written just before the connection drops (half an event)
    hold: threading.Event | None = None
    linger: threading.Event | None = None  # after the events, keep the stream open until set


@dataclass
class ScriptedUpstream:
    scripts: dict[str, Script] = field(default_factory=dict)
    arrived: list[dict[str, Any]] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)  # upstream models that answer 500

    def start(self) -> ScriptedUpstream:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        assert ready.wait(10)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def providers_toml(self) -> str:
        """This fake as two providers of a gateway's config: "oa" (OpenAI) and "an" (Anthropic)."""
        return (f'[[providers]]\nname = "oa"\napi = "openai"\nbase_url = "{self.url}/v1"\n'
                f'[[providers]]\nname = "an"\napi = "anthropic"\n'
                f'base_url = "{self.url}/anthropic"')

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=50_000_000)
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.arrived.append(body)
        if body.get("model") in self.failing:
            return web.json_response({"error": {"message": "down", "type": "server_error"}},
                                     status=500)
        key = body.get("user") or (body.get("metadata") or {}).get("user_id")
        script = self.scripts.get(key) or Script(body=_DEFAULT)
        if script.hold is not None:
            await asyncio.get_running_loop().run_in_executor(None, script.hold.wait, 30)
        if script.raw is not None:
            return web.Response(body=script.raw, content_type="application/json")
        if script.events is None:
            return web.json_response(script.body)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i, event in enumerate([*script.events, None]):
            if i == script.cut_after:
                await response.write(script.tail)
                assert request.transport is not None
                request.transport.abort()
                return response
            if event is not None:
                await response.write(event + b"\n\n")
        if script.linger is not None:
            await asyncio.get_running_loop().run_in_executor(None, script.linger.wait, 30)
        await response.write_eof()
        return response


_DEFAULT = {"id": "x", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}
