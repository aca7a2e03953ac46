"""The measured reasons behind choices the source explains in words, measured again here so
the numbers stay true (the docstrings say why and point here; this says how much).

    .venv/bin/python bench/hot_path.py

- pricing: genai-prices' own calculator against the flat-rate fast path (catalog/pricing.py),
  with and without a served service tier;
- the leaf's canonical JSON (ledger/canonical.py) against the rfc8785 reference encoder;
- loading genai-prices' catalog (why catalog/ imports it on first use).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import genai_prices
import rfc8785

from tokometer.catalog import Pricer
from tokometer.catalog.pricing import genai_usage
from tokometer.config import Model, Provider, Route
from tokometer.events import Usage
from tokometer.ledger.canonical import canonical_json

EVENT = {"id": "0193a4c2-7b5e-7c1a-9e1f-3d2a1b0c9d8e", "time": "2026-12-03T10:00:00.000Z",
         "duration_ms": 812.5, "ttft_ms": 120.0, "tenant": "acme", "app": "support",
         "model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 310, "stream": True,
         "cost": "0.000366", "currency": "USD", "status": 200, "leaf_index": 41, "agent": None}


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    fn()  # warm caches
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    route = Route(Provider("openai", "openai", "http://x", None, None, "US", None, None),
                  "gpt-4o-mini")
    model = Model("gpt-4o-mini", (route,), None, None, None, None)
    pricer, at = Pricer("USD"), datetime.now(UTC)
    usage = Usage(input_tokens=1200, output_tokens=310)
    rows = [
        ("price: genai-prices' calculator", per_call_us(
            lambda: genai_prices.calc_price(genai_usage(usage), "gpt-4o-mini",
                                            provider_id="openai", genai_request_timestamp=at),
            2_000)),
        ("price: tokometer's fast path", per_call_us(
            lambda: pricer.price(model, route, usage, at), 20_000)),
        ("price: fast path, served tier", per_call_us(
            lambda: pricer.price(model, route, usage, at, served="gpt-4o-mini-2024-07-18",
                                 service_tier="default"), 20_000)),
        ("leaf JSON: rfc8785 reference", per_call_us(lambda: rfc8785.dumps(EVENT), 20_000)),
        ("leaf JSON: tokometer", per_call_us(lambda: canonical_json(EVENT), 20_000)),
    ]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import genai_prices.data_snapshot as d; "
                    "d.get_snapshot()"], check=True)
    rows.append(("load genai-prices' catalog (a fresh process), ms",
                 (time.perf_counter() - start) * 1000))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:10.1f}{'' if name.endswith('ms') else ' µs'}")


if __name__ == "__main__":
    main()
