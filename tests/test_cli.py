"""The tokometer command: keys, events and reports over a gateway's store."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sqlite3
import subprocess
import sys
from decimal import Decimal

import pytest

from conftest import Gateway
from tokometer.cli import build_parser, commands, main
from tokometer.events import FIELDS
from tokometer.ledger import SQLiteStore, open_store
from tokometer.policy import list_keys


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def walk(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """Every command and group of commands under `parser`, walking argparse's own tree."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*words, name)
                yield from walk(sub, (*words, name))


WORDS = list(walk(build_parser()))


def test_the_walk_finds_every_command_and_group():
    assert len(WORDS) == 35
    assert ("budgets", "set") in WORDS and ("verify-receipt",) in WORDS
    assert ("provenance", "check") in WORDS


@pytest.mark.parametrize("words", WORDS, ids=" ".join)
def test_every_command_explains_itself(words, capsys):
    with pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tokometer {' '.join(words)}")
    assert len(out.splitlines()) > 3


def test_the_module_runs_as_the_command():
    r = subprocess.run([sys.executable, "-m", "tokometer.cli", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage: tokometer" in r.stdout


def test_a_group_without_a_command_shows_its_commands_and_fails(capsys):
    assert main(["budgets"]) == 2
    assert "set" in capsys.readouterr().out


def test_serve_stops_with_a_clear_error_when_the_store_cannot_be_opened(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = tmp_path / "t.toml"
    config.write_text(f'[server]\nport = 0\nstore = "sqlite:///{blocker}/t.db"\n')
    r = subprocess.run([sys.executable, "-m", "tokometer.cli", "serve", "--no-launch",
                        "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert f"cannot open the store at {blocker}/t.db" in r.stdout + r.stderr


def test_an_unforeseen_error_at_start_fails_the_lifespan_instead_of_hanging_it():
    from tokometer.gateway.app import Gateway

    gateway, sent = Gateway(None), []  # type: ignore[arg-type]

    async def boom() -> None:
        raise RuntimeError("disk on fire")

    async def receive() -> dict:
        return {"type": "lifespan.startup"}

    async def send(message: dict) -> None:
        sent.append(message)

    gateway.start = boom  # type: ignore[method-assign]
    asyncio.run(asyncio.wait_for(gateway._lifespan(receive, send), 10))
    assert sent == [{"type": "lifespan.startup.failed", "message": "RuntimeError('disk on fire')"}]


def test_keys_create_json_list_and_revoke(gateway: Gateway, capsys):
    config = str(gateway.config)
    code, out, _ = run(capsys, "keys", "create", "--config", config, "--tenant", "t1",
                       "--app", "a1", "--region", "FR", "--json")
    assert code == 0
    created = json.loads(out)
    assert created["key"].startswith("tkm-") and created["key_id"]
    r = gateway.chat("gpt-4o-mini", "x", key=created["key"])
    assert gateway.event(r.headers["x-tokometer-event-id"])["consumer_region"] == "FR"
    code, out, _ = run(capsys, "keys", "list", "--config", config, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    mine = next(row for row in rows if row["key_id"] == created["key_id"])
    assert (mine["tenant"], mine["app"], mine["revoked"]) == ("t1", "a1", None)
    assert created["key"] not in out
    assert created["key"] not in gateway.store.read_bytes().decode("latin-1")  # hashed only
    assert run(capsys, "keys", "revoke", created["key_id"], "--config", config)[0] == 0
    code, _, err = run(capsys, "keys", "revoke", created["key_id"], "--config", config)
    assert code == 2 and "already revoked" in err
    code, _, err = run(capsys, "keys", "revoke", "no-such-id", "--config", config)
    assert code == 2 and "no key with id" in err


def test_keys_create_refuses_a_bad_region(gateway, capsys):
    code, _, err = run(capsys, "keys", "create", "--config", str(gateway.config),
                       "--tenant", "t", "--app", "a", "--region", "France")
    assert code == 2 and "ISO 3166-1" in err


def test_events_jsonl_and_csv_use_the_design_field_names_oldest_first(gateway, capsys):
    gateway.post("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"})
    code, out, _ = run(capsys, "events", "--config", str(gateway.config))
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and events
    assert all(list(e) == list(FIELDS) for e in events)
    times = [(e["time"], e["id"]) for e in events]
    assert times == sorted(times)
    code, out, _ = run(capsys, "events", "--config", str(gateway.config), "--format", "csv")
    reader = csv.DictReader(io.StringIO(out))
    assert tuple(reader.fieldnames) == FIELDS
    assert len(list(reader)) == len(events)


def test_events_since_filters_by_time(gateway, capsys):
    code, out, _ = run(capsys, "events", "--config", str(gateway.config), "--since", "2999-01-01")
    assert code == 0 and out == ""
    with pytest.raises(SystemExit):
        main(["events", "--config", str(gateway.config), "--since", "yesterday-ish"])
    assert "is not a time" in capsys.readouterr().err


def test_report_groups_and_sums_cost_exactly(gateway, capsys):
    code, out, _ = run(capsys, "events", "--config", str(gateway.config))
    events = [json.loads(line) for line in out.splitlines()]
    code, out, _ = run(capsys, "report", "--config", str(gateway.config),
                       "--by", "provider,model_requested", "--format", "json")
    rows = json.loads(out)
    for row in rows:
        mine = [e for e in events if (e["provider"], e["model_requested"]) ==
                (row["provider"], row["model_requested"])]
        assert row["requests"] == len(mine)
        assert row["input_tokens"] == sum(e["input_tokens"] for e in mine)
        costs = [Decimal(e["cost"]) for e in mine if e["cost"] is not None]
        assert (Decimal(row["cost"]) if row["cost"] else None) == (sum(costs) if costs else None)
    code, out, _ = run(capsys, "report", "--config", str(gateway.config), "--by", "tenant")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["tenant", "requests", "input_tokens"]
    code, out, _ = run(capsys, "report", "--config", str(gateway.config), "--format", "csv")
    assert out.splitlines()[0].startswith("requests,input_tokens")


def test_report_refuses_an_unknown_grouping(gateway, capsys):
    code, _, err = run(capsys, "report", "--config", str(gateway.config), "--by", "colour")
    assert code == 2 and "cannot group by colour" in err


def test_budgets_set_list_status_remove(gateway: Gateway, capsys):
    config = str(gateway.config)
    code, out, _ = run(capsys, "budgets", "set", "--config", config, "--app", "cli-app",
                       "--limit", "2.50", "--period", "week", "--json")
    assert code == 0
    budget = json.loads(out)
    assert (budget["limit"], budget["unit"], budget["source"]) == ("2.5", "USD", "store")
    key, _ = gateway.new_key("cli-co", "cli-app")
    r = gateway.chat("gpt-4o-mini", "x", key=key)
    cost = Decimal(r.headers["x-tokometer-cost"])
    code, out, _ = run(capsys, "budgets", "status", "--config", config, "--json")
    status = next(json.loads(line) for line in out.splitlines()
                  if json.loads(line)["budget_id"] == budget["budget_id"])
    assert Decimal(status["spent"]) == cost
    assert Decimal(status["remaining"]) == Decimal("2.5") - cost
    code, out, _ = run(capsys, "budgets", "list", "--config", config)
    assert budget["budget_id"] in out and "cli-app" in out
    assert run(capsys, "budgets", "remove", "--config", config, budget["budget_id"])[0] == 0
    code, _, err = run(capsys, "budgets", "remove", "--config", config, budget["budget_id"])
    assert code == 2 and "no budget with id" in err


@pytest.mark.parametrize(("args", "fragment"), [
    (["--tenant", "t", "--limit", "ten"], "non-negative decimal"),
    (["--tenant", "t", "--limit", "1", "--unit", "EUR"], "server currency 'USD'"),
])
def test_budgets_set_rejects_bad_input(gateway: Gateway, capsys, args, fragment):
    code, _, err = run(capsys, "budgets", "set", "--config", str(gateway.config), *args)
    assert code == 2 and fragment in err


# --- numeric and time arguments out of range: argparse's usage error, exit 2, no traceback --

@pytest.mark.parametrize(("args", "fragment"), [
    (["report", "--top", "0"], "argument --top: '0' is not a whole number from 1 to 1000000"),
    (["report", "--top", "-1"], "argument --top: '-1' is not a whole number"),
    (["report", "--top", "1000001"], "argument --top: '1000001' is not a whole number"),
    (["report", "--top", "9" * 30], "argument --top:"),
    (["report", "--top", "lots"], "argument --top: 'lots' is not a whole number"),
    (["rankings", "--weeks", "0"], "argument --weeks: '0' is not a whole number from 1 to 520"),
    (["rankings", "--weeks", "100000"], "argument --weeks: '100000' is not a whole number"),
    (["events", "--since", "99999999999d"], "argument --since: '99999999999d' is not a time "
                                            "in the years 1 to 9999"),
    (["report", "--since", "999999999w"], "argument --since: '999999999w' is not a time"),
    (["tasks", "--until", "0001-01-01T00:00:00+01:00"], "argument --until: "
                                                         "'0001-01-01T00:00:00+01:00' is not"),
    (["flows", "--since", "9999-12-31T23:59:59-01:00"], "argument --since:"),
    (["export", "-o", "x.csv", "--since", "1e9d"], "argument --since: '1e9d' is not a time"),
    (["rankings", "--since", "1d"], "unrecognized arguments: --since"),
    (["report", "--period", "fortnight"], "argument --period: invalid choice: 'fortnight'"),
    (["budgets", "set", "--tenant", "t", "--limit", "1", "--period", "year"],
     "argument --period: invalid choice: 'year'"),
])
def test_arguments_out_of_range_are_usage_errors(capsys, args, fragment):
    with pytest.raises(SystemExit) as e:
        main([*args, "--config", "nowhere.toml"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("usage: tokometer") and fragment in err and "Traceback" not in err


def test_arguments_at_their_bounds_are_taken(gateway, capsys):
    config = str(gateway.config)
    gateway.chat("gpt-4o-mini", "x").raise_for_status()
    gateway.wait_rolled_up()
    code, out, _ = run(capsys, "report", "--config", config, "--by", "model", "--top", "1000000",
                       "--since", "0001-01-01", "--until", "9999-12-31T23:59:59Z")
    assert code == 0 and "gpt-4o-mini" in out
    code, out, _ = run(capsys, "rankings", "--config", config, "--weeks", "520",
                       "--format", "json")
    assert code == 0 and json.loads(out)


def test_commands_close_the_store_they_open(gateway: Gateway, capsys, tmp_path, monkeypatch):
    """Each command opens the store for its own use and closes it, even when it fails."""
    opened: list[SQLiteStore] = []

    def recording(*args, **kwargs) -> SQLiteStore:
        opened.append(open_store(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(commands, "open_store", recording)
    for args in (["keys", "list"], ["budgets", "status"], ["budgets", "list"],
                 ["budgets", "remove", "no-such-budget"], ["events"], ["report", "--by", "model"],
                 ["rankings"], ["flows"], ["tasks"], ["ledger", "head"], ["ledger", "audit"],
                 ["receipt", "no-such-event"], ["export", "-o", str(tmp_path / "e.csv"),
                                                "--format", "csv"]):
        opened.clear()
        main([*args, "--config", str(gateway.config)])
        assert opened, args
        for store in opened:
            with pytest.raises(sqlite3.ProgrammingError, match="closed"):
                store.execute("SELECT 1")
    capsys.readouterr()


def test_a_command_with_standard_output_closed_refuses_before_it_creates_a_key(gateway):
    """`keys create >&-` would store a key that is shown once, to nowhere."""
    with open_store(gateway.store) as store:
        keys_before = len(list_keys(store))
    done = subprocess.run(
        ["bash", "-c", '"$0" -m tokometer.cli keys create --tenant t --app a '
                       '--config "$1" >&-', sys.executable, str(gateway.config)],
        capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (2, "tokometer: standard output is closed\n")
    with open_store(gateway.store) as store:
        assert len(list_keys(store)) == keys_before
