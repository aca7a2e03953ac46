"""The ASGI shapes the edge speaks, one request as endpoints see it, and reading its body.

A body is read only after its request is authenticated, within server.max_body_bytes and
server.body_timeout (a client that stalls mid-body must not hold its connection for ever).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import Server
from ..errors import RequestError
from .wire import JSON_HEADERS

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]


class TrackedSend:
    """The ASGI send, remembering whether the response has begun (then no error body can be
    sent: a failure ends the response some other way)."""

    def __init__(self, send: Send):
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = True
        await self._send(message)


@dataclass(frozen=True, slots=True)
class Request:
    scope: Scope
    receive: Receive
    send: TrackedSend
    headers: dict[bytes, bytes]
    t0: float  # perf_counter at arrival

    @property
    def method(self) -> str:
        method: str = self.scope["method"]
        return method

    @property
    def path(self) -> str:
        path: str = self.scope["path"]
        return path

    async def body(self, server: Server) -> bytes:
        try:
            async with asyncio.timeout(server.body_timeout):
                return await self._body(server.max_body_bytes)
        except TimeoutError:
            raise RequestError(f"the request body did not arrive within "
                               f"{server.body_timeout:g} s (server.body_timeout)", status=408,
                               type="request_timeout") from None

    async def json(self, server: Server) -> Any:
        """A side endpoint's JSON body (None when empty)."""
        raw = await self.body(server)
        try:
            return orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as e:
            raise RequestError(f"the request body is not valid JSON: {e}") from None

    async def _body(self, limit: int) -> bytes:
        declared = self.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_big(limit)
        parts, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise RequestError("the client went away", status=499)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_big(limit)
            parts.append(chunk)
            if not message.get("more_body"):
                return b"".join(parts) if len(parts) != 1 else parts[0]


def _too_big(limit: int) -> RequestError:
    return RequestError(f"the request body is larger than the limit of {limit} bytes "
                        "(server.max_body_bytes)", status=413, type="request_too_large")


async def reply(send: Send, status: int, body: bytes, headers: Headers = (),
                content_type: bytes | None = None) -> None:
    """A whole answer: JSON unless `content_type` says otherwise."""
    start = [(b"content-type", content_type)] if content_type else list(JSON_HEADERS)
    await send({"type": "http.response.start", "status": status, "headers": [*start, *headers]})
    await send({"type": "http.response.body", "body": body})


async def reply_json(send: Send, status: int, data: Any, headers: Headers = ()) -> None:
    await reply(send, status, orjson.dumps(data), headers)
