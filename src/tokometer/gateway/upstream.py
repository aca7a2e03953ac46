"""The connection to providers: pooled pyreqwest clients (Rust's reqwest), requests built per
route, and the provider's answer as an `Answer` the relay reads.

pyreqwest was chosen over aiohttp for the hot path: a bare pass-through spends less CPU per
request on it (measured with bench/bare_passthrough.py). Its exceptions stop here and become
UpstreamError, whose messages name the provider but never its address: that goes to the log.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from types import TracebackType
from urllib.parse import urlsplit

import orjson
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError
from pyreqwest.request import StreamRequest
from pyreqwest.response import Response

from ..catalog import vendor_of
from ..config import Route, Server
from ..errors import UpstreamError
from ..impact.measured import CpuShares
from .call import Call

# Client headers that mean something to the provider; everything else stays here.
_FORWARD = (b"accept", b"anthropic-version", b"anthropic-beta", b"openai-beta")
_ANTHROPIC_VERSION = "2023-06-01"
log = logging.getLogger("tokometer.upstream")


class Upstream:
    """One pooled client per bound on silence (the server's, and any provider's own), and
    the CPU clocks of the local model servers whose energy is measured, by provider name."""

    def __init__(self, server: Server, cpu: dict[str, CpuShares] | None = None):
        self.server = server
        self.cpu = cpu or {}
        self._clients: dict[float, Client] = {}

    def client(self, route: Route) -> Client:
        silence = route.provider.timeout or self.server.upstream_timeout
        if (client := self._clients.get(silence)) is None:
            # The silence bound is per read, not for the whole answer: a long stream that
            # keeps talking is fine. Bodies stay as sent: usage is read from the client's bytes.
            client = (ClientBuilder()
                      .connect_timeout(timedelta(seconds=self.server.connect_timeout))
                      .read_timeout(timedelta(seconds=silence))
                      .gzip(False).brotli(False).zstd(False).deflate(False)
                      .follow_redirects(False)
                      .build())
            self._clients[silence] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


class Answer:
    """A provider's response: status and headers at once, the body as it arrives. Closed on
    leaving `async with`, which hands the connection back to the pool."""

    def __init__(self, request: StreamRequest, response: Response, route: Route,
                 cpu: _CpuWatch | None = None):
        self._request, self._response, self.route = request, response, route
        self._cpu = cpu
        self.cpu_seconds: float | None = None  # a local server's, once closed
        self.status = response.status
        content_type = response.get_header("content-type") or ""
        self.content_type = content_type.split(";", 1)[0].strip().lower()

    def headers(self, names: frozenset[str]) -> list[tuple[bytes, bytes]]:
        """The response's headers named in `names` (lower case), as ASGI wants them."""
        return [(k.encode("latin-1"), v.encode("latin-1"))
                for k, v in self._response.headers.items() if k in names]

    async def read(self) -> bytes:
        with translated_errors(self.route, mid_response=True):
            return bytes(await self._response.body_reader.bytes())

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the provider sends it; UpstreamError if it breaks off."""
        reader = self._response.body_reader
        while True:
            try:  # not `translated_errors`: a context manager per chunk costs more than this
                chunk = await reader.read_chunk()
            except (TimeoutError, PyreqwestError) as e:
                raise _translated(e, self.route, mid_response=True) from None
            if chunk is None:
                return
            yield bytes(chunk)

    async def close(self) -> None:
        await self._request.__aexit__(None, None, None)
        if self._cpu is not None:
            self.cpu_seconds = self._cpu.end()

    async def __aenter__(self) -> Answer:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()


def upstream_body(call: Call, route: Route) -> bytes:
    """The request as the provider must see it; the client's bytes when nothing changes."""
    body = call.body
    changes: dict[str, object] = {}
    if route.model != body.get("model"):
        changes["model"] = route.model
    if call.stream and call.endpoint.operation in ("chat", "text_completion") \
            and not call.client_wants_usage:
        # Without this an OpenAI-format stream carries no usage at all.
        changes["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    if call.output_bound is not None:  # what was reserved for a request that set no bound
        changes[_bound_key(call.endpoint.operation, route)] = call.output_bound
    if not changes and call.steering is None:
        return call.raw
    out = {**body, **changes}
    out.pop("provider", None)  # the routing preferences were for us
    return orjson.dumps(out)


def _bound_key(operation: str, route: Route) -> str:
    """Where the provider reads the most output it may write: OpenAI's own chat models
    refuse `max_tokens` (its reasoning models) and take `max_completion_tokens`."""
    if operation == "responses":
        return "max_output_tokens"
    info = vendor_of(route.model)
    openai = route.provider.name == "openai" or (info is not None and info.vendor == "openai")
    return "max_completion_tokens" if operation == "chat" and openai else "max_tokens"


def upstream_headers(call: Call, route: Route) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept-encoding": "identity"}
    for name in _FORWARD:
        if value := call.client_headers.get(name):
            headers[name.decode()] = value.decode("latin-1")
    key = route.provider.api_key
    if route.provider.api == "anthropic":
        headers.setdefault("anthropic-version", _ANTHROPIC_VERSION)
        if key:
            headers["x-api-key"] = key
    elif key:
        headers["authorization"] = f"Bearer {key}"
    return headers


async def open_response(upstream: Upstream, call: Call, route: Route) -> Answer:
    url = route.provider.base_url + call.endpoint.upstream_path
    request = (upstream.client(route).post(url)
               .headers(upstream_headers(call, route))
               .body_bytes(upstream_body(call, route))
               .streamed_read_buffer_limit(0)  # else the answer waits to fill a read-ahead
               .build_streamed())
    shares = upstream.cpu.get(route.provider.name)
    cpu = _CpuWatch(shares) if shares is not None else None
    try:
        with translated_errors(route, mid_response=False):
            response = await request.__aenter__()
    except BaseException:
        if cpu is not None:
            cpu.end()
        raise
    return Answer(request, response, route, cpu)


class _CpuWatch:
    """A local server's CPU time from the request's sending to its answer's end."""

    def __init__(self, shares: CpuShares):
        self._shares, self._ticket = shares, shares.begin()

    def end(self) -> float | None:
        ticket, self._ticket = self._ticket, None
        return self._shares.end(ticket) if ticket is not None else None


def without_address(text: str, route: Route) -> str:
    """`text` (a provider's words) with the provider's address blanked, for a client to read."""
    base_url = route.provider.base_url
    for address in (base_url, urlsplit(base_url).netloc, urlsplit(base_url).hostname):
        if address:
            text = text.replace(address, "(provider)")
    return text


@contextlib.contextmanager
def translated_errors(route: Route, *, mid_response: bool) -> Iterator[None]:
    """pyreqwest's failures as UpstreamError, saying whether the answer had begun."""
    try:
        yield
    except (TimeoutError, PyreqwestError) as e:  # pyreqwest's timeouts are TimeoutErrors too
        raise _translated(e, route, mid_response=mid_response) from None


def _translated(error: TimeoutError | PyreqwestError, route: Route, *,
                mid_response: bool) -> UpstreamError:
    name = route.provider.name
    if isinstance(error, TimeoutError):
        what = "stopped answering mid-response" if mid_response else "did not answer in time"
        return UpstreamError(f"provider {name} {what}", status=504, type="upstream_timeout")
    # pyreqwest's message holds the URL: the operator's to see, not the client's.
    log.warning("provider %s at %s: %s", name, route.provider.base_url, error)
    if mid_response:
        return UpstreamError(f"provider {name} broke off the response "
                             f"({type(error).__name__})", type="upstream_broken")
    return UpstreamError(f"cannot reach provider {name} ({type(error).__name__}); the "
                         "gateway's log says why", type="upstream_unreachable")
