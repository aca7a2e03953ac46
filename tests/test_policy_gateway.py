"""Budgets, rate limits, residency rules and routing, end to end through a real gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from conftest import FAKE_KEYS, Gateway, providers_toml, start_gateway, stop_gateway
from fake_upstream import FakeUpstream
from tokometer.ledger import open_store

ADMIN = "admin-secret"
OUT_PRICE = Decimal(10)  # per 1M output tokens; input is free, so a request costs its output
FIXTURE_OUTPUT = 300  # completion_tokens in tests/fixtures/openai_chat.json
ONE_REQUEST = FIXTURE_OUTPUT * OUT_PRICE / 1_000_000  # = what it reserves with max_tokens=300
FREE_INPUT = "{ input = 0, cache_read = 0, cache_write = 0, output = 10 }"
CHEAP = "{ input = 0.15, output = 0.6 }"
DEAR = "{ input = 0.27, output = 1.1 }"
MESSAGES = [{"role": "user", "content": "hi"}]
METERED = {"model": "metered", "messages": MESSAGES}


def policy_toml(upstream: FakeUpstream, tpm: int) -> str:
    return f"""admin_token_env = "TKM_ADMIN"
{providers_toml(upstream)}
[[models]]
name = "metered"
routes = [{{ provider = "fake-openai", model = "gpt-4o-mini-delayed" }}]
price = {FREE_INPUT}

[[models]]
name = "multi"
routes = [{{ provider = "deepseek", model = "deepseek-chat", price = {DEAR} }},
          {{ provider = "fake-openai", model = "gpt-4o-mini", price = {CHEAP} }}]

[[models]]
name = "multi-cheap"
strategy = "price"
routes = [{{ provider = "deepseek", model = "deepseek-chat", price = {DEAR} }},
          {{ provider = "fake-openai", model = "gpt-4o-mini", price = {CHEAP} }}]

[[models]]
name = "multi-fast"
strategy = "latency"
routes = [{{ provider = "fake-openai", model = "mystery-model-delayed", price = {CHEAP} }},
          {{ provider = "deepseek", model = "mystery-model", price = {DEAR} }}]

[[models]]
name = "deepseek-chat"
routes = [{{ provider = "deepseek" }}]
price = {DEAR}

[[models]]
name = "claude-sonnet-5"
routes = [{{ provider = "fake-anthropic" }}]
price = {CHEAP}

[[providers]]
name = "impatient"
api = "openai"
base_url = "{upstream.url}/v1"
timeout = 0.5

[[models]]
name = "impatient"
routes = [{{ provider = "impatient", model = "hang" }}]
price = {CHEAP}

[[models]]
name = "one-attempt"
max_attempts = 1
routes = [{{ provider = "dead", model = "gpt-4o-mini" }},
          {{ provider = "fake-openai", model = "gpt-4o-mini" }}]
price = {CHEAP}

[[limits]]
app = "rpm-app"
rpm = 5

[[limits]]
app = "rpm-sdk-app"
rpm = 1

[[limits]]
app = "tpm-app"
tpm = {tpm}

[[rules]]
tenant = "eu-corp"
deny_regions = ["CN"]

[[rules]]
tenant = "eu-only"
allow_origins = ["EU"]
"""


def reservation_tokens(o200k) -> int:
    """What a 'hi' chat with max_tokens=300 reserves: OpenAI's chat formula, counted here."""
    return 3 + 3 + len(o200k.encode("user")) + len(o200k.encode("hi")) + FIXTURE_OUTPUT


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory, o200k):
    tpm = 3 * reservation_tokens(o200k) + reservation_tokens(o200k) // 2  # room for 3
    g = start_gateway(tmp_path_factory.mktemp("policy"), policy_toml(upstream, tpm),
                      env={**FAKE_KEYS, "TKM_ADMIN": ADMIN})
    yield g
    stop_gateway(g)


