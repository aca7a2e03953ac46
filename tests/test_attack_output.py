"""Red-team: CSV printed to a terminal obeys the escape sequences clients put in the ledger."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys

import pytest

from conftest import MINIMAL_CONFIG, TERMINAL, make_event
from tokometer.ledger import SQLiteLedger
from tokometer.ledger.signer import load_signer


def on_a_terminal(*args: str) -> str:
    """`tokometer ARGS`'s standard output as a terminal gets it (a pty)."""
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "tokometer.cli", *args], stdout=slave,
                               stderr=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    try:
        while chunk := os.read(master, 65536):
            out += chunk
    except OSError:  # EIO: the child closed its end
        pass
    finally:
        os.close(master)
    assert process.wait(60) == 0
    return out.decode()


@pytest.mark.parametrize("command", [["events", "--format", "csv"],
                                     ["report", "--by", "model,task", "--format", "csv"]])
def test_csv_on_a_terminal_shows_control_characters_escaped(tmp_path, command):
    """The tables escape them; CSV to a file keeps them (data); CSV to a terminal sent a
    client's `\\x1b]0;pwned\\x07` (window title) and `\\x1b[2J` (clear screen) raw."""
    async def fill() -> None:
        ledger = SQLiteLedger(tmp_path / "t.db", load_signer(tmp_path / "key.pem", None))
        ledger.start()
        await ledger.append(make_event(model=TERMINAL, task="job\x1b[2J\x1b[H"))
        await ledger.close()

    asyncio.run(fill())
    config = tmp_path / "t.toml"
    config.write_text(f'[server]\nstore = "sqlite:///{tmp_path}/t.db"\n'
                      f'signing_key = "{tmp_path}/key.pem"\n{MINIMAL_CONFIG}')
    out = on_a_terminal(*command, "--config", str(config))
    assert "\\x1b[31mred" in out
    assert not any(c in out for c in "\x1b\x07\u202e"), repr(out[:300])


@pytest.mark.parametrize("command", [["export", "--format", "csv", "-o", "{missing}/e.csv"],
                                     ["export", "--format", "parquet", "-o", "{missing}/e.pq"],
                                     ["report", "--by", "model", "--chart", "{missing}/c.png"]])
def test_an_output_file_that_cannot_be_written_is_a_clear_error(tmp_path, command):
    """Not a traceback: a missing directory (or a full disk) is the user's to fix."""
    config = tmp_path / "t.toml"
    config.write_text(f'[server]\nstore = "sqlite:///{tmp_path}/t.db"\n{MINIMAL_CONFIG}')
    asyncio.run(_one_event(tmp_path))
    args = [a.format(missing=tmp_path / "no-such-dir") for a in command]
    done = subprocess.run([sys.executable, "-m", "tokometer.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-500:]
    assert "no-such-dir" in done.stderr


async def _one_event(work) -> None:
    ledger = SQLiteLedger(work / "t.db", load_signer(work / "key.pem", None))
    ledger.start()
    await ledger.append(make_event())
    await ledger.close()
