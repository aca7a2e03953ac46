"""Red-team of issue 12's reshape: the CLI package, the store seam, given hostile or broken
input; each failure is one clear line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FAKE_KEYS, MODELS_TOML, providers_toml, start_gateway, stop_gateway
from processes import cli, until
from tokometer import config as settings
from tokometer.cli import commands, main
from tokometer.errors import LedgerError
from tokometer.ledger import SQLiteStore, open_store, receipts
from tokometer.ledger.derive import sign_head
from tokometer.ledger.log import INSERT_NODE, leaf_count, stored_nodes
from tokometer.ledger.merkle import Tree
from tokometer.ledger.signer import load_signer


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


def test_receipts_signed_beside_a_running_gateway_keep_the_log_clean(upstream, tmp_path,
                                                                     monkeypatch):
    """`tokometer receipt` signs a head over the stored log while the gateway's writer
    commits leaves and signs heads of its own. Heads ordered by their timestamps must never
    shrink: a CLI that read the clock, then (slowed here, as a loaded machine may) the log's
    size after the writer had signed and committed more, stored a larger head with an earlier
    timestamp, and the audit called the log NOT CLEAN."""
    gw = start_gateway(tmp_path, providers_toml(upstream) + MODELS_TOML, env=FAKE_KEYS)
    real_time = time.time

    def slow_clock() -> float:
        now = real_time()
        time.sleep(0.3)  # the gap between reading the clock and reading the log's size
        return now

    stop = threading.Event()

    def traffic() -> None:  # events, each with a receipt the writer signs a head for
        while not stop.is_set():
            event_id = gw.chat("gpt-4o-mini").headers["x-tokometer-event-id"]
            gw.get(f"/v1/receipts/{event_id}")

    threads = [threading.Thread(target=traffic, daemon=True) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        gw.chat("gpt-4o-mini")
        signer = load_signer(settings.load(gw.config).server.signing_key)
        monkeypatch.setattr(receipts.time, "time", slow_clock)
        with open_store(gw.store) as store:
            for _ in range(10):
                receipts.sign_stored_head(store, signer)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        stop_gateway(gw)
    audit = cli(gw.config, "ledger", "audit")
    assert audit.returncode == 0, audit.stdout


def test_a_head_signed_by_the_cli_never_goes_behind_the_writers(tmp_path, monkeypatch):
    """The same race, step by step: between the CLI reading the clock and reading the log's
    size, the gateway's writer (another connection) signs a head and commits a leaf. Unless
    the CLI holds the store's write lock across both readings, its head is larger than the
    writer's yet timestamped earlier."""
    path = tmp_path / "store.db"
    signer = load_signer(tmp_path / "signing.key")
    real_time = time.time

    def writer_between() -> None:
        writer = SQLiteStore(sqlite3.connect(path, timeout=0, isolation_level=None))
        try:
            writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # locked: the writer signs after the CLI's commit
            writer.close()
            return
        size = leaf_count(writer)
        sign_head(writer, signer, size, Tree(stored_nodes(writer), size).root(),
                  int(real_time() * 1000) + 5)
        writer.execute(INSERT_NODE, (0, size, bytes(32)))  # the next event's leaf
        writer.execute("COMMIT")
        writer.close()

    def clock() -> float:
        now = real_time()
        writer_between()
        return now

    monkeypatch.setattr(receipts.time, "time", clock)
    with open_store(path, create=True) as store:
        receipts.sign_stored_head(store, signer)
        heads = store.execute("SELECT tree_size FROM tree_heads "
                              "ORDER BY timestamp, tree_size").fetchall()
    sizes = [size for (size,) in heads]
    assert sizes == sorted(sizes), f"heads in timestamp order shrink: {sizes}"


