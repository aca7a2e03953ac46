"""One gateway per store: an exclusive flock on a file beside it, held while the gateway runs.

Two writers on one store break the log (both number leaves from their own memory), so until
several are supported the gateway refuses to start on a store another one holds. The lock is
the kernel's: it goes with the last process holding the open file, even on kill -9, so a
restart after a crash just works. `tokometer serve` takes it before binding its port and its
worker processes (forked) inherit the same open file, so a respawned worker holds it again and
an orphaned worker would keep it until it dies. The CLI never takes it: its few writes (keys,
budgets) are ordinary SQLite transactions beside the gateway's.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import LedgerError


def lock_path(store: Path) -> Path:
    """The lock file beside the store's real file: a store reached through a symlink (or a
    symlinked directory) is the same store, and must meet the same lock."""
    real = store.resolve()
    return real.with_name(real.name + "-lock")


class StoreLock:
    """The held lock on a store; close() lets it go once no other process shares it."""

    def __init__(self, store: Path, fd: int):
        self.store = store
        self.fd = fd

    @classmethod
    def take(cls, store: Path) -> StoreLock:
        """Own `store`, or raise LedgerError naming the process that does."""
        path = lock_path(store)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)  # we truncate it
        except OSError as e:
            raise LedgerError(f"cannot open the store at {store}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LedgerError(
                f"the store {store} is in use by another tokometer gateway (pid {holder}); "
                "one gateway per store: stop that one, or give this config another "
                "server.store") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(store, fd)

    @classmethod
    def inherited(cls, store: Path, fd: int) -> StoreLock:
        """The lock a parent process took for `store`, on the open file this process
        inherited as `fd`; raises LedgerError if `fd` is not that lock (or not held)."""
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path(store)))
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: a no-op
        except OSError as e:
            raise LedgerError(f"the lock on the store {store} was not handed to this "
                              f"worker: {e}") from None
        if not same:
            raise LedgerError(f"file descriptor {fd} is not the lock of the store {store}")
        return cls(store, fd)

    def close(self) -> None:
        """Close this process's handle (never LOCK_UN, which would free it for every
        process sharing the open file)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
