"""The hand-off every ledger shares, from the event loop to one writer thread.

The loop only enqueues and awaits a future; the thread drains whatever has queued up, commits
it in one transaction (a group commit), and resolves every waiting future at once, so a
response waits until its event is durable without the loop ever blocking on the store and
without one transaction per request. A store writes its batch (`_write`) and does its periodic
work (`_after`: deriving, signing) in its own way.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import LedgerError
from ..events import Event
from .rows import event_row
from .store import Claims, Store, Writes

if TYPE_CHECKING:  # cryptography loads where signing happens, not in every CLI command
    from .signer import Signer, TreeHead

log = logging.getLogger("tokometer.ledger")

_MAX_BATCH = 2048
TREE_HEAD_SECONDS = 2.0  # a signed tree head at least this often while events arrive
_STOP = object()  # the last message: write what is queued, sign, and end


@dataclass(frozen=True, slots=True)
class Append:
    """An event's row to commit, with what must commit with it; `done` resolves once it is
    durable."""

    row: list[Any]
    along: Writes
    claims: Claims
    done: asyncio.Future[str]


@dataclass(frozen=True, slots=True)
class _Barrier:
    """Resolves once every append queued before it has been committed (or has failed)."""

    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class _Sign:
    """A tree head to sign now; `done` resolves with it."""

    done: asyncio.Future[TreeHead]


class QueuedWriter:
    idle_seconds = 0.1  # how long the thread waits for a message before its periodic work
    _store: Store

    def __init__(self, signer: Signer):
        self.signer = signer
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._signed_at = 0.0  # monotonic time of the last signing

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for target, name in self._thread_targets():
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    async def append(self, event: Event, along: Writes = (), claims: Claims = ()) -> str:
        """Returns once the event is committed, in one transaction with the statements
        `along` (a budget's settling), with its id; raises LedgerError if it could not be.
        With `claims`, a replay's is not committed: the id is the first recording's."""
        assert self._loop is not None, "the ledger's start() was not called"
        done: asyncio.Future[str] = self._loop.create_future()
        self._queue.put(Append(event_row(event), along, claims, done))
        return await done

    async def committed(self) -> None:
        """Returns once every event appended before the call has been committed (or has
        failed): what each settled with it is in the store."""
        assert self._loop is not None, "the ledger's start() was not called"
        done = self._loop.create_future()
        self._queue.put(_Barrier(done))
        await done

    async def sign_now(self) -> TreeHead:
        """A tree head signed over everything committed so far (the latest, if it already is)."""
        assert self._loop is not None, "the ledger's start() was not called"
        done: asyncio.Future[TreeHead] = self._loop.create_future()
        self._queue.put(_Sign(done))
        return await done

    async def close(self) -> None:
        if self._threads:
            self._queue.put(_STOP)
            self._stopping.set()
            for thread in self._threads:
                await asyncio.to_thread(thread.join)
            self._threads = []
        self._store.close()

    # --- what a store does its own way ------------------------------------------------------

    def _thread_targets(self) -> list[tuple[Callable[[], None], str]]:
        return [(self._write_forever, "ledger-writer")]

    def _prepare(self) -> None:
        """On the writer thread, before the first batch."""

    def _write(self, items: list[Append]) -> list[str]:
        """Commit the items' rows as the log's next leaves, with their `along` (write_along)
        in the same transaction, but not those whose claims were taken before; the id of the
        event holding each item's reading. The store's Error if it could not."""
        raise NotImplementedError

    def _after(self, signs: list[asyncio.Future[TreeHead]], stop: bool) -> None:
        """After each batch (or idle wait): derive and sign as due; hand heads to `signs`."""
        raise NotImplementedError

    def _signing_due(self, signs: list[asyncio.Future[TreeHead]], stop: bool) -> bool:
        """Someone asked for a head, the writer is stopping, or the last one is old."""
        return bool(signs) or stop or time.monotonic() - self._signed_at >= TREE_HEAD_SECONDS

    # --- the thread -------------------------------------------------------------------------

    def _write_forever(self) -> None:
        self._prepare()
        while True:
            try:
                batch = [self._queue.get(timeout=self.idle_seconds)]
            except queue.Empty:
                batch = []
            while 0 < len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(message is _STOP for message in batch)
            appends = [message for message in batch if isinstance(message, Append)]
            if appends:
                self._commit(appends)
            if barriers := [m.done for m in batch if isinstance(m, _Barrier)]:
                self._call(_resolve, barriers, None)
            self._after([message.done for message in batch if isinstance(message, _Sign)], stop)
            if stop:
                return

    def _commit(self, items: list[Append]) -> None:
        try:
            recorded = self._write(items)
        except LedgerError as e:  # the store is unreachable: no row of the batch can be written
            log.error("could not record %d event(s): %s", len(items), e.message)
            self._resolve(items, e)
            return
        except Exception as e:  # the store's Error, or a value it cannot hold (the thread
            # must never die: every later request would wait for it)
            if len(items) > 1:  # one bad row must not sink its batch: retry them one by one
                for item in items:
                    self._commit([item])
                return
            log.error("could not record event %s: %s", items[0].row[0], e)
            self._resolve(items, LedgerError(f"could not record the event: {e}"))
            return
        self._call(_hand_over, [item.done for item in items], recorded)

    def _resolve(self, items: list[Append], error: Exception) -> None:
        self._call(_resolve, [item.done for item in items], error)

    def _hand_over(self, waiting: list[asyncio.Future[TreeHead]], head: TreeHead) -> None:
        if waiting:
            self._call(_hand_over, waiting, [head] * len(waiting))

    def _fail_signs(self, waiting: list[asyncio.Future[TreeHead]], why: str) -> None:
        if waiting:
            self._call(_resolve, waiting, LedgerError(why))

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)


def _hand_over(futures: list[asyncio.Future[Any]], results: list[Any]) -> None:
    for f, result in zip(futures, results, strict=True):
        if not f.done():
            f.set_result(result)


def _resolve(futures: list[asyncio.Future[Any]], error: Exception | None) -> None:
    for f in futures:
        if not f.done():
            if error is None:
                f.set_result(None)
            else:
                f.set_exception(error)


def write_along(store: Store, writes: Writes) -> None:
    """A batch's statements, one executemany per distinct statement (they commute: each
    request's touch rows of its own, or add to a sum), its rows in their parameters' order:
    transactions that update the same rows (a settling and a reservation on PostgreSQL)
    lock them in one order, and never deadlock."""
    by_sql: dict[str, list[tuple[Any, ...]]] = {}
    for sql, params in writes:
        by_sql.setdefault(sql, []).append(params)
    for sql, rows in by_sql.items():
        store.executemany(sql, sorted(rows))
