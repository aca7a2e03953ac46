"""Attacks on `tokometer reconcile`: each test here failed on the code as reviewed (all
mended)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import MINIMAL_CONFIG, make_event
from processes import cli
from test_reconcile import CLAUDE, DAY1, DAY2, GPT, _events, _sums, ledger  # noqa: F401
from test_stores import append
from tokometer.analytics.reconcile import read_export
from tokometer.errors import ConfigError
from tokometer.ledger import open_store
from tokometer.ledger.signer import load_signer

D1, D2 = DAY1.date().isoformat(), DAY2.date().isoformat()


def _matching_csv(events: list[Any], path: Path) -> Path:
    """A CSV export that agrees with the ledger on every line of provider p."""
    lines = ["date,model,input_tokens,cache_read_tokens,cache_write_tokens,output_tokens,cost"]
    for day, model in ((D1, GPT), (D2, GPT), (D2, CLAUDE)):
        s = _sums(events, day, model)
        lines.append(f"{day},{model},{s['input']},{s['cached']},{s['written']},"
                     f"{s['output']},{s['cost']}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _json_run(config: Path, export: Path, *extra: str) -> tuple[int, list[dict[str, Any]], str]:
    done = cli(config, "reconcile", str(export), "--provider", "p", "--format", "json", *extra)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def _bare_config(tmp_path: Path) -> Path:
    config = tmp_path / "tokometer.toml"
    config.write_text(f'[server]\nstore = "sqlite:///{tmp_path / "t.db"}"\n' + MINIMAL_CONFIG)
    return config


# --- --since / --until: the two sides are cut differently ---------------------------------

@pytest.mark.parametrize("bound", [
    ("--until", "2026-11-03T23:02:00Z"),  # the ledger kept 23:00-23:01 of day 2, the export none
    ("--since", "2026-11-03T23:02:00Z"),      # the export keeps all of day 2, the ledger 23:02 on
    ("--since", "2026-11-03T00:00:00+01:00"),  # local midnight: the export keeps all of day 1
])
def test_since_until_cut_both_sides_alike(ledger, tmp_path, bound):  # noqa: F811
    config, events = ledger
    export = _matching_csv(events, tmp_path / "usage.csv")
    code, rows, _ = _json_run(config, export)
    assert code == 0  # the export agrees with the ledger on everything
    code, rows, _ = _json_run(config, export, *bound)
    assert code == 0, [(r["day"], r["model"], r["flagged"]) for r in rows if r["flagged"]]


# --- currencies ---------------------------------------------------------------------------

def test_an_export_in_two_currencies_is_not_summed_as_one(tmp_path):
    export = tmp_path / "costs.json"
    export.write_text(json.dumps({"data": [{"start_time": 1793577600, "results": [
        {"object": "organization.costs.result", "line_item": "m, input",
         "amount": {"value": 1, "currency": "usd"}},
        {"object": "organization.costs.result", "line_item": "m, output",
         "amount": {"value": 2, "currency": "eur"}}]}]}))
    try:
        account = read_export(export)
    except ConfigError:
        return  # refusing it is fine
    assert account.lines[("2026-11-02", "m")].costs == {"USD": 1, "EUR": 2}


def test_a_csv_in_two_currencies_is_not_summed_as_one(tmp_path):
    export = tmp_path / "costs.csv"
    export.write_text("date,model,cost,currency\n2026-11-02,m,5,USD\n2026-11-02,m,7,EUR\n")
    try:
        account = read_export(export)
    except ConfigError:
        return
    assert account.lines[("2026-11-02", "m")].costs == {"USD": 5, "EUR": 7}


def test_ledger_costs_in_two_currencies_are_not_summed_as_one(store_location, tmp_path):
    at = "2026-11-02T10:0{}:00Z"
    with open_store(store_location, create=True) as store:
        append(store, [make_event(time=at.format(0), provider="p", model="m",
                                  cost=Decimal("2"), currency="USD"),
                       make_event(time=at.format(1), provider="p", model="m",
                                  cost=Decimal("1"), currency="EUR")],
               load_signer(tmp_path / "key.pem"))
    url = (f"sqlite:///{store_location}" if isinstance(store_location, Path)
           else store_location.url)
    config = tmp_path / "tokometer.toml"
    config.write_text(f'[server]\nstore = "{url}"\nsigning_key = "{tmp_path / "key.pem"}"\n'
                      + MINIMAL_CONFIG)
    export = tmp_path / "costs.csv"
    export.write_text("date,model,cost,currency\n2026-11-02,m,2,USD\n")
    _, rows, _ = _json_run(config, export)
    assert [(r["cost_ledger"], r["currency"]) for r in rows] == [(None, "EUR+USD")]


# --- kinds the export does not give --------------------------------------------------------

def test_a_cost_export_does_not_flag_tokens_it_never_gave(ledger, tmp_path):  # noqa: F811
    """An OpenAI Costs export has no tokens at all; a line in the ledger only must not show
    the provider's tokens as 0 and flag them (only its cost is a difference)."""
    config, events = ledger
    s = _sums(events, D1, GPT)
    export = tmp_path / "costs.json"
    export.write_text(json.dumps({"data": [{"start_time": int(DAY1.replace(hour=0).timestamp()),
                                            "results": [{
        "object": "organization.costs.result", "line_item": f"{GPT}, input",
        "amount": {"value": str(s["cost"]), "currency": "usd"}}]}]}))
    _, rows, _ = _json_run(config, export)
    only_ours = next(r for r in rows if (r["day"], r["model"]) == (D2, CLAUDE))
    assert only_ours["input_tokens_provider"] is None, only_ours
    assert only_ours["flagged"] == "cost", only_ours["flagged"]