def set_budget(gw: Gateway, **budget: object) -> httpx.Response:
    """A budget set through the admin API."""
    return gw.request("PUT", "/admin/budgets", budget, key=ADMIN)


def key_for(gw: Gateway, tenant: str, app: str = "tests", region: str | None = "DE") -> str:
    r = gw.post("/admin/keys", {"tenant": tenant, "app": app, "region": region}, key=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["key"]


def spend(gw: Gateway, tenant: str) -> Decimal:
    conn = open_store(gw.store)
    try:
        value = conn.execute("SELECT decimal_sum(cost) FROM events WHERE tenant = ?",
                             (tenant,)).fetchone()[0]
    finally:
        conn.close()
    return Decimal(value or 0)


def statuses(responses: list[httpx.Response]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in responses:
        out[r.status_code] = out.get(r.status_code, 0) + 1
    return out


# --- budgets ----------------------------------------------------------------------------------

def test_fifty_concurrent_requests_against_a_budget_worth_ten(gw, upstream):
    key = key_for(gw, "budget-co")
    r = set_budget(gw, tenant="budget-co", limit=str(10 * ONE_REQUEST), unit="USD", period="day")
    assert r.status_code == 200, r.text
    calls = len(upstream.calls_for("gpt-4o-mini-delayed"))
    responses = gw.burst({**METERED, "max_tokens": FIXTURE_OUTPUT}, [key] * 50)
    assert statuses(responses) == {200: 10, 402: 40}
    assert len(upstream.calls_for("gpt-4o-mini-delayed")) - calls == 10  # refused: no call
    assert spend(gw, "budget-co") == 10 * ONE_REQUEST
    refused = next(r for r in responses if r.status_code == 402)
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    assert "tenant 'budget-co'" in error["message"] and "resets at" in error["message"]
    status = {b["scope_value"]: b for b in gw.get("/admin/budgets", key=ADMIN).json()["data"]}
    assert Decimal(status["budget-co"]["spent"]) == 10 * ONE_REQUEST
    assert status["budget-co"]["reserved"] == "0" and status["budget-co"]["remaining"] == "0"


def test_without_max_tokens_the_default_bound_is_reserved_and_refused_if_it_cannot_fit(
        gw, upstream):
    key = key_for(gw, "loose-co")
    set_budget(gw, tenant="loose-co", limit=str(10 * ONE_REQUEST), unit="USD", period="month")
    # Each would reserve 4096 output tokens (the default bound), more than the whole budget:
    # refused up front, no provider call, nothing spent.
    calls = len(upstream.calls_for("gpt-4o-mini-delayed"))
    responses = gw.burst(METERED, [key] * 3)
    assert statuses(responses) == {402: 3}
    assert len(upstream.calls_for("gpt-4o-mini-delayed")) == calls
    assert "lower max_tokens" in responses[0].json()["error"]["message"]
    assert spend(gw, "loose-co") == 0
    assert gw.chat("metered", key=key, max_tokens=FIXTURE_OUTPUT).status_code == 200


def test_streamed_requests_are_charged_to_budgets_too(gw):
    key = key_for(gw, "stream-co")
    set_budget(gw, tenant="stream-co", limit=str(2 * ONE_REQUEST), unit="USD", period="day")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    for _ in range(2):
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="metered", messages=MESSAGES, max_tokens=300, stream=True) if c.choices)
        assert text
    assert spend(gw, "stream-co") == 2 * ONE_REQUEST
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="metered", messages=MESSAGES, max_tokens=300,
                                       stream=True)
    assert e.value.status_code == 402


def test_a_refusal_is_recorded_as_an_event(gw):
    key = key_for(gw, "broke-co")
    set_budget(gw, tenant="broke-co", limit=0, unit="tokens", period="week")
    r = gw.chat("metered", key=key, max_tokens=10)
    assert r.status_code == 402
    event = gw.event(r.headers["x-tokometer-event-id"])
    assert (event["status"], event["error_type"], event["tenant"]) == (402, "budget_exceeded",
                                                                       "broke-co")
    assert event["provider"] is None and event["cost"] == "0" and event["output_tokens"] == 0


