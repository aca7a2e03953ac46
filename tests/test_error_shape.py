"""Every error the gateway itself produces, on every endpoint, in one JSON shape per API; every
response that has an event names it; no provider address ever reaches a client."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx
import openai
import pytest

from conftest import (
    FAKE_KEYS,
    MINIMAL_CONFIG,
    MODELS_TOML,
    Gateway,
    providers_toml,
    start_gateway,
    stop_gateway,
)
from fake_upstream import FakeUpstream
from tokometer import config
from tokometer.gateway.app import Gateway as App
from tokometer.gateway.services import Services
from tokometer.gateway.upstream import without_address

ADMIN = "shape-admin"
MESSAGES = [{"role": "user", "content": "Hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}
CLAUDE = {"model": "claude-sonnet-5", "max_tokens": 10, "messages": MESSAGES}


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    body = f"""admin_token_env = "TKM_SHAPE_ADMIN"
max_body_bytes = 100000
{providers_toml(upstream)}
{MODELS_TOML}
[[models]]
name = "unreachable"
routes = [{{ provider = "dead", model = "gpt-4o-mini" }}]
"""
    gateway = start_gateway(tmp_path_factory.mktemp("shape"), body,
                            env={**FAKE_KEYS, "TKM_SHAPE_ADMIN": ADMIN})
    # A task with a request, so that an outcome for it gets as far as the store.
    r = gateway.post("/v1/chat/completions", CHAT, headers={"x-tokometer-task": "t1"})
    assert r.status_code == 200
    yield gateway
    stop_gateway(gateway)


@contextlib.contextmanager
def store_fault(gw: Gateway, fault: str | None) -> Iterator[None]:
    """A store that refuses a write (a trigger) or lost a table, for the length of a request."""
    if fault is None:
        yield
        return
    table, how = fault.split(":")
    conn = sqlite3.connect(gw.store, timeout=30)
    try:
        if how == "insert":
            conn.execute(f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
                         "BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
        else:
            conn.execute(f"ALTER TABLE {table} RENAME TO {table}_gone")
        yield
    finally:
        if how == "insert":
            conn.execute(f"DROP TRIGGER refuse_{table}")
        else:
            conn.execute(f"ALTER TABLE {table}_gone RENAME TO {table}")
        conn.close()


KEY, ADMIN_TOKEN, NO_AUTH = "key", "admin", None
# (method, path, who, json body or raw bytes, extra headers, store fault, status, type or None)
CASES: dict[str, tuple[Any, ...]] = {
    "chat without a key": ("POST", "/v1/chat/completions", NO_AUTH, CHAT, {}, None, 401, None),
    "chat, bad JSON": ("POST", "/v1/chat/completions", KEY, b"{", {}, None, 400, None),
    "chat, unknown model": ("POST", "/v1/chat/completions", KEY, {**CHAT, "model": "gpt-9"},
                            {}, None, 404, None),
    "chat, bad stream_options": ("POST", "/v1/chat/completions", KEY,
                                 {**CHAT, "stream": True, "stream_options": "x"}, {}, None,
                                 400, None),
    "chat, too large": ("POST", "/v1/chat/completions", KEY, b"x" * 100_001, {}, None, 413,
                        None),
    "chat, GET": ("GET", "/v1/chat/completions", KEY, None, {}, None, 405, None),
    "chat, provider unreachable": ("POST", "/v1/chat/completions", KEY,
                                   {**CHAT, "model": "unreachable"}, {}, None, 502,
                                   "upstream_unreachable"),
    "chat, provider answers HTML": ("POST", "/v1/chat/completions", KEY,
                                    {**CHAT, "model": "html-502"}, {}, None, 502, None),
    "messages without a key": ("POST", "/v1/messages", NO_AUTH, CLAUDE, {}, None, 401, None),
    "messages, bad JSON": ("POST", "/v1/messages", KEY, b"{", {}, None, 400, None),
    "messages, GET": ("GET", "/v1/messages", KEY, None, {}, None, 405, None),
    "messages, provider answers HTML": ("POST", "/v1/messages", KEY,
                                        {**CLAUDE, "model": "claude-html-502"}, {}, None, 502,
                                        None),
    "no such path": ("GET", "/v1/nothing", KEY, None, {}, None, 404, None),
    "models without a key": ("GET", "/v1/models", NO_AUTH, None, {}, None, 401, None),
    "anthropic models without a key": ("GET", "/v1/models", NO_AUTH, None,
                                       {"anthropic-version": "2023-06-01"}, None, 401, None),
    "models, POST": ("POST", "/v1/models", KEY, None, {}, None, 405, None),
    "admin without a token": ("GET", "/admin/keys", KEY, None, {}, None, 401, None),
    "admin, no such endpoint": ("PATCH", "/admin/keys", ADMIN_TOKEN, None, {}, None, 404, None),
    "admin, bad body": ("POST", "/admin/keys", ADMIN_TOKEN, {"tenant": 1}, {}, None, 400, None),
    "admin, store refuses a key": ("POST", "/admin/keys", ADMIN_TOKEN,
                                   {"tenant": "t", "app": "a"}, {}, "keys:insert", 500,
                                   "ledger_error"),
    "admin, store lost budgets": ("DELETE", "/admin/budgets/b1", ADMIN_TOKEN, None, {},
                                  "budgets:rename", 500, "ledger_error"),
    "metrics without a token": ("GET", "/metrics", NO_AUTH, None, {}, None, 401, None),
    "metrics, POST": ("POST", "/metrics", ADMIN_TOKEN, None, {}, None, 405, None),
    "outcomes without a key": ("POST", "/v1/outcomes", NO_AUTH, {}, {}, None, 401, None),
    "outcomes, GET": ("GET", "/v1/outcomes", KEY, None, {}, None, 405, None),
    "outcomes, bad JSON": ("POST", "/v1/outcomes", KEY, b"{", {}, None, 400, None),
    "outcomes, unknown task": ("POST", "/v1/outcomes", KEY,
                               {"task": "nope", "outcome": "success"}, {}, None, 404, None),
    "outcomes, store refuses": ("POST", "/v1/outcomes", KEY, {"task": "t1", "outcome": "success"},
                                {}, "outcomes:insert", 500, "ledger_error"),
    "head without a key": ("GET", "/v1/ledger/head", NO_AUTH, None, {}, None, 401, None),
    "head, POST": ("POST", "/v1/ledger/head", KEY, None, {}, None, 405, None),
    "head, store lost its heads": ("GET", "/v1/ledger/head", KEY, None, {},
                                   "tree_heads:rename", 500, "ledger_error"),
    "consistency, bad sizes": ("GET", "/v1/ledger/consistency?first=x", KEY, None, {}, None,
                               400, None),
    "receipt of no event": ("GET", "/v1/receipts/nope", KEY, None, {}, None, 404, None),
    "receipt, store lost its events": ("GET", "/v1/receipts/nope", KEY, None, {},
                                       "events:rename", 500, "ledger_error"),
}


def assert_one_shape(r: httpx.Response, api: str) -> dict[str, Any]:
    """The body of an error in the API's one shape; returns the inner error object."""
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    if api == "anthropic":
        assert set(body) == {"type", "error"} and body["type"] == "error"
        assert set(body["error"]) == {"type", "message"}
    else:
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["type"], str) and body["error"]["type"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("case", CASES)
def test_every_error_on_every_endpoint_has_its_apis_one_shape(gw, case):
    method, path, who, body, headers, fault, status, error_type = CASES[case]
    key = None if who is NO_AUTH else gw.key if who == KEY else ADMIN
    with store_fault(gw, fault):
        r = gw.request(method, path, body, key=key, headers=headers)
    assert r.status_code == status, r.text
    api = "anthropic" if path == "/v1/messages" or "anthropic-version" in headers else "openai"
    error = assert_one_shape(r, api)
    if error_type is not None:
        assert error["type"] == error_type


def test_a_correction_the_store_refuses_is_a_ledger_error_in_the_one_shape(gw):
    conn = sqlite3.connect(gw.store)
    try:
        event_id = conn.execute("SELECT id FROM events WHERE task = 't1'").fetchone()[0]
    finally:
        conn.close()
    with store_fault(gw, "events:insert"):
        r = gw.post("/admin/corrections",
                    {"event_id": event_id, "reason": "recount", "output_tokens": -1}, key=ADMIN)
    assert r.status_code == 500
    assert assert_one_shape(r, "openai")["type"] == "ledger_error"


def test_an_unforeseen_failure_is_a_500_in_the_clients_shape(tmp_path):
    """A bug, not a known fault: the edge still answers in the client's shape (in-process)."""
    class BrokenKeys:
        async def lookup(self, key: str) -> None:
            raise RuntimeError("a bug")

    (tmp_path / "tokometer.toml").write_text(MINIMAL_CONFIG)
    settings = config.load(tmp_path / "tokometer.toml")
    app = App(settings)
    app.services = Services(settings, deps=object(), keys=BrokenKeys(), admin=None,  # type: ignore[arg-type]
                            transparency=None, side=None, dashboard=None, ingest=None, lock=None,
                            tasks=(), stores=(), peers=None)

    async def ask(path: str, body: dict) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw") as client:
            return await client.post(path, json=body, headers={"x-api-key": "k"})

    r = asyncio.run(ask("/v1/chat/completions", CHAT))
    assert r.status_code == 500 and "a bug" not in r.text
    assert assert_one_shape(r, "openai")["type"] == "server_error"
    r = asyncio.run(ask("/v1/messages", CLAUDE))
    assert r.status_code == 500
    assert assert_one_shape(r, "anthropic")["type"] == "api_error"


# Responses that have an event: (path, body, who) → the status the event is recorded with
WITH_EVENT = {
    "success": ("/v1/chat/completions", CHAT, KEY, 200),
    "stream": ("/v1/chat/completions", {**CHAT, "stream": True}, KEY, 200),
    "anthropic success": ("/v1/messages", CLAUDE, KEY, 200),
    "no key": ("/v1/chat/completions", CHAT, NO_AUTH, 401),
    "anthropic, no key": ("/v1/messages", CLAUDE, NO_AUTH, 401),
    "wrong key": ("/v1/chat/completions", CHAT, "tkm-wrong", 401),
    "routing leaves no route": ("/v1/chat/completions",
                                {**CHAT, "provider": {"only": ["nobody"]}}, KEY, 404),
    "provider's 400 relayed": ("/v1/chat/completions", {**CHAT, "model": "fail-400"}, KEY, 400),
    "provider's 500 relayed": ("/v1/chat/completions", {**CHAT, "model": "fail-500"}, KEY, 500),
    "provider answers HTML": ("/v1/chat/completions", {**CHAT, "model": "html-502"}, KEY, 502),
    "provider answers garbage": ("/v1/chat/completions", {**CHAT, "model": "garbage"}, KEY, 502),
    "provider unreachable": ("/v1/chat/completions", {**CHAT, "model": "unreachable"}, KEY, 502),
    "anthropic provider answers HTML": ("/v1/messages", {**CLAUDE, "model": "claude-html-502"},
                                        KEY, 502),
}


@pytest.mark.parametrize("case", WITH_EVENT)
def test_every_response_with_an_event_names_it(gw, case):
    path, body, who, status = WITH_EVENT[case]
    r = gw.post(path, body, key=None if who is NO_AUTH else gw.key if who == KEY else who)
    assert r.status_code == status
    event = gw.event(r.headers["x-tokometer-event-id"])
    assert event["status"] == status


def test_a_response_without_an_event_names_none(gw):
    r = gw.post("/v1/chat/completions", b"{")
    assert r.status_code == 400 and "x-tokometer-event-id" not in r.headers


def test_no_provider_address_reaches_the_client_but_the_log_has_it(gw):
    dead = config.load(gw.config).providers["dead"].base_url
    port = str(urlsplit(dead).port)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="unreachable", messages=MESSAGES)
    assert e.value.status_code == 502
    assert "cannot reach provider dead" in e.value.message
    assert port not in e.value.response.text and "127.0.0.1" not in e.value.response.text
    assert dead in (gw.config.parent / "gateway.log").read_text()


def test_a_providers_own_words_reach_the_client_without_its_address(tmp_path):
    (tmp_path / "tokometer.toml").write_text(MINIMAL_CONFIG)  # base_url http://127.0.0.1:1/v1
    route = config.load(tmp_path / "tokometer.toml").models["m"].routes[0]
    text = "<h1>502</h1> http://127.0.0.1:1/v1 is down; 127.0.0.1:1 refused; host 127.0.0.1"
    assert without_address(text, route) == \
        "<h1>502</h1> (provider) is down; (provider) refused; host (provider)"


def test_the_anthropic_sdk_raises_on_a_keyless_request_and_sees_its_event(gw):
    claude = anthropic.Anthropic(base_url=gw.url, api_key="tkm-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        claude.messages.create(**CLAUDE)
    assert e.value.body["type"] == "error"
    event = gw.event(e.value.response.headers["x-tokometer-event-id"])
    assert (event["status"], event["api"]) == (401, "anthropic")