# --- the same provider named twice -----------------------------------------------------------

def test_a_provider_named_twice_is_counted_once(ledger, tmp_path):  # noqa: F811
    config, events = ledger
    export = _matching_csv(events, tmp_path / "usage.csv")
    done = cli(config, "reconcile", str(export), "--provider", "p,p", "--format", "json")
    rows = json.loads(done.stdout)
    first = next(r for r in rows if (r["day"], r["model"]) == (D1, GPT))
    assert first["input_tokens_ledger"] == _sums(events, D1, GPT)["input"]
    assert done.returncode == 0


# --- errors that are tracebacks, or no answer at all ------------------------------------------

@pytest.mark.parametrize(("content", "args"), [
    ("date,model,input_tokens\n2026-11-02,m,5\n", ("--tolerance", "NaN")),
    ("date,model,input_tokens\n2026-11-02,m,5\n", ("--tolerance", "sNaN")),
    ("[" * 100_000 + "]" * 100_000, ()),  # deep JSON: RecursionError
    (json.dumps({"data": [{"starting_at": "2026-11-02T00:00:00Z", "results": [
        {"currency": "USD", "amount": "1e999999999", "model": "m"}]}]}), ()),  # Overflow (/100)
    (json.dumps({"data": [{"start_time": 1793577600, "results": [
        {"object": "organization.costs.result", "line_item": "m",
         "amount": {"value": "1e999999999", "currency": "usd"}}]}]}), ()),  # Overflow (diff)
])
def test_hostile_exports_and_arguments_are_clear_errors(tmp_path, content, args):
    config = _bare_config(tmp_path)
    with open_store(tmp_path / "t.db", create=True) as store:
        append(store, [make_event(time="2026-11-02T10:00:00Z", provider="p", model="m")],
               load_signer(tmp_path / "key.pem"))
    export = tmp_path / "export.txt"
    export.write_text(content)
    done = cli(config, "reconcile", str(export), "--provider", "p", *args)
    assert "Traceback" not in done.stderr, done.stderr[-300:]
    assert done.returncode == 2 and done.stderr.startswith("tokometer: "), done.stderr


def test_a_start_time_with_a_huge_exponent_is_refused_at_once(tmp_path):
    """`"start_time": 1e999999999` (a JSON number, read as a Decimal) is turned into an int
    before it is checked: minutes of CPU and memory for one number."""
    config = _bare_config(tmp_path)
    export = tmp_path / "export.json"
    export.write_text('{"data": [{"start_time": 1e999999999, "results": []}]}')
    try:
        done = subprocess.run([sys.executable, "-m", "tokometer.cli", "reconcile", str(export),
                               "--provider", "p", "--config", str(config)],
                              capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("no answer in 15 s")
    assert done.returncode == 2 and "not a time or date" in done.stderr, done.stderr