def test_a_bad_key_is_recorded_as_an_auth_refusal(gw):
    r = gw.chat("metered", key="tkm-nope")
    assert r.status_code == 401
    event = gw.event(r.headers["x-tokometer-event-id"])
    assert (event["status"], event["error_type"]) == (401, "authentication_error")
    # The body of a request without a valid key is never read: its model is unknown.
    assert event["model_requested"] is None and event["key_id"] is None


def test_anthropic_clients_get_an_anthropic_shaped_402(gw):
    key = key_for(gw, "ant-co")
    set_budget(gw, tenant="ant-co", limit="0", unit="USD", period="total")
    client = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as e:
        client.messages.create(model="claude-sonnet-5", max_tokens=100, messages=MESSAGES)
    assert e.value.status_code == 402
    assert e.value.body["error"]["type"] == "billing_error"
    assert "does not reset" in e.value.body["error"]["message"]


def test_budgets_survive_a_restart(upstream, tmp_path):
    body = f"""{providers_toml(upstream)}
[[models]]
name = "metered"
routes = [{{ provider = "fake-openai", model = "gpt-4o-mini-delayed" }}]
price = {FREE_INPUT}

[[budgets]]
tenant = "restart-co"
limit = {2 * ONE_REQUEST}
unit = "USD"
period = "month"
"""
    g = start_gateway(tmp_path, body, env=FAKE_KEYS)
    try:
        key, _ = g.new_key("restart-co")
        codes = [g.chat("metered", key=key, max_tokens=300).status_code for _ in range(3)]
        assert codes == [200, 200, 402]
    finally:
        stop_gateway(g)
    g = start_gateway(tmp_path, body, env=FAKE_KEYS)
    try:
        assert g.chat("metered", key=key, max_tokens=300).status_code == 402
        out = subprocess.run([sys.executable, "-m", "tokometer.cli", "budgets", "status",
                              "--config", str(g.config), "--json"],
                             capture_output=True, text=True, check=True).stdout
        status = json.loads(out.splitlines()[0])
        assert (status["budget_id"][:7], Decimal(status["spent"]), status["remaining"]) == (
            "config-", 2 * ONE_REQUEST, "0")
    finally:
        stop_gateway(g)


# --- rate limits ------------------------------------------------------------------------------

def test_rpm_refuses_past_the_limit_with_retry_after(gw):
    key = key_for(gw, "acme", app="rpm-app")
    responses = gw.burst({**METERED, "max_tokens": 10}, [key] * 8)
    assert statuses(responses) == {200: 5, 429: 3}
    refused = next(r for r in responses if r.status_code == 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    event = gw.event(refused.headers["x-tokometer-event-id"])
    assert (event["status"], event["error_type"], event["app"]) == (429, "rate_limit_exceeded",
                                                                    "rpm-app")


def test_a_tpm_limit_holds_under_concurrency(gw, upstream):
    key = key_for(gw, "acme", app="tpm-app")
    calls = len(upstream.calls_for("gpt-4o-mini-delayed"))
    responses = gw.burst({**METERED, "max_tokens": FIXTURE_OUTPUT}, [key] * 12)
    assert statuses(responses) == {200: 3, 429: 9}  # the limit has room for 3 reservations
    assert len(upstream.calls_for("gpt-4o-mini-delayed")) - calls == 3
    # Settled at their actual 2,306 tokens each, they fill the minute: still refused.
    again = gw.chat("metered", key=key, max_tokens=1)
    assert again.status_code == 429 and int(again.headers["retry-after"]) >= 1


def test_openai_sdk_sees_rate_limit_error(gw):
    key = key_for(gw, "acme", app="rpm-sdk-app")  # its own window, of one request a minute
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    client.chat.completions.create(model="metered", messages=MESSAGES, max_tokens=5)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="metered", messages=MESSAGES, max_tokens=5)


