"""The ASGI edge: routing, authentication, body limits, error rendering, lifespan.

Everything about a metered request past authentication happens in pipeline.handle. A request
is authenticated before its body is read, and every error, foreseen or not, reaches the client
as JSON in its API's shape (side endpoints: OpenAI's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import orjson

from .. import config
from ..analytics.tasks import record_outcome
from ..catalog import Pricer, vendor_of
from ..config import Settings
from ..counting import Recounter, TokenizerRegistry
from ..errors import AuthError, PolicyError, RequestError, TokometerError
from ..events import new_event_id
from ..ledger import SQLiteLedger, open_db
from ..ledger.lock import StoreLock
from ..ledger.signer import load_signer
from ..ledger.sqlite import SMALL_CACHE_KIB
from ..policy import Consumer, Guard, KeyRing
from ..policy.keys import is_key_shaped
from ..policy.sync import BudgetSync
from .admin import Admin
from .call import parse_call, refused_call
from .dashboard import NAV, Dashboard
from .meter import Meter
from .metrics import Metrics
from .offloop import OffLoop
from .pipeline import Deps, handle, refuse
from .relay import Receive, Send
from .router import Router
from .session import LoginBrake, client_of
from .transparency import Transparency
from .upstream import Upstream
from .wire import ENDPOINTS, EVENT_ID_HEADER, JSON_HEADERS, render_error

log = logging.getLogger("tokometer.gateway")
_DASHBOARD = frozenset({"/login", *(href for href, _ in NAV)})


def create_app(settings: Settings | None = None) -> Gateway:
    """The ASGI app; without settings, reads the file named by $TOKOMETER_CONFIG."""
    if settings is None:
        settings = config.load(os.environ.get("TOKOMETER_CONFIG", "tokometer.toml"))
    return Gateway(settings)


class Gateway:
    def __init__(self, settings: Settings, lock: StoreLock | None = None,
                 on_ready: Callable[[], object] | None = None):
        self.settings = settings
        self.lock = lock  # the store's; taken at start unless `tokometer serve` holds it
        self.on_ready = on_ready  # told once the gateway has started (serve's supervisor)
        self.deps: Deps | None = None
        self.keys: KeyRing | None = None
        self.admin: Admin | None = None
        self.transparency: Transparency | None = None
        self.outcomes: OffLoop | None = None
        self.dashboard: Dashboard | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

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

    async def start(self) -> None:
        s = self.settings
        self.lock = self.lock or StoreLock.take(s.server.store)
        signer = load_signer(s.server.signing_key, s.server.signing_key_pem,
                             s.server.signing_key_env)
        ledger = SQLiteLedger(s.server.store, signer, durability=s.server.durability)
        ledger.start()
        registry = TokenizerRegistry(s.server.data_dir)
        await asyncio.to_thread(_preload_tokenizers, s, registry)
        self.keys = KeyRing(open_db(s.server.store, cache_kib=SMALL_CACHE_KIB))
        pricer = Pricer(s.server.currency, s.exchange_rates)
        meter = Meter(Recounter(registry), pricer, s.server.default_max_output_tokens)
        budgets = BudgetSync(Guard(s, {}), open_db(s.server.store, cache_kib=SMALL_CACHE_KIB),
                             s.budgets)
        await budgets.sync()  # spend so far, from the ledger: a restart resets no budget
        side = OffLoop(open_db(s.server.store))  # one connection for the side endpoints
        brake = LoginBrake()
        self.admin = Admin(s, side, self.keys, budgets, ledger, brake)
        self.transparency = Transparency(side, ledger)
        self.outcomes = side
        self.dashboard = Dashboard(s, side, brake)
        labels = [*s.models, *(r.model for m in s.models.values() for r in m.routes)]
        self.deps = Deps(Upstream(s.server), meter, ledger,
                         Router(pricer, s.server.max_attempts), budgets.guard, Metrics(labels))
        self._tasks += [asyncio.create_task(self.keys.watch_revocations()),
                        asyncio.create_task(budgets.run_forever())]
        log.info("tokometer gateway ready: %d models, store %s", len(s.models), s.server.store)
        if self.on_ready is not None:
            self.on_ready()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.deps is not None:
            await self.deps.upstream.close()
            await self.deps.ledger.close()
        if self.lock is not None:
            self.lock.close()

    async def _http(self, scope: dict[str, Any], receive: Receive, reply: Send) -> None:
        t0 = time.perf_counter()
        path, method = scope["path"], scope["method"]
        endpoint = ENDPOINTS.get(path)
        headers = dict(scope["headers"])
        api = endpoint.api if endpoint else _side_api(path, headers)
        send = _Tracked(reply)
        try:
            if path == "/healthz":
                return await _json(send, 200, {"status": "ok"})
            if path.startswith("/admin/"):
                return await self._admin(method, path, headers, receive, send, scope)
            if path in _DASHBOARD or path.startswith("/tenants/"):
                return await self._dashboard(method, path, headers, receive, send, scope)
            if path == "/metrics":
                return await self._metrics(method, headers, send, scope)
            if path == "/v1/outcomes":
                return await self._outcome(method, headers, receive, send)
            if path.startswith(("/v1/ledger/", "/v1/receipts/")):
                return await _json(send, 200, await self._log(method, path, headers, scope))
            if path == "/v1/models":
                _only(method, "GET", path)
                await self._authenticate(headers)
                return await _json(send, 200, self._model_list(b"anthropic-version" in headers))
            if endpoint is None:
                raise RequestError(f"no such endpoint: {method} {path}", status=404,
                                   type="not_found_error")
            _only(method, "POST", path)
            assert self.deps is not None, "lifespan startup has not run"
            try:
                consumer = await self._authenticate(headers)
            except AuthError as error:  # recorded from the headers; the body is never read
                call = refused_call(endpoint, headers, t0)
                return await refuse(call, error, self.deps, send, new_event_id())
            raw = await _read_body(receive, headers, self.settings.server)
            call = parse_call(endpoint, raw, headers, self.settings, consumer, t0)
            await handle(call, self.deps, send, receive)
        except Exception as error:
            if send.started:
                raise  # too late for an error body: the server cuts the response short
            await _fail(send, api, error, f"{method} {path}")

    async def _admin(self, method: str, path: str, headers: dict[bytes, bytes],
                     receive: Receive, send: Send, scope: dict[str, Any]) -> None:
        assert self.admin is not None, "lifespan startup has not run"
        self.admin.check(headers, _client(scope))
        body = await self._json_body(receive, headers)
        status, data = await self.admin.handle(method, path, body)
        if path == "/admin/corrections":  # its answer is an event: named like every other
            return await _reply(send, status, orjson.dumps(data),
                                [(EVENT_ID_HEADER, data["id"].encode())])
        await _json(send, status, data)

    async def _dashboard(self, method: str, path: str, headers: dict[bytes, bytes],
                         receive: Receive, send: Send, scope: dict[str, Any]) -> None:
        assert self.dashboard is not None, "lifespan startup has not run"
        body = (await _read_body(receive, headers, self.settings.server)
                if method == "POST" else b"")
        status, page_headers, page = await self.dashboard.handle(
            method, path, scope, headers, body)
        await send({"type": "http.response.start", "status": status, "headers": page_headers})
        await send({"type": "http.response.body", "body": page})

    async def _metrics(self, method: str, headers: dict[bytes, bytes], send: Send,
                       scope: dict[str, Any]) -> None:
        """Prometheus' scrape, for the admin token."""
        assert self.admin is not None and self.deps is not None
        _only(method, "GET", "/metrics")
        self.admin.check(headers, _client(scope))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]})
        await send({"type": "http.response.body", "body": self.deps.metrics.render()})

    async def _outcome(self, method: str, headers: dict[bytes, bytes], receive: Receive,
                       send: Send) -> None:
        """POST /v1/outcomes: how one of the consumer's tasks ended."""
        assert self.outcomes is not None, "lifespan startup has not run"
        _only(method, "POST", "/v1/outcomes")
        who = await self._authenticate(headers)
        body = await self._json_body(receive, headers)
        await _json(send, 201, await self.outcomes.run(record_outcome, who, body))

    async def _json_body(self, receive: Receive, headers: dict[bytes, bytes]) -> Any:
        """A side endpoint's JSON body (None when empty), within the body limit."""
        raw = await _read_body(receive, headers, self.settings.server)
        try:
            return orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as e:
            raise RequestError(f"the request body is not valid JSON: {e}") from None

    async def _log(self, method: str, path: str, headers: dict[bytes, bytes],
                   scope: dict[str, Any]) -> dict[str, Any]:
        """The Merkle log's read endpoints, for consumers' keys and the admin token."""
        assert self.transparency is not None and self.admin is not None
        _only(method, "GET", path)
        client, who = _client(scope), None
        # A braked address is not asked for the admin token (keys still work: behind a proxy
        # it is everyone's); a wrong token not shaped like a key is a guess at the admin's.
        if self.admin.braked(client) is not None or not self.admin.is_admin(headers):
            try:
                who = await self._authenticate(headers)
            except AuthError:
                if not is_key_shaped(_api_key(headers) or ""):
                    self.admin.wrong(client)
                raise
        if path == "/v1/ledger/head":
            return await self.transparency.head()
        if path == "/v1/ledger/consistency":
            return await self.transparency.consistency(scope.get("query_string", b""))
        event_id = path.removeprefix("/v1/receipts/")
        if path.startswith("/v1/receipts/") and event_id and "/" not in event_id:
            return await self.transparency.receipt(event_id, who)
        raise RequestError(f"no such endpoint: {method} {path}", status=404,
                           type="not_found_error")

    async def _authenticate(self, headers: dict[bytes, bytes]) -> Consumer:
        key = _api_key(headers)
        if key is None:
            raise AuthError("no API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'")
        assert self.keys is not None
        consumer = await self.keys.lookup(key)
        if consumer is None:
            raise AuthError("invalid API key (unknown or revoked)")
        return consumer

    def _model_list(self, anthropic: bool) -> dict[str, Any]:
        names = list(self.settings.models)
        if anthropic:
            data = [{"type": "model", "id": n, "display_name": n,
                     "created_at": "1970-01-01T00:00:00Z"} for n in names]
            return {"data": data, "has_more": False,
                    "first_id": names[0] if names else None,
                    "last_id": names[-1] if names else None}
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": _owner(self.settings, n)}
            for n in names]}


