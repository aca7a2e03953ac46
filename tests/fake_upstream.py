"""A fake remote provider that replays recorded-style bodies for each wire format.

It stands in only for providers that cannot be reached from here. The upstream model name
picks the scenario; like real OpenAI, it sends the usage chunk of a stream only when asked.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures"

SCENARIOS = {
    "gpt-4o-mini": "openai_chat",
    "mystery-model": "mystery",  # a served model no catalog knows
    "deepseek-chat": "deepseek_chat",
    "kimi-k2-0905-preview": "kimi",
    "gpt-3.5-turbo-instruct": "completions",
    "gpt-4.1": "responses",
    "text-embedding-3-small": "embeddings",
    "claude-sonnet-5": "anthropic",
    "no-usage": "nousage",
    "slow": "nousage",
    "broken": "nousage",  # streams a few events, then drops the connection
    "claude-broken": "anthropic",  # the same, after two text deltas
    "bad-usage-json": "badusage_json",  # a usage chunk that is not JSON
    "bad-usage-types": "badusage_types",  # a usage chunk with strings and negatives
    "zero-usage": "zerousage",  # an answer with text, reported as 0 tokens
    "reasoning-dup": "reasoning_dup",  # OpenRouter-style reasoning, twice in each delta
    "claude-1h": "anthropic_1h",  # 1-hour cache writes and web searches
    "gpt-4.1-priority": "openai_priority",  # served at the priority tier
    "gpt-4.1-search": "responses_search",  # two web_search_call output items
}
BREAK_AT = {"broken": 2, "claude-broken": 5}  # the event before which the connection drops
SCENARIOS.update({"error-mid-stream": "nousage", "claude-overloaded": "anthropic",
                  "gpt-4o-2024-11-20": "nousage"})
ERROR_AT = {  # the event before which the provider sends an error event and ends the stream
    "error-mid-stream": (2, b'data: {"error":{"message":"The server had an error",'
                            b'"type":"server_error"}}\n\n'),
    "claude-overloaded": (5, b'event: error\ndata: {"type":"error","error":'
                             b'{"type":"overloaded_error","message":"Overloaded"}}\n\n'),
}
DELAY_SECONDS = 0.2  # how long "NAME-delayed" takes to answer as NAME


class FakeUpstream:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.release_slow = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FakeUpstream:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self.release_slow.set()  # no executor thread left waiting on it past the run
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()  # handlers still sleeping on purpose ("hang", "slow")
        await asyncio.gather(*pending, return_exceptions=True)
        self._loop.call_soon(self._loop.stop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls_for(self, model: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["body"].get("model") == model]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/{op:.*}", self._handle)
        app.router.add_post("/anthropic/v1/messages", self._handle)
        self._runner = runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        headers = {k.lower(): v for k, v in request.headers.items()}  # names are case-blind
        self.calls.append({"path": request.path, "headers": headers, "body": body})
        model = body.get("model", "")
        if model == "fail-500":
            return web.json_response({"error": {"message": "The server had an error",
                                                 "type": "server_error"}}, status=500)
        if model == "fail-429":
            return web.json_response({"error": {"message": "Rate limit reached",
                                                "type": "requests", "code": "rate_limit_exceeded"}},
                                     status=429)
        if model == "fail-400":
            return web.json_response({"error": {"message": "max_tokens is too large",
                                                "type": "invalid_request_error", "param":
                                                "max_tokens", "code": None}}, status=400)
        if model == "html-502":
            return web.Response(status=502, text="<html>Bad Gateway</html>",
                                content_type="text/html")
        if model == "garbage":
            return web.Response(status=200, text="{not json", content_type="application/json")
        if model == "hang":
            await asyncio.sleep(30)
        if model.endswith("-delayed"):
            await asyncio.sleep(DELAY_SECONDS)
        name = SCENARIOS[model.removesuffix("-delayed")]
        if body.get("stream"):
            return await self._stream(request, name, body, slow=model == "slow",
                                      cut=BREAK_AT.get(model), error=ERROR_AT.get(model))
        return web.Response(body=(FIXTURES / f"{name}.json").read_bytes(),
                            content_type="application/json", headers={"x-request-id": "req_123"})

    async def _stream(self, request: web.Request, name: str, body: dict[str, Any],
                      slow: bool, cut: int | None = None,
                      error: tuple[int, bytes] | None = None) -> web.StreamResponse:
        wants_usage = (body.get("stream_options") or {}).get("include_usage") is True
        response = web.StreamResponse(headers={"content-type": "text/event-stream",
                                               "x-request-id": "req_456"})
        await response.prepare(request)
        events = (FIXTURES / f"{name}.sse").read_bytes().split(b"\n\n")
        for i, event in enumerate(e for e in events if e.strip()):
            if b'"choices":[]' in event and b'"usage":{' in event and not wants_usage:
                continue
            if error is not None and i == error[0]:
                await response.write(error[1])
                break
            if i == cut:
                assert request.transport is not None
                request.transport.abort()  # no end of stream: the connection just goes
                return response
            if slow and i == 2:  # held until released (a test's own bound: 120 s)
                await asyncio.get_running_loop().run_in_executor(
                    None, self.release_slow.wait, 120)
            half = len(event) // 2  # split events across writes, as networks do
            await response.write(event[:half])
            await response.write(event[half:] + b"\n\n")
        await response.write_eof()
        return response
