"""The dashboard in a real browser: Debian's chromium driven by Playwright.

Pages load, charts render with data, a drill-down link works, nothing breaks the pages'
Content-Security-Policy; a screenshot of each page is saved under test-artifacts/. Over plain
HTTP: the session cookie, the guard headers and the brake on wrong tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from conftest import FAKE_KEYS, MODELS_TOML, providers_toml, start_gateway, stop_gateway

ADMIN = "dash-secret"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; scripts/test installs it
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
CONSOLE: list[str] = []  # what the browser logged on any page (CSP violations land here)
PAGES = ["/", "/rankings", "/rankings?by=vendor", "/prices", "/prices?by=vendor", "/flows",
         "/tenants", "/tenants/acme", "/tenants/acme/apps/tests", "/wallets",
         "/wallets/prepaid%2Fco", "/tasks", "/live"]


@pytest.fixture(scope="module")
def dash(upstream, tmp_path_factory):
    gw = start_gateway(tmp_path_factory.mktemp("dash"),
                       f'admin_token_env = "TKM_DASH"\n{providers_toml(upstream)}\n{MODELS_TOML}'
                       '[[allowances]]\ntenant = "prepaid/co"\namount = 2\nperiod = "month"\n',
                       env={**FAKE_KEYS, "TKM_DASH": ADMIN})
    for amount, note in (("25", "invoice 7"), ("5", "promotion")):
        gw.post("/admin/wallets/prepaid%2Fco", {"amount": amount, "note": note},
                key=ADMIN).raise_for_status()
    for i, (model, agent) in enumerate([("gpt-4o-mini", "planner"), ("deepseek-chat", "coder"),
                                        ("gpt-4o-mini", "coder"), ("kimi-k2", "planner")]):
        r = gw.chat(model, headers={"x-tokometer-agent": agent,
                                    "x-tokometer-task": f"job-{i % 2}"})
        assert r.status_code == 200
    gw.post("/v1/outcomes", {"task": "job-0", "outcome": "success"}).raise_for_status()
    gw.wait_rolled_up()
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="module")
def page(dash):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda message: CONSOLE.append(message.text))
        page.goto(dash.url + "/")
        assert page.url.endswith("/login")  # not signed in: sent to the form
        page.fill("input[name=token]", ADMIN)
        page.click("button[type=submit]")
        yield page
        browser.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def test_overview_shows_totals_and_a_chart_with_data(page, dash):
    page.goto(dash.url + "/")
    assert page.title() == "Overview: the last 30 days · tokometer"
    cards = page.locator(".card").all_inner_texts()
    assert any(c.startswith("requests") and "4" in c for c in cards)
    assert page.locator(".chart svg").count() == 1
    assert page.locator(".chart svg path, .chart svg rect").count() > 5  # bars were drawn
    assert "gpt-4o-mini" in page.locator("table").first.inner_text()
    shot(page, "overview")


@pytest.mark.parametrize(("path", "text"), [
    ("/rankings", "share"), ("/rankings?by=vendor", "openai"), ("/prices", "price_per_mtok"),
    ("/prices?by=vendor", "deepseek (USD)"), ("/flows", "served in"),
    ("/tasks", "cost_per_success"), ("/live", "gpt-4o-mini")])
def test_every_page_loads(page, dash, path, text):
    response = page.goto(dash.url + path)
    assert response is not None and response.status == 200
    assert text in page.content()
    shot(page, path.strip("/").replace("?by=", "-"))


def test_wallets_show_balances_and_each_lot(page, dash):
    page.goto(dash.url + "/wallets")
    row = page.locator("tr", has_text="prepaid/co").inner_text()
    assert "30" in row and "USD" in row and "2" in row  # balance, allowance left
    page.click("text=prepaid/co")
    assert page.url.endswith("/wallets/prepaid%2Fco")
    cards = page.locator(".card").all_inner_texts()
    assert any(c.startswith("balance USD") and "30" in c for c in cards)
    assert any(c.startswith("allowance left this month") and "2 of 2" in c for c in cards)
    lots = page.locator("table").inner_text()
    assert "invoice 7" in lots and "promotion" in lots and "25" in lots
    shot(page, "wallet")


def test_drill_down_from_tenant_to_app_to_agents(page, dash):
    page.goto(dash.url + "/tenants")
    page.click("text=acme")  # the fixture's key belongs to tenant acme, app tests
    assert page.url.endswith("/tenants/acme")
    page.click("table >> text=tests")
    assert page.url.endswith("/tenants/acme/apps/tests")
    body = page.locator("table").inner_text()
    assert "planner" in body and "coder" in body
    assert page.locator(".chart svg").count() == 1
    shot(page, "drill-down")


def test_without_the_token_nothing_is_shown(dash):
    r = httpx.get(dash.url + "/tenants", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    r = httpx.post(dash.url + "/login", data={"token": "wrong"})
    assert r.status_code == 401 and "not the admin token" in r.text


def test_no_page_breaks_its_content_security_policy(page, dash):
    for path in [*PAGES, "/login"]:
        response = page.goto(dash.url + path)
        assert response is not None and response.status == 200
    assert not [m for m in CONSOLE if "Content Security Policy" in m], CONSOLE
    # The control: a style element the policy does not name is refused, and that is logged.
    page.evaluate("document.head.appendChild(document.createElement('style')).textContent"
                  " = 'body { color: red }'")
    page.wait_for_timeout(200)
    assert [m for m in CONSOLE if "Content Security Policy" in m]


# --- over HTTP: the session cookie, the guard headers, the brake on wrong tokens -------------

def client(address: str) -> httpx.Client:
    """A client from its own loopback address: the brake counts per address."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10,
                        follow_redirects=False)