class _Tracked:
    """The ASGI send, remembering whether the response has begun (then no error can be sent)."""

    def __init__(self, send: Send):
        self._send = send
        self.started = False

    async def __call__(self, message: dict[str, Any]) -> None:
        self.started = True
        await self._send(message)


async def _fail(send: Send, api: str, error: Exception, what: str) -> None:
    """Any error as JSON in the client's shape; a surprise is logged and told as a plain 500."""
    if not isinstance(error, TokometerError):
        log.error("%.300s failed", what, exc_info=error)
        error = TokometerError("the gateway failed on this request; its log says why")
    elif error.status >= 500:
        log.error("%.300s failed: %s", what, error.message)
    status, body = render_error(api, error)
    wait = error.retry_after if isinstance(error, PolicyError) else None
    await _reply(send, status, body, [] if wait is None else [(b"retry-after", str(wait).encode())])


def _side_api(path: str, headers: dict[bytes, bytes]) -> str:
    """Side endpoints answer in OpenAI's shape, but for the Anthropic SDK's model list."""
    return "anthropic" if path == "/v1/models" and b"anthropic-version" in headers else "openai"


def _only(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise RequestError(f"{path} takes {allowed}, not {method}", status=405)


def _client(scope: dict[str, Any]) -> str:
    """Whom the login brake counts for this request."""
    return client_of((scope.get("client") or ("",))[0])


def _owner(settings: Settings, name: str) -> str:
    info = vendor_of(settings.models[name].routes[0].model)
    return info.vendor if info else settings.models[name].routes[0].provider.name


def _api_key(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip().decode("latin-1") or None
    key = headers.get(b"x-api-key")
    return key.decode("latin-1") if key else None


async def _read_body(receive: Receive, headers: dict[bytes, bytes],
                     server: config.Server) -> bytes:
    """The whole body, within server.max_body_bytes and server.body_timeout (a client that
    stalls mid-body must not hold its connection for ever)."""
    try:
        async with asyncio.timeout(server.body_timeout):
            return await _body(receive, headers, server.max_body_bytes)
    except TimeoutError:
        raise RequestError(f"the request body did not arrive within {server.body_timeout:g} s "
                           "(server.body_timeout)", status=408, type="request_timeout") from None


async def _body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    too_big = RequestError(f"the request body is larger than the limit of {limit} bytes "
                           "(server.max_body_bytes)", status=413, type="request_too_large")
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError("the client went away", status=499)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_big
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts) if len(parts) != 1 else parts[0]


def _preload_tokenizers(settings: Settings, registry: TokenizerRegistry) -> None:
    """Load every tokenizer the usable models need now (seconds each), not on a request."""
    for model in settings.models.values():
        routes = [r for r in model.routes if r.provider.usable]
        if not routes:
            continue
        specs = {model.tokenizer} if model.tokenizer else {
            info.tokenizer for r in routes if (info := vendor_of(r.model))}
        for spec in specs - {None}:
            registry.get(spec)  # type: ignore[arg-type]


async def _json(send: Send, status: int, data: Any) -> None:
    await _reply(send, status, orjson.dumps(data))


async def _reply(send: Send, status: int, body: bytes,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, *(headers or ())]})
    await send({"type": "http.response.body", "body": body})
