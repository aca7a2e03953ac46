"""Connections: a client that stalls mid-body is cut off, and a crowd of them, with a key or
without, cannot lock a real request out of the gateway."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from conftest import FAKE_KEYS, MODELS_TOML, Gateway, providers_toml, start_gateway, stop_gateway
from tokometer import config

STALLED = 1_100
BODY = json.dumps({"model": "gpt-4o-mini",
                   "messages": [{"role": "user", "content": "x" * 200}]}).encode()


@contextlib.contextmanager
def open_files_limit(soft: int) -> Iterator[None]:
    """Run with another soft open-file limit (children inherit it; open files stay open)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, before[1]), before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def half_sent(gw: Gateway, key: str | None) -> socket.socket:
    """A connection that sent its headers and half its body, and then stalls."""
    port = int(gw.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
                 f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
                 .encode() + BODY[:len(BODY) // 2])
    return sock


def response_of(sock: socket.socket, timeout: float) -> tuple[int, dict]:
    """The status and JSON body the gateway answered on `sock`, read until it closes."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.fixture(scope="module")
def crowded(upstream, tmp_path_factory) -> Iterator[Gateway]:
    """A gateway started under the soft open-file limit of 1,024 many systems ship, with a
    body deadline well beyond the test's, so stalled connections stay stalled while it runs."""
    with open_files_limit(1024):
        gw = start_gateway(tmp_path_factory.mktemp("crowded"),
                           "body_timeout = 120\n" + providers_toml(upstream) + MODELS_TOML,
                           env=FAKE_KEYS)
    yield gw
    stop_gateway(gw)


@pytest.mark.parametrize("with_key", [False, True], ids=["keyless", "with a key"])
def test_a_crowd_of_stalled_bodies_does_not_lock_out_a_real_request(crowded, with_key):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with open_files_limit(hard), contextlib.ExitStack() as stalled_ones:  # for our own sockets
        stalled = [stalled_ones.enter_context(half_sent(crowded, crowded.key if with_key
                                                        else None)) for _ in range(STALLED)]
        client = openai.OpenAI(base_url=crowded.url + "/v1", api_key=crowded.key,
                               max_retries=0, timeout=15)
        t0 = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "still there?"}])
        assert raw.parse().choices[0].message.content
        assert time.monotonic() - t0 < 15
        assert crowded.event(raw.headers["x-tokometer-event-id"])["status"] == 200
        if with_key:  # they were held open all along, not dropped to make room
            for sock in stalled[:: STALLED // 10]:
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)


@pytest.fixture(scope="module")
def impatient(upstream, tmp_path_factory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("impatient"),
                       "body_timeout = 1\n" + providers_toml(upstream) + MODELS_TOML,
                       env=FAKE_KEYS)
    yield gw
    stop_gateway(gw)


def test_a_stalled_body_is_cut_off_with_a_408(impatient):
    sock = half_sent(impatient, impatient.key)
    t0 = time.monotonic()
    status, body = response_of(sock, timeout=15)
    sock.close()
    assert status == 408
    assert 1 <= time.monotonic() - t0 < 10
    assert body["error"]["type"] == "request_timeout"
    assert "server.body_timeout" in body["error"]["message"]


def test_a_trickled_body_is_cut_off_too(impatient):
    """The deadline is for the whole body, not between its bytes."""
    sock = half_sent(impatient, impatient.key)
    t0 = time.monotonic()
    with contextlib.suppress(OSError):  # the gateway may close on us mid-trickle
        for byte in BODY[len(BODY) // 2:-1]:
            if time.monotonic() - t0 > 4:
                break
            sock.sendall(bytes([byte]))
            time.sleep(0.1)  # a slow client, one byte at a time
    status, _ = response_of(sock, timeout=15)
    sock.close()
    assert status == 408
    assert time.monotonic() - t0 < 10


def test_a_stalled_keyless_body_is_answered_in_bounded_time(impatient):
    sock = half_sent(impatient, None)
    status, body = response_of(sock, timeout=15)
    sock.close()
    assert status == 401 and body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("value", ["0", "-1", '"30"'])
def test_body_timeout_must_be_a_positive_number(tmp_path: Path, value):
    path = tmp_path / "t.toml"
    path.write_text(f"[server]\nbody_timeout = {value}\n")
    with pytest.raises(config.ConfigError, match="body_timeout"):
        config.load(path)
