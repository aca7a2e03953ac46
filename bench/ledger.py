"""The verifiable ledger at scale: appends per second (hashing + group commit), receipt time
and `ledger audit` time at a million events.

    .venv/bin/python bench/ledger.py                  # 1,000,000 events (a few minutes)
    .venv/bin/python bench/ledger.py --events 100000  # a quick look
    .venv/bin/python bench/ledger.py --events 100000 --postgres   # on a throwaway cluster

Events are appended through the real ledger (writer thread, Merkle leaves and nodes, signed
heads; on PostgreSQL each batch sequenced under the log's lock with its rollups),
CONCURRENCY at a time as a busy gateway would.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from tokometer.config import PostgresURL
from tokometer.events import Event, new_event_id, rfc3339
from tokometer.ledger import Ledger, open_ledger, open_store
from tokometer.ledger.audit import audit
from tokometer.ledger.receipts import build_receipt, verify_receipt
from tokometer.ledger.signer import load_signer

CONCURRENCY = 512
TEMPLATE = Event(
    id="", time="", duration_ms=12.345, ttft_ms=3.2, key_id="01a22120-76f9-7501-a155-39ffb761",
    tenant="acme", app="support-bot", agent="planner", task="task-42", end_user="u-1",
    consumer_region="DE", api="openai", operation="chat", stream=True, provider="openai",
    provider_region="US", model_requested="gpt-4o-mini", model="gpt-4o-mini-2024-07-18",
    model_origin="US", input_tokens=2006, cache_read_tokens=1920, cache_write_tokens=0,
    output_tokens=300, reasoning_tokens=192, usage_source="reported", counted_input_tokens=2006,
    counted_output_tokens=300, cost=Decimal("0.00022245"), currency="USD",
    price_ref="genai-prices 0.0.40:openai/gpt-4o-mini", status=200, error_type=None,
    finish_reason="stop")


async def append_all(ledger: Ledger, n: int) -> float:
    """Seconds to append n events, CONCURRENCY in flight."""
    now = rfc3339(datetime.now(UTC))
    queue = iter(range(n))
    done = 0
    t0 = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        for i in queue:
            await ledger.append(dataclasses.replace(TEMPLATE, id=new_event_id(), time=now,
                                                    output_tokens=i % 1000))
            done += 1
            if done % 100_000 == 0:
                print(f"  {done:,} appended ({done / (time.perf_counter() - t0):,.0f}/s)",
                      file=sys.stderr, flush=True)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - t0


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--receipts", type=int, default=1000, help="receipts to time")
    ap.add_argument("--postgres", action="store_true",
                    help="on a throwaway PostgreSQL cluster (tests/postgres.py) instead of SQLite")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tokometer-ledger-bench-"))
    cluster = None
    store: Path | PostgresURL = work / "tokometer.db"
    if args.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from postgres import remove, start_cluster

        cluster = start_cluster()
        store = PostgresURL(cluster.new_database())
    try:
        return await _measure(args, work, store)
    finally:
        if cluster is not None:
            remove(cluster)


async def _measure(args: argparse.Namespace, work: Path, store: Path | PostgresURL) -> int:
    signer = load_signer(work / "key.pem", None)
    ledger = open_ledger(store, signer)
    ledger.start()
    seconds = await append_all(ledger, args.events)
    head = await ledger.sign_now()
    await ledger.close()
    print(f"appends: {args.events:,} events in {seconds:.1f} s = "
          f"{args.events / seconds:,.0f} events/s (hashing, Merkle nodes, group commit)")

    conn = open_store(store)
    ids = [r[0] for r in conn.execute("SELECT id FROM events")]
    sample = random.Random(1).sample(ids, min(args.receipts, len(ids)))
    t0 = time.perf_counter()
    receipts = [build_receipt(conn, event_id) for event_id in sample]
    per_receipt = (time.perf_counter() - t0) / len(sample) * 1000
    assert all(r is not None and verify_receipt(r, signer.public_key) == [] for r in receipts)
    print(f"receipt at {head.tree_size:,} events: {per_receipt:.3f} ms each "
          f"(mean of {len(sample):,}; proof of {len(receipts[0]['inclusion_proof'])} hashes)")

    t0 = time.perf_counter()
    report = audit(conn, signer.public_key)
    seconds = time.perf_counter() - t0
    assert report.clean, report.first()
    print(f"ledger audit of {report.events:,} events and {report.heads:,} signed heads: "
          f"{seconds:.1f} s (clean)")
    if isinstance(store, Path):
        print(f"store: {store.stat().st_size / 1e6:,.0f} MB ({work})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