# --- residency and origin rules -----------------------------------------------------------------

def test_a_rule_that_leaves_no_route_gives_403_and_no_upstream_call(gw, upstream):
    key = key_for(gw, "eu-corp")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    calls = len(upstream.calls_for("deepseek-chat"))
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="deepseek-chat", messages=MESSAGES)
    assert len(upstream.calls_for("deepseek-chat")) == calls
    message = e.value.body["message"]
    assert "rules[0]" in message and "tenant 'eu-corp'" in message and "CN" in message
    event = gw.event(e.value.response.headers["x-tokometer-event-id"])
    assert (event["status"], event["error_type"]) == (403, "residency_rule")


def test_a_rule_skips_the_routes_it_forbids(gw, upstream):
    key = key_for(gw, "eu-corp")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    calls = len(upstream.calls_for("deepseek-chat"))
    raw = client.chat.completions.with_raw_response.create(model="multi", messages=MESSAGES)
    assert gw.event(raw.headers["x-tokometer-event-id"])["provider"] == "fake-openai"
    assert len(upstream.calls_for("deepseek-chat")) == calls


def test_an_origin_rule_refuses_anthropic_clients_in_their_shape(gw):
    key = key_for(gw, "eu-only")
    client = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        client.messages.create(model="claude-sonnet-5", max_tokens=10, messages=MESSAGES)
    assert "allowed origin" in e.value.body["error"]["message"]


# --- routing ------------------------------------------------------------------------------------

def served_by(gw: Gateway, model: str, **body) -> tuple[int, str | None]:
    r = gw.chat(model, **body)
    return r.status_code, gw.event(r.headers["x-tokometer-event-id"])["provider"] \
        if r.status_code == 200 else r.json()["error"]["code"]


@pytest.mark.parametrize(("provider", "expected"), [
    (None, "deepseek"),
    ({"order": ["fake-openai"]}, "fake-openai"),
    ({"order": ["FAKE-OPENAI", "deepseek"]}, "fake-openai"),
    ({"only": ["deepseek"]}, "deepseek"),
    ({"ignore": ["deepseek"]}, "fake-openai"),
    ({"max_price": {"prompt": 0.2}}, "fake-openai"),
    ({"max_price": {"completion": 1.1}}, "deepseek"),
    ({"sort": "price"}, "fake-openai"),
])
def test_openrouter_provider_preferences(gw, upstream, provider, expected):
    extra = {} if provider is None else {"provider": provider}
    assert served_by(gw, "multi", **extra) == (200, expected)
    assert "provider" not in upstream.calls[-1]["body"]  # removed before forwarding


@pytest.mark.parametrize("provider", [
    {"only": ["nobody"]},
    {"max_price": {"prompt": 0.01}},
    {"order": ["nobody"], "allow_fallbacks": False},
])
def test_preferences_that_leave_no_route_are_a_404(gw, provider):
    assert served_by(gw, "multi", provider=provider) == (404, "no_route")


@pytest.mark.parametrize("provider", [
    "cheap", {"only": "deepseek"}, {"sort": "random"}, {"max_price": {"prompt": -1}},
    {"allow_fallbacks": "no"}, {"data_collection": "deny"},
])
def test_bad_provider_preferences_are_a_400(gw, provider):
    r = gw.chat("multi", provider=provider)
    assert r.status_code == 400 and "provider" in r.json()["error"]["message"]


def test_price_strategy_takes_the_cheapest_route_first(gw):
    assert served_by(gw, "multi-cheap") == (200, "fake-openai")


def test_latency_strategy_learns_the_faster_route(gw):
    first = served_by(gw, "multi-fast")
    assert first == (200, "fake-openai")  # untried routes keep their order
    assert [served_by(gw, "multi-fast") for _ in range(3)] == [(200, "deepseek")] * 3


