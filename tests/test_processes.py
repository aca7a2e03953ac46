"""One store, one gateway; the worker lives and dies with the serving process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    FAKE_KEYS,
    MINIMAL_CONFIG,
    MODELS_TOML,
    Gateway,
    chat_event,
    free_port,
    providers_toml,
    start_gateway,
    stop_gateway,
)
from processes import alive, answers, children, cli, listening, the_worker, until
from tokometer import config
from tokometer.errors import LedgerError
from tokometer.gateway import app
from tokometer.ledger.lock import StoreLock, lock_path


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokometer.cli", "serve", "--no-launch",
                           "--config", str(config)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **FAKE_KEYS})










def start(upstream, directory: Path) -> Gateway:
    return start_gateway(directory, providers_toml(upstream) + MODELS_TOML, env=FAKE_KEYS)


@pytest.fixture(scope="module")
def owner(upstream, tmp_path_factory) -> Iterator[Gateway]:
    gw = start(upstream, tmp_path_factory.mktemp("owner"))
    yield gw
    stop_gateway(gw)


def test_the_same_config_started_twice_refuses_to_start(owner):
    second = serve(owner.config)
    output = second.stdout + second.stderr
    assert second.returncode != 0
    assert f"the store {owner.store} is in use by another tokometer gateway " \
           f"(pid {owner.process.pid})" in output
    assert "Listening" not in output  # it never bound the port, even with SO_REUSEPORT
    assert chat_event(owner)["status"] == 200
    assert cli(owner.config, "ledger", "audit").returncode == 0


def test_another_config_on_the_same_store_refuses_to_start(owner, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(f'[server]\nport = {free_port()}\nstore = "sqlite:///{owner.store}"\n'
                     + owner.config.read_text().split("\n", 4)[4])
    second = serve(other)
    assert second.returncode != 0
    assert f"the store {owner.store} is in use" in second.stdout + second.stderr
    assert "Listening" not in second.stdout + second.stderr


def test_the_cli_writes_beside_a_running_gateway(owner):
    created = cli(owner.config, "keys", "create", "--tenant", "beside", "--app", "cli", "--json")
    assert created.returncode == 0, created.stderr
    key = created.stdout.split('"key":"')[1].split('"')[0]
    assert chat_event(owner, key)["tenant"] == "beside"
    budget = cli(owner.config, "budgets", "set", "--tenant", "beside", "--limit", "5")
    assert budget.returncode == 0, budget.stderr


def test_kill_9_of_the_serving_process_takes_its_worker_along(upstream, tmp_path):
    gw = start(upstream, tmp_path)
    worker = the_worker(gw)
    try:
        assert chat_event(gw)["status"] == 200
        os.kill(gw.process.pid, signal.SIGKILL)  # the supervisor alone, not its process group
        gw.process.wait(10)
        until(lambda: not alive(worker), 10, "the orphaned worker lives on")
        assert not listening(gw)
    finally:
        if alive(worker):  # the failure this test is about: leave no orphan behind
            os.kill(worker, signal.SIGKILL)
    again = start(upstream, tmp_path)  # the kernel let go of the lock with the processes
    try:
        assert chat_event(again)["status"] == 200
    finally:
        stop_gateway(again)
    audit = cli(again.config, "ledger", "audit")
    assert audit.returncode == 0, audit.stdout


def test_a_killed_worker_is_respawned_and_holds_the_store_again(upstream, tmp_path):
    gw = start(upstream, tmp_path)
    try:
        worker = the_worker(gw)
        os.kill(worker, signal.SIGKILL)
        until(lambda: children(gw.process.pid) not in ([], [worker]), 20,
              "no worker was respawned")
        respawned = the_worker(gw)
        until(lambda: answers(gw), 30, "the respawned worker does not answer")
        assert chat_event(gw)["status"] == 200
        lock = lock_path(gw.store).resolve()
        held = {Path(os.readlink(fd)) for fd in Path(f"/proc/{respawned}/fd").iterdir()
                if fd.is_symlink()}
        assert lock in held
        assert serve(gw.config).returncode != 0  # still one owner
    finally:
        os.kill(gw.process.pid, signal.SIGKILL)
        gw.process.wait(10)
    until(lambda: not alive(respawned), 10, "the respawned worker outlived the supervisor")


def test_a_model_server_dies_with_the_serving_process_too(tmp_path):
    """What `tokometer serve` starts before the gateway (llama.cpp's server) gets the same
    lifeline: here a stand-in child of a stand-in parent, killed with kill -9."""
    parent = subprocess.Popen([sys.executable, "-c", """
import functools, os, subprocess, sys, time
from tokometer.lifeline import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         preexec_fn=functools.partial(die_with_parent, os.getpid()))
print(child.pid, flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
    finally:
        parent.kill()
        parent.wait(10)
    until(lambda: not alive(child), 10, "the model server outlived `tokometer serve`")


def test_the_lock_names_its_holder_and_is_free_again_once_closed(tmp_path):
    store = tmp_path / "t.db"
    held = StoreLock.take(store)
    with pytest.raises(LedgerError, match=rf"the store {store} is in use by another tokometer "
                                          rf"gateway \(pid {os.getpid()}\)"):
        StoreLock.take(store)
    held.close()
    StoreLock.take(store).close()
    assert not store.exists()  # the lock does not create the store


def test_the_lock_file_is_never_followed_through_a_symlink(tmp_path):
    victim = tmp_path / "precious"
    victim.write_text("keep me")
    lock_path(tmp_path / "t.db").symlink_to(victim)
    with pytest.raises(LedgerError, match="cannot open the store"):
        StoreLock.take(tmp_path / "t.db")
    assert victim.read_text() == "keep me"


def test_a_gateway_started_without_serve_owns_its_store_too(tmp_path):
    """An ASGI server other than `tokometer serve` (or several workers) gets the same rule."""
    path = tmp_path / "t.toml"
    path.write_text('[server]\nstore = "sqlite:///t.db"\n' + MINIMAL_CONFIG)
    settings = config.load(path)

    async def both() -> None:
        first, second = app.Gateway(settings), app.Gateway(settings)
        await first.start()
        try:
            with pytest.raises(LedgerError, match=f"the store {settings.server.store} is in use"):
                await second.start()
        finally:
            await first.stop()
        await second.start()  # the first let go of it when it stopped
        await second.stop()

    asyncio.run(both())


def test_the_worker_factory_outside_serve_says_what_to_use_instead():
    """granian pointed at serve's worker factory by hand gets a sentence, not a KeyError."""
    from tokometer.errors import ConfigError
    from tokometer.serve import worker_app

    with pytest.raises(ConfigError, match=r"gateway\.app:create_app"):
        worker_app()
