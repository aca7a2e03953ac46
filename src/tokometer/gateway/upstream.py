"""The connection to providers: one pooled aiohttp session, requests built per route.

aiohttp's exceptions stop here and become UpstreamError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiohttp
import orjson

from ..config import Route, Server
from ..errors import UpstreamError
from .call import Call

# Client headers that mean something to the provider; everything else stays here.
_FORWARD = (b"accept", b"anthropic-version", b"anthropic-beta", b"openai-beta")
_ANTHROPIC_VERSION = "2023-06-01"


def new_session(server: Server) -> aiohttp.ClientSession:
    # upstream_timeout bounds silence, not length: a long stream that keeps talking is fine.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=server.connect_timeout,
                                    sock_read=server.upstream_timeout)
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    # Ask for identity encoding: usage is read from the bytes the client also receives.
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                 skip_auto_headers=("Accept-Encoding", "User-Agent"),
                                 json_serialize=lambda o: orjson.dumps(o).decode())


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
    if not changes and call.steering is None:
        return call.raw
    out = {**body, **changes}
    out.pop("provider", None)  # the routing preferences were for us
    return orjson.dumps(out)


def upstream_headers(call: Call, route: Route) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    for name in _FORWARD:
        if value := call.client_headers.get(name):
            headers[name.decode()] = value.decode("latin-1")
    key = route.provider.api_key
    if route.provider.api == "anthropic":
        headers.setdefault("anthropic-version", _ANTHROPIC_VERSION)
        if key:
            headers["x-api-key"] = key
    elif key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


async def open_response(session: aiohttp.ClientSession, call: Call,
                        route: Route) -> aiohttp.ClientResponse:
    url = route.provider.base_url + call.endpoint.upstream_path
    timeout = session.timeout
    if route.provider.timeout is not None:  # this provider's own bound on silence
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout.sock_connect,
                                        sock_read=route.provider.timeout)
    with _translated_errors(route, mid_response=False):
        return await session.post(url, data=upstream_body(call, route),
                                  headers=upstream_headers(call, route), timeout=timeout)


async def read_all(response: aiohttp.ClientResponse, route: Route) -> bytes:
    with _translated_errors(route, mid_response=True):
        return await response.read()


@contextlib.contextmanager
def _translated_errors(route: Route, *, mid_response: bool) -> Iterator[None]:
    """aiohttp's failures as UpstreamError, saying whether the answer had begun."""
    name = route.provider.name
    try:
        yield
    except TimeoutError:
        what = "stopped answering mid-response" if mid_response else "did not answer in time"
        raise UpstreamError(f"provider {name} {what}", status=504,
                            type="upstream_timeout") from None
    except aiohttp.ClientError as e:
        if mid_response:
            raise UpstreamError(f"provider {name} broke off the response: {e}",
                                type="upstream_broken") from None
        raise UpstreamError(f"cannot reach provider {name}: {e}",
                            type="upstream_unreachable") from None
