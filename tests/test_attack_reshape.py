"""Red-team of issue 12's reshape: the CLI package, the store seam, given hostile or broken
input; each failure is one clear line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tokometer.cli import main
from tokometer.errors import LedgerError
from tokometer.ledger import open_store


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config over a store that exists, with a signing key beside it."""
    with open_store(tmp_path / "store.db", create=True):
        pass
    path = tmp_path / "tokometer.toml"
    path.write_text('[server]\nstore = "sqlite:///store.db"\nsigning_key = "signing.key"\n')
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def pubkey(capsys: pytest.CaptureFixture[str], config: Path) -> str:
    assert main(["ledger", "pubkey", "--config", str(config)]) == 0
    return capsys.readouterr().out.strip()


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[server]\nstore = \"\xff\"\n"])
def test_a_config_that_is_not_utf8_is_a_config_error(capsys, tmp_path, content):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(content)
    code, err = run(capsys, "keys", "list", "--config", str(bad))
    assert code == 2 and "bad.toml" in one_line(err)


def test_a_config_that_is_a_directory_is_a_config_error(capsys, tmp_path):
    code, err = run(capsys, "keys", "list", "--config", str(tmp_path))
    assert code == 2 and str(tmp_path) in one_line(err)


def test_a_receipt_that_is_not_utf8_is_a_clear_error(capsys, config, tmp_path):
    receipt = tmp_path / "receipt.json"
    receipt.write_bytes(b"\xff\xfe{}")
    code, err = run(capsys, "verify-receipt", str(receipt), "--pubkey", pubkey(capsys, config))
    assert code == 2 and "receipt" in one_line(err)


def test_a_pubkey_file_that_is_not_utf8_is_a_clear_error(capsys, tmp_path):
    receipt, key = tmp_path / "receipt.json", tmp_path / "key.pem"
    receipt.write_text("{}")
    key.write_bytes(b"\xff\xfe\x00binary")
    code, err = run(capsys, "verify-receipt", str(receipt), "--pubkey", str(key))
    assert code == 2 and "--pubkey" in one_line(err)


def test_a_pubkey_too_long_for_a_file_name_is_a_key_error(capsys, tmp_path):
    receipt = tmp_path / "receipt.json"
    receipt.write_text("{}")
    code, err = run(capsys, "verify-receipt", str(receipt), "--pubkey", "A" * 5000)
    assert code == 2 and "--pubkey" in one_line(err)


def test_verify_receipt_from_a_closed_stdin_is_a_clear_error(config):
    """`tokometer verify-receipt - <&-`: Python's sys.stdin is None."""
    r = subprocess.run([sys.executable, "-m", "tokometer.cli", "verify-receipt", "-",
                        "--pubkey", "AAAA"], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60, preexec_fn=lambda: __import__("os").close(0))
    assert r.returncode == 2, r.stderr
    assert "receipt" in one_line(r.stderr)


@pytest.mark.parametrize("command", [("receipt",), ("keys", "revoke"), ("budgets", "remove")])
def test_an_id_with_control_characters_is_echoed_escaped(capsys, config, command):
    """An error quoting what the user typed (or a stored value) cannot drive the terminal."""
    code, err = run(capsys, *command, "a\x1b[2J\x07b", "--config", str(config))
    assert code == 2 and "\x1b" not in one_line(err) and "\x07" not in err


def test_a_store_that_cannot_be_opened_leaves_no_connection_open(tmp_path, monkeypatch):
    """A corrupt file fails at the first statement, after the connection is made."""
    made: list[sqlite3.Connection] = []

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        made.append(real_connect(*args, **kwargs))
        return made[-1]

    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", connect)
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database, not at all " * 200)
    with pytest.raises(LedgerError, match="not a database"):
        open_store(corrupt)
    assert made
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        made[0].execute("SELECT 1")