def test_side_requests_in_flight_at_sigterm_leave_no_traceback(upstream, tmp_path):
    """The Services close their reader stores at shutdown; receipts (a side endpoint, on a
    reader store) asked for while SIGTERM arrives get an answer or a closed connection, and
    the gateway's log holds no traceback of a query on a closed store."""
    gw = start_gateway(tmp_path, providers_toml(upstream) + MODELS_TOML, env=FAKE_KEYS)
    ids = [gw.chat("gpt-4o-mini").headers["x-tokometer-event-id"] for _ in range(5)]
    statuses: list[int] = []
    stop = threading.Event()

    def ask() -> None:
        with httpx.Client(base_url=gw.url, timeout=10,
                          headers={"Authorization": f"Bearer {gw.key}"}) as client:
            while not stop.is_set():
                for event_id in ids:
                    try:
                        statuses.append(client.get(f"/v1/receipts/{event_id}").status_code)
                    except httpx.TransportError:
                        return
    threads = [threading.Thread(target=ask, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    stop_gateway(gw)
    stop.set()
    for thread in threads:
        thread.join(20)
    log = (tmp_path / "gateway.log").read_text(errors="replace")
    assert statuses and set(statuses) <= {200, 503}, sorted(set(statuses))
    assert "Traceback" not in log and "closed database" not in log, log[-3000:]


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_damaged_packaged_vocabulary_is_a_config_error_not_a_download(tmp_path, monkeypatch,
                                                                       damage):
    """bpe-openai's o200k copy cut short, or with one rank changed: a ConfigError naming the
    tokenizer, and no attempt at tiktoken's download."""
    import gzip
    import socket

    from tokometer.counting import registry
    from tokometer.errors import ConfigError

    data = gzip.decompress((registry._package_dir("bpe_openai") / "data" /
                            "o200k_base.tiktoken.gz").read_bytes())
    (tmp_path / "data").mkdir()
    packed = gzip.compress(data.replace(b" 0\n", b" 1\n", 1))
    (tmp_path / "data" / "o200k_base.tiktoken.gz").write_bytes(
        packed[:len(packed) // 2] if damage == "truncated" else packed)
    monkeypatch.setattr(registry, "_package_dir", lambda name: tmp_path)

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the tokenizer registry went to the network")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ConfigError, match="o200k_base"):
        registry.TokenizerRegistry(tmp_path).get("tiktoken:o200k_base")


def test_two_processes_upgrading_an_old_store_at_once_both_open_it(tmp_path, monkeypatch):
    """An old store (events without the late columns) opened by two processes at once, e.g. a
    restarted gateway and `tokometer report`: the second to add the columns had read the
    table before the first added them, and failed on 'duplicate column name'."""
    from test_ledger_upgrade import old_store
    from tokometer.ledger import migrate

    path, _, _ = old_store(tmp_path)
    real_columns = migrate._columns
    other_process: list[bool] = []

    def columns_then_the_other_process(store: SQLiteStore, table: str) -> set[str]:
        seen = real_columns(store, table)
        if table == "events" and not other_process:
            other_process.append(True)
            with open_store(path):  # the other process upgrades the store meanwhile
                pass
        return seen

    monkeypatch.setattr(migrate, "_columns", columns_then_the_other_process)
    with open_store(path) as store:
        assert store.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 5


@pytest.mark.parametrize("args", [("keys", "create", "--tenant", "t", "--app", "a"),
                                  ("keys", "revoke", "k"),
                                  ("budgets", "set", "--tenant", "t", "--limit", "1")])
def test_a_store_that_refuses_a_write_is_one_line_not_a_traceback(capsys, config, monkeypatch,
                                                                  args):
    """A store read-only to this user, or locked by another process past the busy timeout:
    SQLite's error, said in one line with exit code 2."""
    def read_only(*a: Any, **kw: Any) -> SQLiteStore:
        store = open_store(*a, **kw)
        store.execute("PRAGMA query_only = ON")
        return store

    monkeypatch.setattr(commands, "open_store", read_only)
    code, err = run(capsys, *args, "--config", str(config))
    assert code == 2 and "store" in one_line(err)


def test_budgets_and_revocations_from_the_cli_reach_a_running_gateway(upstream, tmp_path):
    """Another process changes the store under a gateway that syncs every second: a budget
    of zero set by the CLI stops the tenant, its removal lets it through again, a revoked
    key is refused; `budgets status` reads cleanly throughout."""
    gw = start_gateway(tmp_path, providers_toml(upstream) + MODELS_TOML, env=FAKE_KEYS)
    try:
        key, key_id = gw.new_key("cli-co")

        def settles(status: int) -> None:
            until(lambda: gw.chat("gpt-4o-mini", key=key).status_code == status, 10,
                  f"requests never answered {status}")

        assert gw.chat("gpt-4o-mini", key=key).status_code == 200
        made = cli(gw.config, "budgets", "set", "--tenant", "cli-co", "--limit", "0",
                   "--unit", "tokens", "--json")
        assert made.returncode == 0, made.stderr
        settles(402)
        status = cli(gw.config, "budgets", "status", "--json")
        assert status.returncode == 0 and '"cli-co"' in status.stdout, status.stderr
        removed = cli(gw.config, "budgets", "remove", json.loads(made.stdout)["budget_id"])
        assert removed.returncode == 0, removed.stderr
        settles(200)
        assert cli(gw.config, "keys", "revoke", key_id).returncode == 0
        settles(401)
    finally:
        stop_gateway(gw)
    log = (tmp_path / "gateway.log").read_text(errors="replace")
    assert "Traceback" not in log and "WARNING" not in log and "ERROR" not in log, log[-3000:]


def test_the_writer_signs_no_head_while_its_tree_is_behind_its_leaves(tmp_path, monkeypatch):
    """A failed derivation leaves the writer's tree short of the committed leaves: a head
    signed then would leave them out and could go behind one the CLI signed over them."""

    from conftest import make_event
    from tokometer.errors import LedgerError
    from tokometer.ledger import SQLiteLedger
    from tokometer.ledger import log_writer as writer
    from tokometer.ledger.signer import load_signer

    catch_up = writer.catch_up

    def failing(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    async def run() -> tuple[int, int]:
        ledger = SQLiteLedger(tmp_path / "t.db", load_signer(tmp_path / "k.pem"))
        ledger.start()
        try:
            await ledger.append(make_event())
            first = await ledger.sign_now()
            monkeypatch.setattr(writer, "catch_up", failing)
            await ledger.append(make_event())  # committed; its tree nodes are not
            with pytest.raises(LedgerError, match="behind its events"):
                await ledger.sign_now()
            monkeypatch.setattr(writer, "catch_up", catch_up)
            return first.tree_size, (await ledger.sign_now()).tree_size
        finally:
            await ledger.close()

    assert asyncio.run(run()) == (1, 2)
