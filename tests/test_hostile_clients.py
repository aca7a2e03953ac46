"""Clients that try to cost the gateway something: no key, huge strings, bytes that are not text.

A request without a valid key is answered from its headers alone; every string a client sends
that reaches an event or a label is UTF-8 of at most MAX_LABEL_CHARS characters.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from conftest import FAKE_KEYS, Gateway, providers_toml, start_gateway, stop_gateway
from fake_upstream import FakeUpstream
from processes import reply_head
from tokometer.gateway.call import MAX_LABEL_CHARS

ADMIN = "edge-admin"
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with the default body limit (10 MB), so megabyte bodies are not refused as
    too large before the key is looked at, and an admin token for /metrics."""
    body = f"""admin_token_env = "TKM_EDGE_ADMIN"
{providers_toml(upstream)}
[[models]]
name = "gpt-4o-mini"
routes = [{{ provider = "fake-openai" }}]
[[models]]
name = "claude-sonnet-5"
routes = [{{ provider = "fake-anthropic" }}]
"""
    gateway = start_gateway(tmp_path_factory.mktemp("hostile"), body,
                            env={**FAKE_KEYS, "TKM_EDGE_ADMIN": ADMIN})
    yield gateway
    stop_gateway(gateway)


def store_bytes(gw: Gateway) -> int:
    """The store's size as SQLite sees it, its write-ahead log included."""
    conn = sqlite3.connect(gw.store)
    try:
        return (conn.execute("PRAGMA page_count").fetchone()[0]
                * conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (the gateway and its worker)."""
    with contextlib.suppress(FileNotFoundError):
        status = Path(f"/proc/{pid}/status").read_text()
        own = int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) * 1024  # type: ignore[index]
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
        return own + sum(rss_bytes(c) for c in children)
    return 0


def test_keyless_requests_with_megabyte_model_names_leave_the_store_as_it_was(gw):
    name = "m" * 1_000_000
    before_size, before_events = store_bytes(gw), gw.count_events()
    before_rss = rss_bytes(gw.process.pid)
    agent = {"x-tokometer-agent": "a" * 10_000}
    responses = [gw.post(CHAT, {"model": f"{i}{name}", "messages": MESSAGES},
                         key=None if i % 2 else "tkm-wrong", headers=agent) for i in range(50)]
    assert {r.status_code for r in responses} == {401}
    assert gw.count_events() == before_events + 50  # each refusal is still on the record...
    event = gw.event(responses[-1].headers["x-tokometer-event-id"])
    assert (event["status"], event["model_requested"], event["agent"]) == (401, None, None)
    # Before the body went unread: 50-55 MB more in the store and 65 MB more resident.
    assert store_bytes(gw) - before_size < 1_000_000
    assert rss_bytes(gw.process.pid) - before_rss < 20_000_000


@pytest.mark.parametrize("key", [None, "tkm-wrong"])
def test_a_request_without_a_valid_key_is_answered_before_its_body_arrives(gw, key):
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    # Headers promise a megabyte that never comes: the answer must not wait for it.
    reply = reply_head(gw, f"POST {CHAT} HTTP/1.1\r\nHost: gw\r\nContent-Type: "
                       f"application/json\r\n{auth}Content-Length: 1000000\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 401")
    event_id = re.search(rb"x-tokometer-event-id: (\S+)", reply, re.IGNORECASE)
    assert event_id is not None
    assert gw.event(event_id[1].decode())["status"] == 401


def test_a_utf8_agent_name_arrives_intact(gw):
    agent, task = "réviseur-机器人", "tâche ✓"
    r = gw.chat("gpt-4o-mini", "Hi",
                headers={"x-tokometer-agent": agent.encode(), "x-tokometer-task": task.encode()})
    assert r.status_code == 200
    event = gw.event(r.headers["x-tokometer-event-id"])
    assert (event["agent"], event["task"]) == (agent, task)


@pytest.mark.parametrize("header", ["x-tokometer-agent", "x-tokometer-task", "x-tokometer-user"])
def test_an_attribution_header_that_is_not_utf8_is_a_400(gw, upstream, header):
    before = len(upstream.calls)
    r = gw.chat("gpt-4o-mini", "Hi", headers={header: "réviseur".encode("latin-1")})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == f"the header {header} is not valid UTF-8"
    assert len(upstream.calls) == before


@pytest.mark.parametrize(("where", "what"), [
    ("x-tokometer-agent", "the header x-tokometer-agent"),
    ("x-tokometer-task", "the header x-tokometer-task"),
    ("x-tokometer-user", "the header x-tokometer-user"),
    ("user", "'user'"),
    ("model", "'model'"),
])
def test_a_client_string_over_the_bound_is_a_400_and_at_the_bound_is_kept(gw, upstream, where,
                                                                           what):
    def send(length: int) -> httpx.Response:
        value = "é" * length  # characters, not bytes: two bytes each in UTF-8
        body = {"model": "gpt-4o-mini", "messages": MESSAGES}
        if where.startswith("x-"):
            return gw.post(CHAT, body, headers={where: value.encode()})
        return gw.post(CHAT, {**body, where: value})

    before = len(upstream.calls)
    r = send(MAX_LABEL_CHARS + 1)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == f"{what} is longer than {MAX_LABEL_CHARS} characters"
    assert len(upstream.calls) == before
    if where != "model":  # no configured model has such a name
        r = send(MAX_LABEL_CHARS)
        assert r.status_code == 200
        event = gw.event(r.headers["x-tokometer-event-id"])
        assert event["agent" if where == "x-tokometer-agent" else "task"
                     if where == "x-tokometer-task" else "end_user"] == "é" * MAX_LABEL_CHARS


def test_a_keyless_refusal_records_none_of_the_clients_text(gw):
    r = gw.post(CHAT, b"{}", key=None, headers={"x-tokometer-agent": b"bad\xff" + b"x" * 1000,
                                                "x-tokometer-user": "ünïcode".encode(),
                                                "x-tokometer-task": b"t" * 200})
    assert r.status_code == 401
    event = gw.event(r.headers["x-tokometer-event-id"])
    assert (event["agent"], event["task"], event["end_user"], event["model_requested"]) == \
        (None, None, None, None)
    assert (event["tenant"], event["key_id"], event["status"]) == (None, None, 401)


def test_sdks_see_an_over_long_attribution_header_as_a_bad_request(gw):
    long_agent = {"x-tokometer-agent": "a" * (MAX_LABEL_CHARS + 1)}
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0,
                           default_headers=long_agent)
    with pytest.raises(openai.BadRequestError, match="longer than 256 characters"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0,
                                 default_headers=long_agent)
    with pytest.raises(anthropic.BadRequestError, match="longer than 256 characters"):
        claude.messages.create(model="claude-sonnet-5", max_tokens=10, messages=MESSAGES)


def test_a_nul_in_a_label_is_a_bad_request_never_stored(gw):
    """PostgreSQL cannot store a NUL: one in an event would fail every event of its batch."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="'user' contains a NUL character"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                       user="alice\x00")
    assert gw.chat("gpt-4o-mini", "Hi").status_code == 200


def test_metrics_label_only_configured_models(gw):
    junk = "junk-model-" + "z" * 5000
    assert gw.chat(junk, "Hi", key=None).status_code == 401
    assert gw.chat(junk[:200], "Hi").status_code == 404
    # The provider says it served "gpt-4o-mini-2024-07-18", a name the config does not know.
    assert gw.chat("gpt-4o-mini", "Hi").status_code == 200
    r = gw.get("/metrics", key=ADMIN)
    assert r.status_code == 200
    assert "junk-model" not in r.text and "2024-07-18" not in r.text
    labels = set(re.findall(r'model="([^"]*)"', r.text))
    assert {"gpt-4o-mini", "other"} <= labels  # "other": the keyless refusals
    assert labels <= {"gpt-4o-mini", "claude-sonnet-5", "other"}
