"""The ASGI edge: the lifespan builds the Services, each request goes to its endpoint.

Endpoints are a route table (endpoints.py); the walk of a metered request is pipeline.py.
Every error, foreseen or not, reaches the client as JSON in its API's shape (side endpoints:
OpenAI's), unless the answer had begun: then the server cuts it short.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

from .. import config
from ..config import Settings
from ..errors import PolicyError, TokometerError
from ..ledger.lock import StoreLock
from .asgi import Receive, Request, Scope, Send, TrackedSend, reply
from .endpoints import route, side_api
from .services import Services, start_services, stop_services
from .wire import render_error

log = logging.getLogger("tokometer.gateway")
# Python's cyclic collector by default runs every 700 net container allocations: many times a
# second under load, each time over the in-flight requests, and now and then over the whole
# heap (the price catalog alone is tens of thousands of objects). See settle_heap.
_GC_YOUNGEST = 7_000


def create_app(settings: Settings | None = None) -> Gateway:
    """The ASGI app; without settings, reads the file named by $TOKOMETER_CONFIG."""
    if settings is None:
        settings = config.load(config.default_path())
    return Gateway(settings)


class Gateway:
    def __init__(self, settings: Settings, lock: StoreLock | None = None,
                 on_ready: Callable[[], object] | None = None, peers: Path | None = None,
                 stopping_signal: int | None = None):
        self.settings = settings
        self.lock = lock  # the store's; taken at start unless `tokometer serve` holds it
        self.on_ready = on_ready  # told once the gateway has started (serve's supervisor)
        self.peers = peers  # where serve's workers, when several, meet (services.py)
        self.stopping_signal = stopping_signal  # serve's supervisor: "a stop has begun"
        self.services: Services | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def start(self) -> None:
        self.services = await start_services(self.settings, self.lock, self.peers)
        if self.stopping_signal is not None:
            asyncio.get_running_loop().add_signal_handler(self.stopping_signal, self._stopping)
        settle_heap()
        if self.on_ready is not None:
            self.on_ready()

    def _stopping(self) -> None:
        """A stop has begun and this worker is killed after `stop_timeout`: a stream still
        relayed shortly before then is ended and recorded, as a provider's cut would be."""
        timeout = self.settings.server.stop_timeout
        asyncio.get_running_loop().call_later(max(timeout - 2, timeout / 2), self._end_streams)

    def _end_streams(self) -> None:
        if self.services is not None:
            for end in list(self.services.deps.streams):
                end()

    async def stop(self) -> None:
        if self.services is not None:
            await stop_services(self.services)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except TokometerError as e:
                    await send({"type": "lifespan.startup.failed", "message": e.message})
                    return
                except Exception as e:  # unforeseen: still fail the start, never hang it
                    log.exception("tokometer gateway cannot start")
                    await send({"type": "lifespan.startup.failed", "message": repr(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracked = TrackedSend(send)
        request = Request(scope, receive, tracked, dict(scope["headers"]), time.perf_counter())
        try:
            assert self.services is not None, "lifespan startup has not run"
            await route(request)(request, self.services)
        except Exception as error:
            if tracked.started:
                raise  # too late for an error body: the server cuts the response short
            await _fail(send, side_api(request), error, f"{request.method} {request.path}")


def settle_heap() -> None:
    """Once the gateway has started: what is alive now (the catalog, the config, the services)
    lives as long as the process, so it leaves the cyclic collector's care (gc.freeze), and
    the collector runs every _GC_YOUNGEST allocations instead of 700. A request makes no
    cycles of its own to speak of (objects are freed by reference counting): at concurrency 64
    the collector's share fell from ~15 µs of CPU per request (two full passes in 5,000
    requests, ~20 ms each) to under 1 (bench/gateway_threads.py, gc.callbacks)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNGEST, *gc.get_threshold()[1:])


async def _fail(send: Send, api: str, error: Exception, what: str) -> None:
    """Any error as JSON in the client's shape; a surprise is logged and told as a plain 500."""
    if not isinstance(error, TokometerError):
        log.error("%.300s failed", what, exc_info=error)
        error = TokometerError("the gateway failed on this request; its log says why")
    elif error.status >= 500:
        log.error("%.300s failed: %s", what, error.message)
    status, body = render_error(api, error)
    wait = error.retry_after if isinstance(error, PolicyError) else None
    await reply(send, status, body, [] if wait is None else [(b"retry-after", str(wait).encode())])
