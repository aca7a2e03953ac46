"""Where a request's CPU goes inside one gateway process, thread by thread: the gateway app
driven in-process (no granian, no wrk) at a fixed concurrency against nginx, and the CPU each
thread of this process spent per request (the event loop's, the ledger writer's, pyreqwest's).
With --profile, cProfile's view of the event loop's thread as well.

    .venv/bin/python bench/gateway_threads.py --mode sse --requests 8000
    .venv/bin/python bench/gateway_threads.py --mode json --profile | head -60

The loop's figure includes this script's own client side (a few µs per request). Needs nginx
(bench/overhead.py serves the same answers); traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop

from overhead import nginx, routes_toml, stop
from tokometer import config
from tokometer.gateway.app import Gateway

CONFIG = """
[server]
store = "sqlite:///{work}/bench.db"
data_dir = "{work}/data"
"""


def thread_cpu() -> Counter[str]:
    """CPU seconds so far per thread of this process, by name: the loop's is `loop`; Python's
    own threads (the ledger writer, to_thread's pool) are all `python` to the kernel."""
    tick, main = os.sysconf("SC_CLK_TCK"), threading.main_thread().native_id
    out: Counter[str] = Counter()
    for tid in os.listdir("/proc/self/task"):
        head, _, rest = Path(f"/proc/self/task/{tid}/stat").read_text().rpartition(")")
        name = "loop" if int(tid) == main else head.partition("(")[2]
        fields = rest.split()
        out[name] += (int(fields[11]) + int(fields[12])) / tick
    return out


async def run(app: Gateway, key: str, mode: str, requests: int, concurrency: int,
              profile: cProfile.Profile | None) -> None:
    body = json.dumps({"model": f"bench-{mode}", "stream": mode == "sse",
                       "messages": [{"role": "user", "content": "Say hello."}]}).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {key}".encode()),
                         (b"content-length", str(len(body)).encode())]}
    never = asyncio.Event()  # the client stays until the answer ends

    async def one() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await never.wait()
            return {"type": "http.disconnect"}

        status: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        assert status == [200], status

    for _ in range(200):  # warm up: connections, the tokenizer, the price
        await one()
    gate = asyncio.Semaphore(concurrency)

    async def gated() -> None:
        async with gate:
            await one()

    before, start = thread_cpu(), time.perf_counter()
    if profile is not None:
        profile.enable()
    await asyncio.gather(*(gated() for _ in range(requests)))
    if profile is not None:
        profile.disable()
    elapsed, spent = time.perf_counter() - start, thread_cpu() - before
    print(f"{mode}: {requests / elapsed:,.0f} requests/s in-process at concurrency "
          f"{concurrency}; CPU ms per request: {sum(spent.values()) * 1000 / requests:.3f} = "
          + " + ".join(f"{name} {seconds * 1000 / requests:.3f}"
                       for name, seconds in spent.most_common()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("json", "sse"), default="sse")
    ap.add_argument("--requests", type=int, default=8000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--sse-events", type=int, default=21)
    ap.add_argument("--profile", action="store_true", help="cProfile the loop's thread")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tokometer-threads-"))
    server, port = nginx(work, args.sse_events)
    try:
        path = work / "tokometer.toml"
        path.write_text(CONFIG.format(work=work) + routes_toml(port))
        key = json.loads(subprocess.run(
            [sys.executable, "-m", "tokometer.cli", "keys", "create", "--config", str(path),
             "--tenant", "bench", "--app", "load", "--json"],
            check=True, capture_output=True, text=True).stdout)["key"]
        profile = cProfile.Profile(time.thread_time) if args.profile else None  # CPU, not GIL waits

        async def measure() -> None:
            app = Gateway(config.load(path))
            await app.start()
            try:
                await run(app, key, args.mode, args.requests, args.concurrency, profile)
            finally:
                await app.stop()

        uvloop.run(measure())
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(40)
    finally:
        stop(server)


if __name__ == "__main__":
    main()
