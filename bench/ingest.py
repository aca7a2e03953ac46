"""Ingest's speed: readings per second through a running gateway (`tokometer serve`, one
worker, SQLite), as OTLP/HTTP protobuf spans and as CloudEvents batches, against the ledger's
own appends of the same number of events (the direct call: what each reading must end as),
in the same run.

    .venv/bin/python bench/ingest.py                    # 40,000 readings each way
    .venv/bin/python bench/ingest.py --readings 10000   # a quick look

Batches of BATCH readings, CLIENTS sent at a time; every reading is new (no replays), priced
by the config's tariff, and charged to a budget.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from ledger import TEMPLATE  # bench/ledger.py's event
from tokometer.events import new_event_id, rfc3339
from tokometer.ledger import open_ledger, open_store
from tokometer.ledger.signer import load_signer
from tokometer.policy import create_key

BATCH, CLIENTS = 500, 4
CONFIG = """[server]
port = {port}
workers = 1
store = "sqlite:///{store}"
signing_key = "{key}"

[[providers]]
name = "openai"
api = "openai"
base_url = "http://127.0.0.1:9/v1"

[[models]]
name = "gpt-4o-mini"
routes = [{{ provider = "openai", model = "gpt-4o-mini" }}]
price = {{ input = 0.15, cache_read = 0.075, cache_write = 0.15, output = 0.6 }}

[[budgets]]
tenant = "bench"
limit = 1000000
unit = "USD"
period = "month"
"""


def spans(first: int, count: int) -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    for i in range(first, first + count):
        ids = {"trace_id": (i + 1).to_bytes(16, "big"), "span_id": (i + 1).to_bytes(8, "big")}
        span = scope.spans.add(**ids, name="chat gpt-4o-mini", start_time_unix_nano=now,
                               end_time_unix_nano=now + 900_000_000)
        span.attributes.extend([
            KeyValue(key=k, value=AnyValue(**{"string_value" if isinstance(v, str)
                                              else "int_value": v}))
            for k, v in (("gen_ai.operation.name", "chat"), ("gen_ai.provider.name", "openai"),
                         ("gen_ai.request.model", "gpt-4o-mini"),
                         ("gen_ai.usage.input_tokens", 1200 + i % 7),
                         ("gen_ai.usage.output_tokens", 300))])
    return request.SerializeToString()


def cloudevents(first: int, count: int) -> bytes:
    return orjson.dumps([{
        "specversion": "1.0", "id": f"r-{i}", "source": "/bench", "type": "tokometer.usage.v1",
        "data": {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1200 + i % 7,
                 "output_tokens": 300, "duration_ms": 900}} for i in range(first, first + count)])


async def send(url: str, key: str, path: str, media: str, bodies: list[bytes]) -> float:
    queue = list(bodies)
    async with httpx.AsyncClient(timeout=120) as client:
        async def worker() -> None:
            while queue:
                answer = await client.post(url + path, content=queue.pop(), headers={
                    "authorization": f"Bearer {key}", "content-type": media})
                assert answer.status_code == 200, answer.text
                assert "rejected=0" in answer.headers["x-tokometer-ingest"], answer.headers

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        return time.perf_counter() - t0


async def direct(directory: Path, n: int) -> float:
    """The ledger's own appends of n events, 512 at a time (bench/ledger.py's way)."""
    ledger = open_ledger(directory / "direct.db", load_signer(directory / "key.pem"))
    ledger.start()
    now = rfc3339(datetime.now(UTC))
    t0 = time.perf_counter()
    for start in range(0, n, 512):
        await asyncio.gather(*(ledger.append(replace(TEMPLATE, id=new_event_id(), time=now))
                               for _ in range(min(512, n - start))))
    took = time.perf_counter() - t0
    await ledger.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=40_000)
    n = parser.parse_args().readings
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        port = 4000 + os.getpid() % 1000
        config = directory / "tokometer.toml"
        config.write_text(CONFIG.format(port=port, store=directory / "t.db",
                                        key=directory / "key.pem"))
        gateway = subprocess.Popen([sys.executable, "-m", "tokometer.cli", "serve", "--config",
                                    str(config), "--no-launch"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the gateway did not start"
                    time.sleep(0.1)
            with open_store(directory / "t.db") as store:
                key, _ = create_key(store, "bench", "bench", None)
            reference = asyncio.run(direct(directory, n))
            print(f"{n:,} readings, batches of {BATCH}, {CLIENTS} at a time; {os.cpu_count()} "
                  f"cores\n{'way':<22} {'readings/s':>11} {'vs direct':>10}")
            print(f"{'ledger append (direct)':<22} {n / reference:>11,.0f} {'1.00':>10}")
            for name, path, media, make, offset in (
                    ("OTLP protobuf", "/v1/otlp/v1/traces", "application/x-protobuf", spans, 0),
                    ("CloudEvents batch", "/v1/events", "application/cloudevents-batch+json",
                     cloudevents, n)):
                bodies = [make(offset + i, min(BATCH, n - i)) for i in range(0, n, BATCH)]
                took = asyncio.run(send(url, key, path, media, bodies))
                print(f"{name:<22} {n / took:>11,.0f} {reference / took:>10.2f}")
        finally:
            os.killpg(gateway.pid, signal.SIGTERM)
            gateway.wait(30)


if __name__ == "__main__":
    main()
