"""Everything a running gateway holds, built once at start-up and stopped at shutdown.

The lifespan builds one frozen Services value; the endpoints read it and change nothing in it
(what changes at run time, such as budgets' spend and the key ring, lives inside its parts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..catalog import Pricer, vendor_of
from ..catalog.plans import Charges
from ..config import Settings
from ..counting import Recounter, TokenizerRegistry
from ..errors import AuthError
from ..impact import watts_per_core
from ..impact.measured import CpuShares, listening_pid
from ..ingest import Recorder
from ..ledger import Ledger, Store, open_ledger, open_store, single_writer
from ..ledger.connect import SMALL_CACHE_KIB
from ..ledger.lock import StoreLock
from ..ledger.signer import load_signer
from ..policy import Consumer, Guard, KeyRing
from ..policy.shared import SharedGuard
from ..policy.sync import BudgetSync
from ..policy.wallets import WalletBudgets
from ..provenance.manifests import TextManifests
from ..provenance.registry import Registry, fingerprint_key
from .admin import Admin
from .dashboard import Dashboard
from .labels import Labels
from .meter import Meter
from .metrics import Metrics, Peers
from .offloop import OffLoop
from .pipeline import Deps
from .router import Router
from .session import AdminToken
from .transparency import Transparency
from .upstream import Upstream

log = logging.getLogger("tokometer.gateway")


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    deps: Deps  # what the request path needs (pipeline.py)
    keys: KeyRing
    admin: Admin
    transparency: Transparency
    side: OffLoop  # one store connection, off the event loop, for the side endpoints
    dashboard: Dashboard
    ingest: Recorder  # usage reported by apps (OTLP spans, CloudEvents)
    lock: StoreLock | None  # SQLite's single-writer lock; None on PostgreSQL
    tasks: tuple[asyncio.Task[None], ...]  # background watchers: revocations, budgets
    stores: tuple[Store, ...]  # the readers' connections, closed at shutdown
    peers: Peers | None  # the metrics of serve's other workers, when there are several

    async def metrics(self) -> bytes:
        """What /metrics shows: this process's counts, or every worker's added up."""
        return await self.peers.render() if self.peers else self.deps.metrics.render()

    async def authenticate(self, headers: dict[bytes, bytes]) -> Consumer:
        key = api_key(headers)
        if key is None:
            raise AuthError("no API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'")
        consumer = await self.keys.lookup(key)
        if consumer is None:
            raise AuthError("invalid API key (unknown or revoked)")
        return consumer


async def start_services(settings: Settings, lock: StoreLock | None,
                         peers: Path | None = None) -> Services:
    """The gateway's parts, on `lock` (taken here when `tokometer serve` did not); `peers`:
    the folder of serve's workers when there are several (their metrics meet there)."""
    s = settings.server
    path = single_writer(s.store)  # SQLite's file, which one gateway writes; None: PostgreSQL
    processes_share = path is None or peers is not None  # replicas, or serve's workers
    if path is not None:
        lock = lock or StoreLock.take(path)
    ledger = open_ledger(s.store, load_signer(s.signing_key, s.signing_key_pem,
                                              s.signing_key_env), durability=s.durability)
    ledger.start()
    registry = TokenizerRegistry(s.data_dir)
    await asyncio.to_thread(_preload_tokenizers, settings, registry)
    # Three readers, each with a connection of its own: key look-ups never queue behind a
    # report, nor the budget sync behind either.
    stores: tuple[Store, ...] = (open_store(s.store, cache_kib=SMALL_CACHE_KIB),
                                 open_store(s.store, cache_kib=SMALL_CACHE_KIB),
                                 open_store(s.store))
    shared = None
    if processes_share:
        # They hold budgets and rate limits in the store too; a process renews the holds of
        # its requests while they run, and those of a process that died expire.
        stores = (*stores, open_store(s.store))
        shared = SharedGuard(stores[-1])
    keys = KeyRing(stores[0])
    pricer = Pricer(s.currency, settings.exchange_rates)
    budgets = BudgetSync(Guard(settings, {}), stores[1], settings.budgets, shared=shared,
                         ledger=ledger, wallets=WalletBudgets(settings.allowances, s.currency))
    await budgets.sync()  # spend so far, from the ledger: a restart resets no budget
    side = OffLoop(stores[2])
    token = AdminToken(s.admin_token)  # one count of wrong guesses, however they come
    labels = [*settings.models, *(r.model for m in settings.models.values() for r in m.routes)]
    cpu = await asyncio.to_thread(_local_servers, settings)
    marks = Registry(fingerprint_key(ledger.signer.secret()))  # provenance
    meter = Meter(Recounter(registry), pricer, s.default_max_output_tokens,
                  charges=Charges(settings.plans, s.currency))
    deps = Deps(Upstream(s, cpu), meter,
                ledger, Router(pricer, s.max_attempts), budgets.guard, Metrics(labels),
                labels=Labels(s.producer, settings.labels, _manifests(settings, ledger)),
                registry=marks if s.provenance else None, shared=shared)
    workers = Peers(peers, deps.metrics) if peers is not None else None
    tasks = (asyncio.create_task(keys.watch_revocations()),
             asyncio.create_task(budgets.run_forever()),
             *([asyncio.create_task(workers.run_forever())] if workers else []),
             *([asyncio.create_task(shared.renew_forever())] if shared else []))
    log.info("tokometer gateway ready: %d models, store %s", len(settings.models), s.store)
    return Services(settings, deps, keys, Admin(settings, side, keys, budgets, ledger, token),
                    Transparency(side, ledger, marks), side, Dashboard(settings, side, token),
                    Recorder(settings, pricer, ledger, budgets), lock, tasks, stores, workers)


