"""Keeping the gateway's budgets in step with the store, off the event loop.

Budgets set at run time (CLI or admin API) and wallets' credit live in the store; every
second the gateway picks up changes, reads the spend of new budgets from the ledger, and
saves its in-flight reservations for `tokometer budgets status` in another process. When
processes share the store (shared.py) their reservations are already there, and only the
store knows what all of them spent.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from decimal import Decimal

from ..config import Budget
from ..errors import LedgerError
from ..events import Event
from ..ledger.store import Ledger, Store, Writes
from .budgets import all_budgets, budget_statuses, load_states, save_reservations
from .guard import Guard
from .shared import SharedGuard
from .wallets import WalletBudgets

SYNC_SECONDS = 0.5  # with the queries, a budget change reaches every process within a second
log = logging.getLogger("tokometer.policy")


class BudgetSync:
    def __init__(self, guard: Guard, conn: Store, config: tuple[Budget, ...], *,
                 shared: SharedGuard | None = None, ledger: Ledger | None = None,
                 wallets: WalletBudgets | None = None):
        self.guard = guard
        self._conn = conn
        self._config = config
        self._wallets = wallets
        self._shared = shared
        self._ledger = ledger  # whose appends settle this process's requests
        self._to_recount: set[str] = set()  # budgets taken up, their recount not yet done
        self._lock = asyncio.Lock()
        self._saved: dict[str, Decimal] = {}

    async def sync(self) -> None:
        """Take up budgets added, changed or removed in the store; save reservations."""
        async with self._lock:
            budgets = await asyncio.to_thread(self._budgets)
            wanted = {b.id: b for b in budgets}
            missing = self.guard.missing(wanted.values())
            fresh = (await asyncio.to_thread(load_states, self._conn, missing, datetime.now(UTC))
                     if missing else {})
            self.guard.update_budgets(wanted, fresh)
            if self._shared is not None:
                await self._recount(wanted, missing, self._shared)
            reserved = {i: s.reserved for i, s in self.guard.states.items()
                        if s.reserved and self._shared is None}
            if reserved or self._saved:  # unchanged non-zero ones too: they stay fresh
                await asyncio.to_thread(save_reservations, self._conn, reserved)
                self._saved = reserved

    def _budgets(self) -> list[Budget]:
        """The config's budgets, those set at run time, and the wallets'."""
        wallets = (self._wallets.budgets(self._conn, datetime.now(UTC))
                   if self._wallets is not None else [])
        return [*all_budgets(self._conn, self._config), *wallets]

    async def _recount(self, wanted: dict[str, Budget], missing: list[Budget],
                       shared: SharedGuard) -> None:
        """Recount the budgets just taken up, and those whose recount failed before."""
        self._to_recount.update(b.id for b in missing)
        self._to_recount &= wanted.keys()
        if self._to_recount:
            if self._ledger is not None:  # what settled before they were taken up
                await self._ledger.committed()
            await shared.recount([wanted[i] for i in sorted(self._to_recount)])
            self._to_recount.clear()

    async def statuses(self) -> list[dict[str, str | None]]:
        """Every budget's spend, reservations and what is left, across processes."""
        if self._shared is None:  # this process's own reckoning is the whole, and the latest
            return [state.status() for state in self.guard.states.values()]
        async with self._lock:
            return await asyncio.to_thread(
                lambda: budget_statuses(self._conn, self._budgets(), datetime.now(UTC)))

    async def status(self, budget_id: str) -> dict[str, str | None]:
        """One budget's spend, reservations and what is left, across processes."""
        return next(s for s in await self.statuses() if s["budget_id"] == budget_id)

    async def refunded(self, tenant: str) -> None:
        """A correction of the tenant's spend was recorded: its wallet's limit is worked out
        again now, as what the refund gave back is only the wallet's to say."""
        if self._wallets is not None:
            self._wallets.forget(tenant)
            try:
                await self.sync()
            except (self._conn.Error, LedgerError) as e:  # recorded: the next sync does it
                log.warning("budget sync after a refund failed (will retry): %s", e)

    def charging(self, event: Event) -> Writes:
        """What an event recorded with nothing reserved (a correction, an ingested reading)
        adds to a shared store's spend, to commit with it."""
        return () if self._shared is None else self._shared.charging(self.guard.states, event)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                await self.sync()
            except (self._conn.Error, LedgerError) as e:  # LedgerError: store unavailable
                log.warning("budget sync failed (will retry): %s", e)