def _tampered(value: str) -> str:
    """The value with its last character changed (to one it surely was not)."""
    return value[:-1] + ("A" if value[-1] != "A" else "E")


def session_value(expires: int, token: str = ADMIN) -> str:
    """A session cookie worked out from the documented rule (gateway/session.py)."""
    key = hmac.new(token.encode(), b"tokometer dashboard session", hashlib.sha256).digest()
    mac = hmac.new(key, str(expires).encode(), hashlib.sha256).digest()
    return f"{expires}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def test_signing_in_sets_a_signed_expiring_session_not_the_token(dash):
    with client("127.0.0.2") as c:
        before = int(time.time())
        r = c.post(dash.url + "/login", data={"token": ADMIN})
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        name, value = cookie.split(";")[0].split("=", 1)
        attributes = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
        assert ADMIN not in cookie and name == "tokometer_admin"
        assert attributes["max-age"] == "Max-Age=43200"  # 12 hours
        assert attributes["samesite"] == "SameSite=Strict" and "httponly" in attributes
        assert attributes["path"] == "Path=/" and "secure" not in attributes  # plain HTTP
        expires = int(value.split(".")[0])
        assert before + 43200 <= expires <= int(time.time()) + 43200
        assert value == session_value(expires)
        c.cookies.clear()
        assert c.get(dash.url + "/").status_code == 303
        assert c.get(dash.url + "/", headers={"cookie": f"{name}={value}"}).status_code == 200


@pytest.mark.parametrize("cookie", [
    ADMIN,  # the raw token, as cookies used to hold it
    session_value(int(time.time()) - 1),  # signed right, but expired
    session_value(int(time.time()) + 3600, token="not-the-admin-token"),  # forged
    _tampered(session_value(int(time.time()) + 3600)),  # the signature tampered with
    str(int(time.time()) + 10**6) + "." + session_value(int(time.time()) + 3600).split(".")[1],
    "9" * 400 + ".x", "", "é.é",
], ids=["raw-token", "expired", "forged", "tampered-mac", "extended", "huge", "empty", "latin1"])
def test_a_bad_session_cookie_gets_the_login_page(dash, cookie):
    with client("127.0.0.3") as c:
        r = c.get(dash.url + "/tenants", headers={"cookie": f"tokometer_admin={cookie}".encode()})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        login = c.get(dash.url + r.headers["location"])
        assert login.status_code == 200 and 'name="token"' in login.text


def test_every_dashboard_answer_forbids_framing_and_scripts(dash):
    with client("127.0.0.4") as c:
        signed_in = {"cookie": f"tokometer_admin={session_value(int(time.time()) + 60)}"}
        answers = [c.get(dash.url + "/login"), c.get(dash.url + "/"),  # the redirect
                   c.post(dash.url + "/login", data={"token": ADMIN}),
                   *(c.get(dash.url + path, headers=signed_in) for path in PAGES),
                   c.get(dash.url + "/tenants/acme/nope", headers=signed_in)]  # a 404
    for r in answers:
        policy = dict(d.strip().split(" ", 1) for d in
                      r.headers["content-security-policy"].split(";"))
        assert r.headers["x-frame-options"] == "DENY"
        assert policy["frame-ancestors"] == "'none'" and policy["default-src"] == "'none'"
        assert "script-src" not in policy and "unsafe-inline" not in policy["style-src-elem"]
        if r.status_code == 200:  # the one style element is the one the policy names
            css = re.search(r"<style>(.*?)</style>", r.text, re.DOTALL).group(1)
            digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
            assert policy["style-src-elem"] == f"'sha256-{digest}'"
            assert "<script" not in r.text and r.text.count("<style") == 1


def test_wrong_tokens_are_braked_per_address(dash):
    with client("127.0.0.5") as c:
        for _ in range(5):
            r = c.post(dash.url + "/login", data={"token": "guess"})
            assert r.status_code == 401 and "not the admin token" in r.text
        r = c.post(dash.url + "/login", data={"token": "guess"})
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 300
        assert "Too many wrong tokens" in r.text
        # While braked the token is not even looked at: the right one is refused too,
        # on the form and as a bearer header.
        assert c.post(dash.url + "/login", data={"token": ADMIN}).status_code == 429
        r = c.get(dash.url + "/", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 303 and r.headers["location"] == "/login"
    with client("127.0.0.6") as c:  # another address is not braked
        assert c.post(dash.url + "/login", data={"token": ADMIN}).status_code == 303
        assert c.get(dash.url + "/", headers={"Authorization": f"Bearer {ADMIN}"}
                     ).status_code == 200


def test_wrong_bearer_tokens_count_as_wrong_sign_ins(dash):
    with client("127.0.0.7") as c:
        for _ in range(5):
            r = c.get(dash.url + "/", headers={"Authorization": "Bearer guess"})
            assert r.status_code == 303
        assert c.post(dash.url + "/login", data={"token": ADMIN}).status_code == 429


def test_wrong_admin_tokens_on_the_api_are_braked_too(dash):
    """The admin API and /metrics take the same token: guessing it there is braked as well,
    and counts against the dashboard's sign-in from the same address."""
    with client("127.0.0.8") as c:
        for path in ("/admin/keys", "/metrics", "/admin/budgets", "/metrics", "/admin/keys"):
            r = c.get(dash.url + path, headers={"Authorization": "Bearer guess"})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        for path in ("/admin/keys", "/metrics"):
            r = c.get(dash.url + path, headers={"Authorization": f"Bearer {ADMIN}"})
            assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 300
            assert r.json()["error"]["code"] == "too_many_attempts"
        assert c.post(dash.url + "/login", data={"token": ADMIN}).status_code == 429
    with client("127.0.0.9") as c:  # another address is not braked
        assert c.get(dash.url + "/admin/keys",
                     headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
