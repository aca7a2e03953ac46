"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary folder, a free port on
127.0.0.1, trust authentication, run as an unprivileged user (PostgreSQL refuses to run as
root), and stopped after the suite. Nothing is mocked: this is Debian's PostgreSQL."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

OWNER = "postgres"  # the Debian package's system user, for a suite run as root


@dataclass
class Cluster:
    directory: Path
    port: int
    bin: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://tokometer@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database on the cluster; its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pg_ctl(self, *args: str) -> None:
        _as_owner([str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), "-w", *args])

    def start(self) -> None:
        self.pg_ctl("-o", f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                          "-c max_connections=300", "-l", str(self.directory / "log"), "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_cluster() -> Cluster:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: scripts/test installs Debian's "
                           "postgresql package")
    directory = Path(tempfile.mkdtemp(prefix="tokometer-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, OWNER)
    cluster = Cluster(directory, _free_port(), Path(found[-1]).parent)
    _as_owner([str(cluster.bin / "initdb"), "-D", str(directory / "data"), "-A", "trust",
               "-U", "tokometer", "-E", "UTF8", "--locale=C", "--no-sync"])
    cluster.start()
    return cluster


def remove(cluster: Cluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.directory, ignore_errors=True)


def _as_owner(command: list[str]) -> None:
    prefix = ["runuser", "-u", OWNER, "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)
