"""Watching other processes from a test: the CLI in a process of its own, a gateway's
children, whether it listens and answers, and waiting for any of it by polling."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import Gateway


def reply_head(gw: Gateway, head: str) -> bytes:
    """The status line and headers the gateway answers to a request's `head` (its request
    line and headers, a body promised and never sent)."""
    with socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])),
                                  timeout=10) as s:
        s.sendall(head.encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(65536)
            assert chunk, "the gateway closed the connection without an answer"
            reply += chunk
    return reply


def cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`tokometer ARGS --config CONFIG` in a process of its own (the verify commands take
    none)."""
    configured = [] if args[0].startswith("verify-") else ["--config", str(config)]
    return subprocess.run([sys.executable, "-m", "tokometer.cli", *args, *configured],
                          capture_output=True, text=True, input=stdin, timeout=120)


def children(pid: int) -> list[int]:
    """Living (not zombie) child processes of `pid`."""
    return _living(_PARENT, pid)


def group_members(group: int) -> list[int]:
    """Living (not zombie) processes of a process group."""
    return _living(_GROUP, group)


_PARENT, _GROUP = 1, 2  # fields of /proc/PID/stat after the command's closing parenthesis


def _living(field: int, value: int) -> list[int]:
    """Processes neither gone nor zombies (killed, unreaped) whose stat `field` is `value`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[field]) == value and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether any thread of `pid` still runs (a killed process's main thread can show as a
    zombie while its other threads, and its files, are still being torn down)."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                return True
        except (FileNotFoundError, ProcessLookupError):
            continue
    return False


def listening(gw: Gateway) -> bool:
    try:
        socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])), timeout=2).close()
    except ConnectionRefusedError:
        return False
    return True


def answers(gw: Gateway) -> bool:
    try:
        return httpx.get(gw.url + "/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # polling other processes' state


def the_worker(gw: Gateway) -> int:
    until(lambda: len(children(gw.process.pid)) == 1, 20, "granian has no single worker")
    return children(gw.process.pid)[0]
