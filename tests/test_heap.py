"""A started gateway keeps its long-lived heap out of the cyclic collector's way."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from tokometer import config
from tokometer.gateway import app


def test_a_started_gateway_freezes_what_it_loaded_and_collects_less_often(tmp_path: Path):
    path = tmp_path / "tokometer.toml"
    path.write_text(f'[server]\nstore = "sqlite:///{tmp_path}/t.db"\ndata_dir = "{tmp_path}"\n')
    gc.unfreeze()  # whatever an earlier test in this process froze
    threshold = gc.get_threshold()
    gateway = app.Gateway(config.load(path))

    async def started() -> tuple[int, tuple[int, int, int]]:
        await gateway.start()
        try:
            return gc.get_freeze_count(), gc.get_threshold()
        finally:
            await gateway.stop()

    try:
        now_frozen, now = asyncio.run(started())
        # the catalog and the services (thousands of objects) left the collector's care...
        assert now_frozen > 10_000
        # ...and its youngest generation is collected ten times less often; the older ones
        # keep their cadence
        assert now == (app._GC_YOUNGEST, *threshold[1:]) and app._GC_YOUNGEST >= 10 * 700
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
