"""Files: the store and its companions are the owner's alone, and reading never creates one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import MINIMAL_CONFIG, start_gateway, stop_gateway
from tokometer.cli import main
from tokometer.ledger import open_store
from tokometer.ledger.lock import lock_path

READ_COMMANDS = [["events"], ["events", "--format", "csv"], ["report"], ["rankings"], ["flows"],
                 ["tasks"], ["tasks", "--agents"], ["export", "-o", "out.parquet"],
                 ["receipt", "some-event"], ["ledger", "audit"], ["ledger", "head"],
                 ["budgets", "list"], ["budgets", "status"], ["keys", "list"]]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_gateways_files_are_created_for_its_owner_only(tmp_path):
    previous = os.umask(0o022)  # the usual umask, which leaves new files world-readable
    try:
        gw = start_gateway(tmp_path, MINIMAL_CONFIG)
    finally:
        os.umask(previous)
    try:
        store = gw.store
        files = [store, Path(f"{store}-wal"), Path(f"{store}-shm"), lock_path(store),
                 Path(f"{store}-writers"), tmp_path / "data" / "ledger-ed25519.pem"]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        stop_gateway(gw)


def test_a_store_opened_for_reading_is_never_created(tmp_path):
    from tokometer.errors import LedgerError

    with pytest.raises(LedgerError, match="there is no store at"):
        open_store(tmp_path / "nothing.db")  # reading is the default: only create=True makes one
    assert list(tmp_path.iterdir()) == []
    open_store(tmp_path / "new.db", create=True).close()
    assert (tmp_path / "new.db").exists()


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_a_read_command_on_a_missing_store_says_so_and_creates_nothing(tmp_path, capsys,
                                                                        monkeypatch, command):
    config = tmp_path / "tokometer.toml"
    config.write_text('[server]\nstore = "sqlite:///missing/tokometer.db"\n' + MINIMAL_CONFIG)
    monkeypatch.chdir(tmp_path)  # export's output lands here, if it ever ran
    code = main([*command, "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"there is no store at {tmp_path / 'missing' / 'tokometer.db'}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokometer.toml"]


def test_a_write_command_creates_the_store_for_its_owner_only(tmp_path, capsys):
    config = tmp_path / "tokometer.toml"
    config.write_text('[server]\nstore = "sqlite:///tokometer.db"\n' + MINIMAL_CONFIG)
    previous = os.umask(0o022)
    try:
        code = main(["keys", "create", "--tenant", "t", "--app", "a", "--config", str(config)])
    finally:
        os.umask(previous)
    assert code == 0, capsys.readouterr().err
    assert mode(tmp_path / "tokometer.db") == 0o600
