"""Red-team: ways around "one gateway per store" (issue 11), each through `tokometer serve`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from conftest import (
    FAKE_KEYS,
    MINIMAL_CONFIG,
    MODELS_TOML,
    chat_event,
    free_port,
    providers_toml,
    start_gateway,
    stop_gateway,
)
from processes import answers, children, cli, the_worker, until


def second_serve(config) -> tuple[int | None, str]:
    """`tokometer serve` on `config`: its exit code and output, or None if it is still
    running after 20 s (then it is killed, with its process group)."""
    log = config.parent / "second.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "tokometer.cli", "serve", "--no-launch",
                                    "--config", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, **FAKE_KEYS},
                                   start_new_session=True)
    try:
        code = process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        code = None
    return code, log.read_text(errors="replace")


def _config(directory, upstream, store: str):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokometer.toml"
    path.write_text(f'[server]\nport = {free_port()}\nstore = "sqlite:///{store}"\n'
                    + providers_toml(upstream) + MODELS_TOML)
    return path


def test_a_store_reached_through_a_symlink_is_still_owned(upstream, tmp_path):
    """A second config whose store path is a symlink to the first gateway's store must be
    refused like the same path (today the lock sits beside the link, not the store)."""
    gw = start_gateway(tmp_path / "a", providers_toml(upstream) + MODELS_TOML, env=FAKE_KEYS)
    try:
        other = tmp_path / "b"
        other.mkdir()
        (other / "link.db").symlink_to(gw.store)
        code, output = second_serve(_config(other, upstream, "link.db"))
        assert code is not None, "a second gateway serves the store through a symlink"
        assert "in use by another tokometer gateway" in output
    finally:
        stop_gateway(gw)


def test_a_worker_killed_twice_in_a_row_is_respawned_both_times(upstream, tmp_path):
    """"A worker that dies is restarted, not the end of the gateway": granian calls two
    deaths within 5.5 s a crash loop and exits; serve then starts the gateway again."""
    gw = start_gateway(tmp_path, providers_toml(upstream) + MODELS_TOML, env=FAKE_KEYS)
    try:
        for _ in range(2):
            worker = the_worker(gw)
            os.kill(worker, signal.SIGKILL)
            until(lambda w=worker: gw.process.poll() is not None
                  or children(gw.process.pid) not in ([], [w]), 20, "no worker was respawned")
            assert gw.process.poll() is None, "the gateway exited after its worker died"
            until(lambda: answers(gw) or gw.process.poll() is not None, 30, "no answer")
        assert chat_event(gw)["status"] == 200
    finally:
        if gw.process.poll() is None:
            os.kill(gw.process.pid, signal.SIGKILL)
            gw.process.wait(10)
    audit = cli(gw.config, "ledger", "audit")
    assert audit.returncode == 0, audit.stdout


def test_a_port_another_program_holds_is_a_clear_error(tmp_path):
    """The lock answers a second gateway on the store; another program on the port got a
    40-line Rust and Python traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "tokometer.toml"
        config.write_text(f'[server]\nport = {port}\nstore = "sqlite:///t.db"\n{MINIMAL_CONFIG}')
        code, output = second_serve(config)
    assert code is not None and code != 0
    assert "Traceback" not in output, output[-800:]
    assert f"127.0.0.1:{port}" in output and "in use" in output