async def stop_services(services: Services) -> None:
    with _slow_step("its background tasks"):
        for task in services.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    with _slow_step("the upstream client"):
        await services.deps.upstream.close()
    with _slow_step("the ledger"):
        await services.deps.ledger.close()
    if services.deps.shared is not None:  # not under a reservation still being taken
        with _slow_step("the shared reservations"):
            await services.deps.shared.close()
    with _slow_step("the stores"):
        for store in services.stores:
            store.close()
        if services.lock is not None:
            services.lock.close()


@contextlib.contextmanager
def _slow_step(what: str) -> Iterator[None]:
    """A step of the stop still going after 2 s is told, while it goes (a stop that
    outlasts `stop_timeout` is killed: the log then says where it was)."""
    told = asyncio.get_running_loop().call_later(
        2, log.warning, "stopping: still waiting for %s", what)
    try:
        yield
    finally:
        told.cancel()


def api_key(headers: dict[bytes, bytes]) -> str | None:
    """The key a request presents: `Authorization: Bearer KEY`, else `x-api-key`."""
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip().decode("latin-1") or None
    key = headers.get(b"x-api-key")
    return key.decode("latin-1") if key else None


def _local_servers(settings: Settings) -> dict[str, CpuShares]:
    """The CPU clocks of the local model servers whose energy is measured, by provider: the
    process listening on each one's port (one it launched, or one already running; one
    started later is found when it answers)."""
    found = {}
    for provider in settings.providers.values():
        if watts_per_core(provider) is None:
            continue
        url = urlsplit(provider.base_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        pid = listening_pid(port)
        if pid is None:
            log.warning("no model server listens on port %d for provider %s yet: its energy "
                        "is modelled until one does", port, provider.name)
        found[provider.name] = CpuShares(port, pid)
    return found


def _preload_tokenizers(settings: Settings, registry: TokenizerRegistry) -> None:
    """Load every tokenizer the usable models need now (seconds each), not on a request."""
    for model in settings.models.values():
        routes = [r for r in model.routes if r.provider.usable]
        if not routes:
            continue
        specs = {model.tokenizer} if model.tokenizer else {
            info.tokenizer for r in routes if (info := vendor_of(r.model))}
        for spec in specs - {None}:
            registry.get(spec)  # type: ignore[arg-type]


def _manifests(settings: Settings, ledger: Ledger) -> TextManifests | None:
    """The C2PA signer, when a `[[labels]]` table asks for manifests."""
    if not any(notice.c2pa for notice in settings.labels):
        return None
    return TextManifests(ledger.signer.secret(), settings.server.producer or "tokometer")
