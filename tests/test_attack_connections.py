"""Red-team: connections that never send a byte (a slowloris without the headers)."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import MINIMAL_CONFIG, Gateway, start_gateway, stop_gateway
from test_processes import the_worker

LIMIT = 1024  # the worker's open-file limit, hard and soft, as a unit file may set it
SILENT = 1_100
HEADER_TIMEOUT = 30  # seconds: granian's (hyper's) header_read_timeout, once a byte came


@pytest.fixture
def small(tmp_path) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path, MINIMAL_CONFIG)
    resource.prlimit(the_worker(gw), resource.RLIMIT_NOFILE, (LIMIT, LIMIT))
    yield gw
    stop_gateway(gw)


def test_connections_that_never_send_a_byte_do_not_lock_out_a_real_request(small):
    """A connection that sends headers slowly is cut off after 30 s (hyper's header timeout),
    but one that sends nothing at all is held for ever: enough of them (from one client, or
    left behind by clients that vanished) take every file the gateway may open, and it can
    accept no one, long after any header or body deadline. Here the worker may open 1,024
    files; 1,100 silent connections, and a real request 2 s after the header timeout."""
    port = int(small.url.rsplit(":", 1)[1])
    with contextlib.ExitStack() as silent:
        for _ in range(SILENT):
            silent.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(HEADER_TIMEOUT + 2)  # past every deadline the gateway has (none fits)
        t0 = time.monotonic()
        try:
            status = httpx.get(small.url + "/healthz", timeout=15).status_code
        except httpx.TransportError as e:
            status = repr(e)
        assert status == 200, f"a real request got {status} after {time.monotonic() - t0:.1f} s"
