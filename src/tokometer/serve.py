"""`tokometer serve`: own the store, start local model servers, then the gateway on granian.

The serving process (granian's supervisor) takes the store's lock before it binds anything,
so a second gateway on the same store fails at once instead of corrupting the log; its
`workers` worker processes are forked, inherit that lock, die with it (even on kill -9) and
are respawned if one dies alone.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import config
from .errors import ConfigError
from .launch import start_model_server
from .ledger import open_store, single_writer
from .ledger.lock import StoreLock
from .lifeline import die_with_parent

if TYPE_CHECKING:  # the supervisor never loads the gateway; its worker does
    from .gateway.app import Gateway

log = logging.getLogger("tokometer")

_FIRST_PAUSE, _LAST_PAUSE = 1.0, 60.0  # seconds before the gateway starts again after a crash
_FILES_PER_CONNECTION = 2  # the client's socket, and the provider's while it is relayed
_FILES_SPARE = 256  # the store, tokenizers, logs, pipes
_MAX_CONNECTIONS = 65_536


@dataclass(frozen=True, slots=True)
class _Handoff:
    """What the supervisor hands the worker it forks (which inherits this process's memory)."""

    settings: config.Settings
    lock_fd: int | None  # SQLite's single-writer lock, inherited (PostgreSQL has none)
    ready_fd: int  # where the worker says it has started
    peers: Path | None  # the folder the workers share, when there are several


_handoff: _Handoff | None = None
STOPPING_SIGNAL = signal.SIGUSR1  # from the supervisor to its workers: a stop has begun


def serve(config_path: Path, *, launch: bool = True) -> None:
    settings = config.load(config_path)  # fail fast, before starting anything
    path = single_writer(settings.server.store)
    lock = StoreLock.take(path) if path is not None else None
    open_store(settings.server.store, create=True).close()  # made once, not by each worker
    # Several workers share their metrics through files in a private folder (metrics.Peers).
    peers = (Path(tempfile.mkdtemp(prefix="tokometer-workers-"))
             if settings.server.workers > 1 else None)
    children: list[subprocess.Popen[bytes]] = []
    try:
        for provider in settings.providers.values():
            if launch and provider.launch is not None:
                log.info("starting the local model server %r at %s (first start assembles the "
                         "model; this can take a minute)", provider.name, provider.base_url)
                if (child := start_model_server(provider, settings.server.data_dir)) is not None:
                    children.append(child)
        _run_gateway(settings, lock, peers)
    finally:
        if peers is not None:
            shutil.rmtree(peers, ignore_errors=True)
        for child in children:
            child.terminate()
            child.wait(timeout=30)
        if lock is not None:
            lock.close()


def _connection_limit() -> int:
    """Raise the soft open-file limit to the hard one (each connection is a file) and return
    how many connections the gateway can hold with it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    except (ValueError, OSError) as e:  # e.g. above the kernel's nr_open
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, wanted, e)
    return max(1, min(_MAX_CONNECTIONS, (soft - _FILES_SPARE) // _FILES_PER_CONNECTION))


def _run_gateway(settings: config.Settings, lock: StoreLock | None, peers: Path | None) -> None:
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    class _Supervisor(Server):  # type: ignore[misc,valid-type]
        def signal_handler_interrupt(self, *args: object) -> None:
            """Before granian stops its workers, tell them: each ends and records the
            streams it still relays before `stop_timeout` has it killed."""
            for worker in self.wrks:
                with contextlib.suppress(OSError, AttributeError, TypeError):
                    os.kill(worker.inner.pid, STOPPING_SIGNAL)
            super().signal_handler_interrupt(*args)

    # The worker must be forked to inherit the lock (Python 3.14 would pick forkserver).
    multiprocessing.set_start_method("fork", force=True)
    os.register_at_fork(after_in_child=_stop_signals_stop)
    connections = _connection_limit()
    log.info("gateway listening on http://%s:%d (up to %d connections at once)",
             settings.server.host, settings.server.port, connections)
    # granian respawns a worker that dies, but ends the whole server when one dies again within
    # seconds (a crash loop). A worker that never started ends `serve` with that error; once
    # one has started, the gateway starts again after a pause that doubles up to a minute.
    pause = _FIRST_PAUSE
    while True:
        ready_in, ready_out = os.pipe()  # a started worker writes a byte (forked: it has it)
        os.set_blocking(ready_in, False)
        global _handoff
        _handoff = _Handoff(settings, lock.fd if lock else None, ready_out, peers)
        server = _Supervisor(
            "tokometer.serve:worker_app",
            address=settings.server.host,
            port=settings.server.port,
            interface=Interfaces.ASGI,
            loop=Loops.uvloop,
            factory=True,
            workers=settings.server.workers,
            backpressure=connections,
            respawn_failed_workers=True,
            # A worker that does not stop in time is killed: a stream may run for hours,
            # and granian can miss a stop that arrives while a respawned worker starts.
            workers_kill_timeout=settings.server.stop_timeout,
            log_access=False,
        )
        try:
            server.serve()
            return
        except SystemExit:
            if server.interrupt_signal or not _any_byte(ready_in):
                raise
        except RuntimeError as e:  # granian's bind error: the message holds a Rust backtrace
            if "Address already in use" not in str(e):
                raise
            raise ConfigError(f"cannot listen on {settings.server.host}:"
                              f"{settings.server.port}: the address is in use by another "
                              "program (server.host, server.port)") from None
        finally:
            os.close(ready_in)
            os.close(ready_out)
        log.error("the gateway's worker kept dying; starting it again in %.0f s", pause)
        time.sleep(pause)  # the supervisor has nothing else to do meanwhile
        pause = min(pause * 2, _LAST_PAUSE)


def _stop_signals_stop() -> None:
    """In a forked worker, until granian sets its own handlers: a SIGTERM (a stop, or the
    supervisor stopping its workers) ends it. It inherits the supervisor's handler, which
    only notes the signal: a worker respawned as the stop began ran on, and serve waited
    for it forever."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _any_byte(fd: int) -> bool:
    try:
        return bool(os.read(fd, 1))
    except BlockingIOError:
        return False


def worker_app() -> Gateway:
    """granian's factory, run in the worker process: the gateway on the inherited lock."""
    from .gateway.app import Gateway

    parent = multiprocessing.parent_process()
    if _handoff is None or parent is None or parent.pid is None:
        raise ConfigError("tokometer.serve:worker_app runs only in the worker `tokometer serve` "
                          "forks; under another ASGI server use tokometer.gateway.app:create_app")
    die_with_parent(parent.pid)
    handoff = _handoff
    path = single_writer(handoff.settings.server.store)
    lock = (StoreLock.inherited(path, handoff.lock_fd)
            if path is not None and handoff.lock_fd is not None else None)
    return Gateway(handoff.settings, lock, on_ready=lambda: os.write(handoff.ready_fd, b"r"),
                   peers=handoff.peers, stopping_signal=STOPPING_SIGNAL)
