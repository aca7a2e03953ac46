"""Numbers from clients are bounded: outcomes, budgets and corrections refuse exponents and
absurd magnitudes with a 400 (one `1e999999999` used to take gigabytes and stall the loop)."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from conftest import FAKE_KEYS, MINIMAL_CONFIG, Gateway, providers_toml, start_gateway, stop_gateway
from tokometer.amounts import amount, whole_number
from tokometer.cli import main
from tokometer.errors import RequestError
from tokometer.ledger import open_store

ADMIN = "numbers-secret"
HUGE = ["1e999999999", "1E3", "-1e-999999999", "Infinity", "NaN", "sNaN", "9" * 13,
        "0." + "0" * 16 + "1", "9" * 400]


@pytest.mark.parametrize(("given", "negative", "expected"), [
    ("12.50", False, "12.50"), ("0", False, "0"), (5, False, "5"),
    ("999999999999.9999999999999999", False, "999999999999.9999999999999999"),
    (999_999_999_999, False, "999999999999"), ("-0.0042", True, "-0.0042"),
    (-999_999_999_999, True, "-999999999999"),
])
def test_plain_amounts_are_taken_exactly(given, negative, expected):
    got = amount(given, "x", negative=negative)
    assert got == Decimal(expected) and str(got) == expected  # digit for digit


@pytest.mark.parametrize("given", [
    *HUGE, " 12", "12 ", "+5", ".5", "5.", "1_000", "0x10", "\u0661\u0662", "1,5", "", "-",
    1.5, float("inf"), True, None, [], {}, 10**12, -(10**12), 10**4000])
def test_anything_else_is_refused_with_what_to_send(given):
    with pytest.raises(RequestError) as e:
        amount(given, "limit", negative=True)
    assert e.value.status == 400
    assert "plain notation (no exponent)" in e.value.message and "12 digits" in e.value.message


@pytest.mark.parametrize("given", ["-1", "-0", "-0.0", -1])
def test_a_non_negative_amount_refuses_a_sign(given):
    with pytest.raises(RequestError, match="non-negative"):
        amount(given, "limit")


@pytest.mark.parametrize("given", [10**12, -(10**12), 1.0, True, "5", None])
def test_token_differences_are_bounded_integers(given):
    with pytest.raises(RequestError, match="an integer of at most 12 digits"):
        whole_number(given, "output_tokens")
    assert whole_number(-(10**12 - 1), "output_tokens") == -(10**12 - 1)


# --- through the gateway ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    body = f"""admin_token_env = "TKM_NUMBERS"
{providers_toml(upstream)}
[[models]]
name = "gpt-4o-mini"
routes = [{{ provider = "fake-openai" }}]
price = {{ input = 1, output = 2 }}
"""
    g = start_gateway(tmp_path_factory.mktemp("numbers"), body,
                      env={**FAKE_KEYS, "TKM_NUMBERS": ADMIN})
    yield g
    stop_gateway(g)


def task_event(gw: Gateway, task: str) -> str:
    """The id of the event of one chat for `task`."""
    r = gw.chat("gpt-4o-mini", "x", headers={"x-tokometer-task": task})
    assert r.status_code == 200, r.text
    return r.headers["x-tokometer-event-id"]


def refused(r: httpx.Response, field: str) -> bool:
    message = r.json()["error"]["message"]
    return r.status_code == 400 and message.startswith(field) and "no exponent" in message


@pytest.mark.parametrize("value", HUGE)
def test_outcome_values_are_bounded(gw, value):
    task_event(gw, "bounded-task")
    r = gw.post("/v1/outcomes", {"task": "bounded-task", "outcome": "success", "value": value})
    assert refused(r, "'value'")


@pytest.mark.parametrize("number", [b"1e999999999", b"1E3", b"-1e-999999999",
                                    b"123456789012345678901234567890", b"12.5"])
def test_outcome_values_as_json_numbers_other_than_integers_are_refused(gw, number):
    task_event(gw, "number-task")
    r = gw.post("/v1/outcomes",
                b'{"task": "number-task", "outcome": "success", "value": %s}' % number)
    assert r.status_code == 400  # a float, or no number a double can hold
    conn = open_store(gw.store)
    try:
        assert conn.execute("SELECT COUNT(*) FROM outcomes WHERE task = 'number-task'"
                            ).fetchone()[0] == 0
    finally:
        conn.close()


def test_an_outcome_value_in_bounds_is_stored_digit_for_digit(gw):
    task_event(gw, "exact-task")
    r = gw.post("/v1/outcomes", {"task": "exact-task", "outcome": "partial",
                                 "value": "-123456789012.0000000000000001"})
    assert r.status_code == 201, r.text
    conn = open_store(gw.store)
    try:
        stored = conn.execute("SELECT value FROM outcomes WHERE task = 'exact-task'").fetchone()
    finally:
        conn.close()
    assert stored == ("-123456789012.0000000000000001",)


@pytest.mark.parametrize("limit", [*HUGE, 10**13, -1, "-0"])
def test_budget_limits_are_bounded_in_the_admin_api(gw, limit):
    r = gw.request("PUT", "/admin/budgets", {"tenant": "numbers-co", "limit": limit,
                                             "unit": "USD", "period": "day"}, key=ADMIN)
    assert refused(r, "limit")
    assert gw.get("/admin/budgets", key=ADMIN).json()["data"] == []  # nothing was set


@pytest.mark.parametrize("changes", [
    *({"cost": value} for value in HUGE),
    {"output_tokens": 10**12}, {"input_tokens": -(10**12)}, {"reasoning_tokens": 10**30}])
def test_corrections_are_bounded(gw, changes):
    event_id = task_event(gw, "correct-me")
    r = gw.post("/admin/corrections", {"event_id": event_id, "reason": "x", **changes},
                key=ADMIN)
    message = r.json()["error"]["message"]
    assert r.status_code == 400
    assert ("no exponent" in message) if "cost" in changes else ("at most 12 digits" in message)
    conn = open_store(gw.store)
    try:
        assert conn.execute("SELECT COUNT(*) FROM events WHERE corrects = ?",
                            (event_id,)).fetchone()[0] == 0
    finally:
        conn.close()


def test_a_correction_at_the_bounds_is_recorded_exactly(gw):
    event_id = task_event(gw, "correct-me-too")
    r = gw.post("/admin/corrections", {
        "event_id": event_id, "reason": "x", "output_tokens": -(10**12 - 1),
        "cost": "-999999999999.9999999999999999"}, key=ADMIN)
    assert r.status_code == 201, r.text
    assert r.headers["x-tokometer-event-id"] == r.json()["id"]  # an event, named as such
    fix = gw.event(r.json()["id"])
    assert (fix["output_tokens"], fix["cost"]) == (-(10**12 - 1),
                                                    "-999999999999.9999999999999999")


@pytest.mark.parametrize("limit", ["1e999999999", "12345678901234", "-5", "ten"])
def test_budgets_set_on_the_command_line_is_bounded(tmp_path, capsys, limit):
    config = tmp_path / "t.toml"
    config.write_text(f'[server]\nstore = "sqlite:///{tmp_path}/t.db"\n{MINIMAL_CONFIG}')
    code = main(["budgets", "set", "--config", str(config), "--tenant", "t", "--limit", limit])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("tokometer: limit must be a non-negative decimal")
    assert "Traceback" not in err
