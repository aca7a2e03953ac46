"""Attacks on usage ingest (POST /v1/otlp/v1/traces, POST /v1/events): bodies cheap to send
and dear to read (gzip, millions of empty entries), names without end, and a budget charged
by a reading while no request has come for a whole period."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from conftest import Gateway, make_event, start_gateway, stop_gateway
from test_ingest import ADMIN, CONFIG, TRACES
from tokometer import config
from tokometer.config import Budget, Model, Provider, Route, Scope
from tokometer.errors import PolicyError
from tokometer.events import Usage
from tokometer.impact import Impacts
from tokometer.policy import Consumer, Need
from tokometer.policy.budgets import BudgetState, period_bounds
from tokometer.policy.guard import Guard

LIMIT = 9_900_000  # a body's bytes once decompressed, under server.max_body_bytes (10 MB)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("attack-ingest"), CONFIG,
                            env={"INGEST_ADMIN": ADMIN})
    yield gateway
    stop_gateway(gateway)


def post_gzip(gw: Gateway, body: bytes, media: str, timeout: float = 60) -> httpx.Response:
    return gw.post(TRACES, gzip.compress(body), timeout=timeout,
                   headers={"content-type": media, "content-encoding": "gzip"})


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


@pytest.mark.parametrize("body, media", [
    (b"\x0a\x00" * (LIMIT // 2), "application/x-protobuf"),  # empty ResourceSpans
    (b'{"resourceSpans":[' + b",".join([b"{}"] * (LIMIT // 3)) + b"]}", "application/json"),
    (b'{"resource_spans":[' + b",".join([b"{}"] * (LIMIT // 3)) + b"]}", "application/json"),
    (b'{"resourceSpans":[{"scopeSpans":[' + b",".join([b"{}"] * (LIMIT // 3)) + b"]}]}",
     "application/json"),
], ids=["protobuf-resources", "json-resources", "json-snake-case", "json-scopes"])
def test_millions_of_empty_entries_are_refused_before_they_are_walked(
        gw: Gateway, body: bytes, media: str) -> None:
    # About 10 KB of gzip: millions of empty resource (or scope) spans hold no span, so the
    # span count let them through after seconds of walking them, one by one, on the event
    # loop (and ~1 GB of memory for protobuf's JSON parser); they are too many entries
    r = post_gzip(gw, body, media, timeout=5)
    assert r.status_code == 413, r.text
    assert "more than the 4096" in r.json()["error"]["message"]
    assert gw.get("/healthz").status_code == 200


def test_millions_of_spans_in_protobuf_are_still_refused(gw: Gateway) -> None:
    spans = b"\x12\x00" * (LIMIT // 2 - 8)
    resource = b"\x12" + _varint(len(spans)) + spans
    r = post_gzip(gw, b"\x0a" + _varint(len(resource)) + resource, "application/x-protobuf")
    assert r.status_code == 413 and "spans, more than the 4096" in r.json()["error"]["message"]


def test_a_small_gzip_body_is_decoded_off_the_event_loop(gw: Gateway) -> None:
    # ~27 KB of gzip, ~9 MB of OTLP/JSON: one span with 225,000 attributes, seconds for
    # protobuf's JSON parser. The body was read off the event loop only when it was longer
    # than 64 KB as sent, so every other request of the worker waited for it.
    attributes = b",".join([b'{"key":"k","value":{"intValue":"1"}}'] * (LIMIT // 44))
    body = (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c'
            b'0d0e0f10","spanId":"0102030405060708","startTimeUnixNano":"1","attributes":['
            + attributes + b"]}]}]}]}")
    done, waits = threading.Event(), []

    def probe() -> None:
        while not done.is_set():
            t0 = time.monotonic()
            assert gw.get("/healthz").status_code == 200
            waits.append(time.monotonic() - t0)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        t0 = time.monotonic()
        r = post_gzip(gw, body, "application/json")
        took = time.monotonic() - t0
    finally:
        done.set()
        prober.join()
    assert r.status_code == 200, r.text  # no GenAI span in it: nothing recorded
    # the health check answered all along, not once the ingest had ended
    assert max(waits) < max(took / 3, 0.3), (max(waits), took)


def test_a_charge_in_a_new_period_counts_before_the_next_request(tmp_path: Path) -> None:
    # A daily budget no request was admitted to since yesterday: its state still holds
    # yesterday's period. An ingested reading of today was not charged to it (its period did
    # not hold the time), and the next request then started today from nothing: admitted
    # past the limit the reading had (nearly) used up, while the ledger's sum says otherwise.
    path = tmp_path / "tokometer.toml"
    path.write_text(f'[server]\nstore = "sqlite:///{tmp_path}/t.db"\ndata_dir = "{tmp_path}"\n')
    now = datetime.now(UTC)
    budget = Budget("b1", Scope("tenant", "acme"), Decimal(100), "USD", "day")
    start, end = period_bounds("day", now - timedelta(days=1))
    state = BudgetState(budget, start, end, spent=Decimal(5))
    guard = Guard(config.load(path), {budget.id: state})
    guard.charge(make_event(tenant="acme", cost=Decimal(90), currency="USD"))
    assert state.status()["spent"] == "90"
    with pytest.raises(PolicyError) as refused:
        guard.admit(Consumer("k", "acme", "a", None), Need(10, Decimal(20)), now)
    assert refused.value.status == 402


def test_provider_names_from_readings_do_not_grow_memory_without_end() -> None:
    # Each ingested reading names its provider; the grid of each name was remembered for
    # good, a few hundred bytes a name: a key sending readings of random provider names
    # grew the worker's heap without bound
    impacts = Impacts()
    usage = Usage(input_tokens=10, output_tokens=10)

    def of(name: str) -> None:
        provider = Provider(name=name, api="ingest", base_url="", api_key_env=None,
                            api_key=None, region=None, price_provider=None, launch=None)
        route = Route(provider, "m")
        impacts.of(Model("m", (route,), None, None, None, None), route, "m", usage, 1.0)

    for i in range(2_000):  # the bounded caches fill up first
        of(f"warm-{i}")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            of(f"provider-{i:08d}-" + "x" * 200)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2_000_000, grown


def test_the_ingest_package_imports_on_its_own() -> None:
    # ingest/readings.py took its label bound from gateway/, whose package imports the
    # endpoints, which import ingest/: `import tokometer.ingest` first failed (a cycle)
    for module in ("tokometer.ingest", "tokometer.ingest.otlp", "tokometer.ingest.cloudevents"):
        done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-500:]