def test_the_attempt_limit_stops_fallback(gw):
    assert served_by(gw, "one-attempt") == (502, None)  # the live second route is not tried


def test_a_providers_own_timeout_applies(gw):
    # The server's upstream_timeout is the default 600 s; this provider allows 0.5 s.
    r = gw.chat("impatient", timeout=20)
    assert r.status_code == 504 and r.json()["error"]["type"] == "upstream_timeout"


# --- admin API ------------------------------------------------------------------------------------

def test_admin_keys_create_list_revoke(gw):
    key = key_for(gw, "admin-co", region=None)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    assert client.models.list().data
    listed = gw.get("/admin/keys", key=ADMIN).json()["data"]
    mine = [k for k in listed if k["tenant"] == "admin-co"]
    assert len(mine) == 1 and "key" not in mine[0]
    assert gw.request("DELETE", f"/admin/keys/{mine[0]['key_id']}", key=ADMIN).status_code == 200
    with pytest.raises(openai.AuthenticationError):  # at once, not after a refresh
        client.models.list()
    assert gw.request("DELETE", f"/admin/keys/{mine[0]['key_id']}", key=ADMIN).status_code == 400


def test_admin_budgets_set_change_remove(gw):
    body = {"app": "admin-app", "limit": "5", "unit": "USD", "period": "week"}
    first = set_budget(gw, **body).json()
    changed = set_budget(gw, **{**body, "limit": 7}).json()
    assert changed["budget_id"] == first["budget_id"] and changed["limit"] == "7"
    path = f"/admin/budgets/{first['budget_id']}"
    assert gw.request("DELETE", path, key=ADMIN).status_code == 200
    ids = [b["budget_id"] for b in gw.get("/admin/budgets", key=ADMIN).json()["data"]]
    assert first["budget_id"] not in ids
    assert gw.request("DELETE", path, key=ADMIN).status_code == 404


@pytest.mark.parametrize(("body", "fragment"), [
    ({"limit": 1, "unit": "USD", "period": "day"}, "exactly one of"),
    ({"tenant": "a", "app": "b", "limit": 1, "unit": "USD", "period": "day"}, "exactly one of"),
    ({"tenant": "a", "limit": -1, "unit": "USD", "period": "day"}, "non-negative"),
    ({"tenant": "a", "limit": "lots", "unit": "USD", "period": "day"}, "non-negative"),
    ({"tenant": "a", "limit": 1, "unit": "EUR", "period": "day"}, "server currency"),
    ({"tenant": "a", "limit": 1, "unit": "USD", "period": "year"}, "period must be"),
    ({"tenant": "a", "limit": 1, "unit": "USD", "period": "day", "x": 1}, "unknown field"),
    ({"tenant": "a", "unit": "USD", "period": "day"}, "missing field 'limit'"),
    ([1, 2], "JSON object"),
])
def test_admin_rejects_bad_budgets(gw, body, fragment):
    r = gw.request("PUT", "/admin/budgets", body, key=ADMIN)
    assert r.status_code == 400 and fragment in r.json()["error"]["message"]


def test_admin_needs_the_admin_token(gw):
    assert gw.get("/admin/keys", key="wrong").status_code == 401
    assert gw.get("/admin/keys", key=gw.key).status_code == 401
    r = gw.request("PUT", "/admin/budgets", b"{nope", key=ADMIN)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert gw.get("/admin/nothing", key=ADMIN).status_code == 404


def test_admin_api_is_off_without_a_token(gateway):
    r = gateway.get("/admin/keys", key="x")
    assert r.status_code == 404 and "admin API is off" in r.json()["error"]["message"]


# --- corrections --------------------------------------------------------------------------------

