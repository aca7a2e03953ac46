"""A local model server's energy, measured rather than modelled: the CPU time its process
spends while it serves a request, times the power of a core (`impact.watts_per_core`).

The server's CPU clock (all its threads, in nanoseconds) is one system call away:
clock_gettime on the process's CPU clock, no file read. A server that works in processes of
its own (Ollama's runners, vLLM's engine) is the sum of its process's clock and theirs: its
descendants are listed again (from /proc, at most once a second) so a runner started for a
request's model is counted from then on. Requests a server handles at once
share its time evenly: each start and end of a request reads the clock, and the time since
the previous reading goes to the requests then in flight. Requests another gateway worker
sends to the same server at the same time are not seen here, so with several workers the
figure is an upper bound for overlapping requests.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("tokometer.impact")

DEFAULT_WATTS_PER_CORE = 10.0  # a server CPU's power over its cores, roughly; set your own
_LISTEN = "0A"  # /proc/net/tcp's state for a listening socket


def cpu_clock(pid: int) -> int:
    """The clock id of a process's CPU time (Linux: CPUCLOCK_SCHED of the whole process)."""
    return ((~pid) << 3) | 2


def listening_pid(port: int) -> int | None:
    """The process listening on a local TCP port, found through /proc; None if none is (or
    it is not ours to see). Seconds at worst on a crowded machine: called off the loop."""
    inodes = {fields[9] for table in ("tcp", "tcp6") for fields in _rows(f"/proc/net/{table}")
              if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port}
    if not inodes:
        return None
    sockets = {f"socket:[{inode}]" for inode in inodes}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                if os.readlink(fd) in sockets:
                    return int(pid_dir.name)
        except OSError:  # gone, or not ours
            continue
    return None


def descendants(pid: int) -> list[int]:
    """The processes `pid` started, and theirs, from /proc's children lists (empty where the
    kernel keeps none)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found += children
            todo += children
    return found


def _rows(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.split() for line in f.readlines()[1:]]
    except OSError:
        return []


class CpuShares:
    """One local server's CPU time, shared among the requests it serves at once. The server
    is the process listening on `port`: looked up again (at most once a second) when its
    clock cannot be read or goes backwards (it restarted, or its pid went to another
    process); the requests in flight across such a change are unmeasured."""

    def __init__(self, port: int, pid: int | None = None, relist_every: float = 1.0):
        self.port = port
        self.pid = pid
        self._clocks: list[int] = []  # the server's and its descendants' CPU clocks
        self._relist_every = relist_every  # seconds between listings of its descendants
        self._next_family = 0.0  # when to list them again
        self._last: int | None = None
        self._open: dict[int, int | None] = {}  # request → its nanoseconds (None: lost)
        self._ids = itertools.count()
        self._next_lookup = 0.0
        self._warned = False

    def begin(self) -> int | None:
        """A request starts: its ticket, or None when the server's clock cannot be read."""
        if not self._settle():
            return None
        ticket = next(self._ids)
        self._open[ticket] = 0
        return ticket

    def end(self, ticket: int) -> float | None:
        """The request ends: the server's CPU seconds it took, or None if unmeasured."""
        read = self._settle()
        spent = self._open.pop(ticket, None)
        return spent / 1e9 if read and spent is not None else None

    def _settle(self) -> bool:
        """Share the server's CPU time since the last reading among the requests in flight."""
        now = self._read()
        if now is None or (self._last is not None and now < self._last):
            self._lost()
            if now is None:
                return False
        elif self._last is not None and self._open:
            share = (now - self._last) // len(self._open)
            for ticket, spent in self._open.items():
                if spent is not None:
                    self._open[ticket] = spent + share
        self._last = now
        return True

    def _read(self) -> int | None:
        if self.pid is not None:
            if time.monotonic() >= self._next_family:
                self._next_family = time.monotonic() + self._relist_every
                self._clocks = [cpu_clock(p) for p in (self.pid, *descendants(self.pid))]
            try:
                return sum(time.clock_gettime_ns(clock) for clock in self._clocks)
            except OSError:  # the server (or one of its processes) has gone
                self._next_family = 0.0
        if time.monotonic() < self._next_lookup:
            return None
        self._next_lookup = time.monotonic() + 1.0
        self.pid = listening_pid(self.port)
        if self.pid is None:
            if not self._warned:
                self._warned = True
                log.warning("no model server listens on port %d: its requests' energy is "
                            "modelled, not measured, until one does", self.port)
            return None
        self._warned = False
        return self._read()

    def _lost(self) -> None:
        """The clock changed hands: what the requests in flight took cannot be known."""
        self._last = None
        for ticket in self._open:
            self._open[ticket] = None
