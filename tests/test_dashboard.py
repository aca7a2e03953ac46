"""The dashboard in a real browser: Debian's chromium driven by Playwright.

Pages load, charts render with data, a drill-down link works; a screenshot of each page is
saved under test-artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from conftest import FAKE_KEYS, MODELS_TOML, providers_toml, start_gateway, stop_gateway

ADMIN = "dash-secret"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; scripts/test installs it
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def dash(upstream, tmp_path_factory):
    gw = start_gateway(tmp_path_factory.mktemp("dash"),
                       f'admin_token_env = "TKM_DASH"\n{providers_toml(upstream)}\n{MODELS_TOML}',
                       env={**FAKE_KEYS, "TKM_DASH": ADMIN})
    for i, (model, agent) in enumerate([("gpt-4o-mini", "planner"), ("deepseek-chat", "coder"),
                                        ("gpt-4o-mini", "coder"), ("kimi-k2", "planner")]):
        r = httpx.post(gw.url + "/v1/chat/completions",
                       headers={"Authorization": f"Bearer {gw.key}", "x-tokometer-agent": agent,
                                "x-tokometer-task": f"job-{i % 2}"},
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
    httpx.post(gw.url + "/v1/outcomes", headers={"Authorization": f"Bearer {gw.key}"},
               json={"task": "job-0", "outcome": "success"}).raise_for_status()
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
    ("/rankings", "share"), ("/rankings?by=vendor", "openai"), ("/flows", "served in"),
    ("/tasks", "cost_per_success"), ("/live", "gpt-4o-mini")])
def test_every_page_loads(page, dash, path, text):
    response = page.goto(dash.url + path)
    assert response is not None and response.status == 200
    assert text in page.content()
    shot(page, path.strip("/").replace("?by=", "-"))


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
