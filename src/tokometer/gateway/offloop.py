"""Store work for the gateway's side endpoints, kept off the event loop.

One connection per user, one call at a time on it, each on a worker thread. A store that
fails (locked, read-only, corrupt) is a LedgerError here, so the client gets it in its shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from ..errors import LedgerError
from ..ledger.store import Store

_P = ParamSpec("_P")
_T = TypeVar("_T")


class OffLoop:
    def __init__(self, store: Store):
        self._store = store
        self._lock = asyncio.Lock()

    async def run(self, fn: Callable[Concatenate[Store, _P], _T],
                  *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """fn(store, *args, **kwargs) on a thread; calls on this store never overlap."""
        async with self._lock:
            try:
                return await asyncio.to_thread(fn, self._store, *args, **kwargs)
            except self._store.Error as e:
                raise LedgerError(f"the store failed: {e}") from e