def test_a_refund_is_a_new_event_that_references_the_original(gw):
    key = key_for(gw, "corr-co")
    set_budget(gw, tenant="corr-co", limit="1", unit="USD", period="month")
    original_id = gw.chat("metered", key=key, max_tokens=300).headers["x-tokometer-event-id"]
    original = gw.event(original_id)
    r = gw.post("/admin/corrections", {
        "event_id": original_id, "reason": "refund: wrong answer", "output_tokens": -100,
        "cost": str(-ONE_REQUEST / 3)}, key=ADMIN)
    assert r.status_code == 201, r.text
    fix = gw.event(r.json()["id"])
    assert (fix["corrects"], fix["usage_source"], fix["tenant"]) == (original_id, "correction",
                                                                     "corr-co")
    assert (fix["output_tokens"], Decimal(fix["cost"])) == (-100, -ONE_REQUEST / 3)
    assert fix["price_ref"] == "correction: refund: wrong answer"
    assert gw.event(original_id) == original  # never rewritten
    assert spend(gw, "corr-co") == ONE_REQUEST - ONE_REQUEST / 3
    status = {b["scope_value"]: b for b in gw.get("/admin/budgets", key=ADMIN).json()["data"]}
    assert Decimal(status["corr-co"]["spent"]) == ONE_REQUEST - ONE_REQUEST / 3
    again = gw.post("/admin/corrections/", {"event_id": original_id, "reason": "once more",
                                            "output_tokens": -1}, key=ADMIN)
    assert again.headers["x-tokometer-event-id"] == again.json()["id"]  # a trailing slash too


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"event_id": "nope", "reason": "x", "cost": "-1"}, 404, "no event"),
    ({"event_id": "E", "cost": "-1"}, 400, "missing field 'reason'"),
    ({"event_id": "E", "reason": " ", "cost": "-1"}, 400, "needs a reason"),
    ({"event_id": "E", "reason": "x", "cost": -0.5}, 400, "decimal string"),
    ({"event_id": "E", "reason": "x", "cost": "lots"}, 400, "decimal string"),
    ({"event_id": "E", "reason": "x", "output_tokens": 1.5}, 400, "must be an integer"),
    ({"event_id": "E", "reason": "x"}, 400, "must change"),
    ({"event_id": "E", "reason": "x", "input": 1}, 400, "unknown field"),
    ({"event_id": "E", "reason": "x" * 257, "cost": "-1"}, 400, "longer than 256 characters"),
])
def test_bad_corrections_are_refused(gw, body, status, fragment):
    event_id = gw.chat("metered", max_tokens=5).headers["x-tokometer-event-id"]
    body = {**body, "event_id": event_id if body["event_id"] == "E" else body["event_id"]}
    r = gw.post("/admin/corrections", body, key=ADMIN)
    assert r.status_code == status and fragment in r.json()["error"]["message"]


# --- /metrics -------------------------------------------------------------------------------------

def test_metrics_count_requests_tokens_cost_and_refusals(gw):
    def scrape() -> str:
        r = gw.get("/metrics", key=ADMIN)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return r.text

    def value(text: str, sample: str) -> float:
        line = next((x for x in text.splitlines() if x.startswith(sample + " ")), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    # The provider's "gpt-4o-mini-2024-07-18" is not configured: the label is the model asked.
    served = 'model="multi",provider="fake-openai"'  # labels sort by name
    ok = f'tokometer_requests_total{{{served},status="200"}}'
    out = f'tokometer_tokens_total{{kind="output",{served}}}'
    refused = 'tokometer_refusals_total{reason="authentication_error"}'
    before = scrape()
    assert served_by(gw, "multi", provider={"only": ["fake-openai"]})[0] == 200
    gw.chat("multi", key="tkm-no")
    after = scrape()
    assert value(after, ok) == value(before, ok) + 1
    assert value(after, out) == value(before, out) + FIXTURE_OUTPUT
    assert value(after, refused) == value(before, refused) + 1
    assert "tokometer_request_duration_seconds_bucket" in after
    assert f'tokometer_cost_total{{currency="USD",{served}}}' in after
    assert gw.get("/metrics", key="wrong").status_code == 401
