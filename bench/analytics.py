"""Reports at scale: generate N events (10M by default) with realistic spread, then time
`report`, `rankings`, `flows` and the dashboard's overview page, all answered from rollups.

    .venv/bin/python bench/analytics.py                     # 10,000,000 events (~9 min)
    .venv/bin/python bench/analytics.py --events 1000000    # a quicker look
    .venv/bin/python bench/analytics.py --store PATH/t.db   # the questions again, same store

Events and their rollups are written in bulk, in time order as a gateway writes them, with the
writer's own functions (event rows, `upserts`); worker processes make the rows while the main
one writes. The Merkle log is left out here, as bench/ledger.py measures it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from tokometer.analytics import flows, rankings, report
from tokometer.events import Event, rfc3339
from tokometer.gateway.dashboard import _html, _overview
from tokometer.ledger import open_store
from tokometer.ledger.rollups import ROLLUPS, upserts
from tokometer.ledger.rows import event_row
from tokometer.ledger.schema import INSERT_EVENT

WEEKS = 12
MODELS = [("gpt-4o-mini", "US"), ("gpt-4.1", "US"), ("claude-sonnet-4", "US"),
          ("deepseek-chat", "CN"), ("qwen-plus", "CN"), ("kimi-k2", "CN"), ("glm-4.5", "CN"),
          ("mistral-large", "FR"), ("gemini-2.5-flash", "US"), ("llama-3.3-70b", "US")]
REGIONS = ["US", "DE", "FR", "CN", "SG", "JP", "GB", "BR", None]
PROVIDERS = [("openai", "US"), ("azure", "DE"), ("deepseek", "CN"), ("together", "US"),
             ("bedrock", "SG")]
CHUNK = 50_000


def events(first: int, n: int, total: int, end: datetime) -> list[list]:
    """Event rows `first`..`first + n` of `total`, in time order (as a gateway writes them)
    over the WEEKS before `end`."""
    rnd = random.Random(first)
    start = end - timedelta(weeks=WEEKS)
    step = (end - start).total_seconds() / total
    rows = []
    for i in range(n):  # apps and home countries belong to tenants, providers to models
        m = rnd.randrange(len(MODELS))
        model, origin = MODELS[m]
        tenant = rnd.randrange(50)
        provider = (m + rnd.randrange(2)) % len(PROVIDERS)
        at = start + timedelta(seconds=(first + i) * step)
        inp = rnd.randrange(100, 8000)
        rows.append(event_row(Event(
            id=f"bench-{first + i:012d}", time=rfc3339(at), duration_ms=850.0,
            ttft_ms=120.0, key_id=f"k{tenant}", tenant=f"tenant-{tenant}",
            app=f"app-{tenant}-{rnd.randrange(4)}",
            agent=rnd.choice([None, "planner", "coder", "reviewer"]), task=None,
            end_user=None, consumer_region=REGIONS[tenant % len(REGIONS)], api="openai",
            operation="chat", stream=True, provider=PROVIDERS[provider][0],
            provider_region=PROVIDERS[provider][1], model_requested=model, model=model,
            model_origin=origin, input_tokens=inp, cache_read_tokens=inp // 3,
            cache_write_tokens=0, output_tokens=rnd.randrange(10, 1500), reasoning_tokens=0,
            usage_source="reported", counted_input_tokens=None, counted_output_tokens=None,
            cost=Decimal(rnd.randrange(1, 10**6)) / 10**8, currency="USD", price_ref=None,
            status=200, error_type=None, finish_reason="stop")))
    return rows


def chunk(task: tuple[int, int, int, datetime]) -> tuple[list[list], list]:
    """One chunk's event rows and its rollup upserts, made in a worker process."""
    rows = events(*task)
    return rows, upserts(rows)


def timed(label: str, fn, *args, **kwargs):
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        elapsed = time.perf_counter() - t0
        best = elapsed if best is None else min(best, elapsed)
    print(f"{label:55} {best * 1000:8.1f} ms (best of 3; {len(result):,} rows)", flush=True)
    return result


def generate(conn, n: int) -> None:
    """n events in time order, rows made by worker processes while this one writes them."""
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    t0 = time.perf_counter()
    done = 0
    tasks = [(first, min(CHUNK, n - first), n, end) for first in range(0, n, CHUNK)]
    with multiprocessing.Pool(os.cpu_count() or 2) as pool:
        for rows, rollups in pool.imap(chunk, tasks):
            with conn.transaction():
                conn.executemany(INSERT_EVENT, rows)
                for statement, params in rollups:
                    conn.executemany(statement, params)
            done += len(rows)
            if done % 1_000_000 == 0 or done == n:
                print(f"  {done:,} events ({done / (time.perf_counter() - t0):,.0f}/s)",
                      file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--store", type=Path,
                    help="time the queries again on a store an earlier run generated")
    args = ap.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="tokometer-analytics-bench-")) / "t.db"
    fresh = not store.exists()
    conn = open_store(store, create=fresh)
    if fresh:
        conn.execute("PRAGMA wal_autocheckpoint=10000")
        generate(conn, args.events)
    events_stored = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    days = sum(conn.execute(f"SELECT COUNT(*) FROM {name} WHERE period = 'day'").fetchone()[0]
               for name in ROLLUPS)
    print(f"{events_stored:,} events over {WEEKS} weeks; {days:,} daily rollup rows in all; "
          f"store {store.stat().st_size / 1e9:.1f} GB ({store.parent})")
    timed("report --by tenant,model --period week", report, conn, ["tenant", "model"],
          period="week")
    timed("report --by vendor --period day --top 5", report, conn, ["vendor"], period="day",
          top=5)
    timed("rankings --by model --weeks 8", rankings, conn, "model", 8)
    timed("rankings --by origin --weeks 8", rankings, conn, "origin", 8)
    timed("flows", flows, conn)
    timed("dashboard overview page (numbers, chart, HTML)",
          lambda: _html(200, "page.html", **_overview(conn, {}))[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
