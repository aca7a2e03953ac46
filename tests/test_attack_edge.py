"""Red-team: the gateway's edge as a hostile client sees it (admin token guessing, ...)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from conftest import MINIMAL_CONFIG, Gateway, start_gateway, stop_gateway
from tokometer.gateway.session import FAILURES
from tokometer.ledger import open_store

ADMIN = "the-admin-token"


@pytest.fixture
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of the test's own: the login brake counts every test's guesses (127.0.0.1)."""
    gateway = start_gateway(tmp_path_factory.mktemp("edge"),
                            'admin_token_env = "ADMIN"\n' + MINIMAL_CONFIG, env={"ADMIN": ADMIN})
    yield gateway
    stop_gateway(gateway)


@pytest.mark.parametrize("path", ["/admin/keys", "/metrics", "/v1/ledger/head"])
def test_guessing_the_admin_token_on_the_api_is_braked_like_the_dashboard_login(gw, path):
    """The dashboard brakes wrong tokens (5 per 5 minutes per address); the same token opens
    /admin/*, /metrics and the log's endpoints (which tell a right admin token from a wrong
    one), where guesses went unbraked at full speed: the brake was moot."""
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        codes = [client.get(path, headers={"authorization": f"Bearer guess-{i}"}).status_code
                 for i in range(FAILURES)]
        assert codes == [401] * FAILURES
        # braked: even the right token is not looked at, on this door or the dashboard's
        right = client.get(path, headers={"authorization": f"Bearer {ADMIN}"})
        assert right.status_code in (401, 429), right.status_code
        assert client.post("/login", data={"token": ADMIN}).status_code == 429


def test_a_braked_address_still_reads_the_log_with_a_consumer_key(gw):
    """Behind a proxy every client shares one address: admin guesses from one of them must
    not lock the others' keys out of the log's endpoints (nor do wrong consumer keys, which
    are not guesses at the admin token, count against the address)."""
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for i in range(FAILURES):
            assert client.get("/v1/ledger/head", headers={
                "authorization": f"Bearer tkm-revoked-{i}"}).status_code == 401
        assert client.post("/login", data={"token": "guess"}).status_code == 401  # not braked
        for i in range(FAILURES):
            client.get("/admin/keys", headers={"authorization": f"Bearer guess-{i}"})
        head = client.get("/v1/ledger/head", headers={"authorization": f"Bearer {gw.key}"})
        assert head.status_code == 200


@pytest.mark.parametrize("tenant", ["acme/eu", "r%41w"])
def test_the_drill_down_opens_a_tenant_whose_name_has_a_slash_or_a_percent(gw, tenant):
    """The tenants page links to /tenants/<name, percent-encoded>; the server has already
    decoded the path, and the dashboard split it on "/" and decoded it again, so "acme/eu"
    was a 404 and "r%41w" opened the tenant "rAw"."""
    key, _ = gw.new_key(tenant=tenant)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        gw.chat("m", key=key)
        gw.wait_rolled_up()
        admin = {"authorization": f"Bearer {ADMIN}"}
        listing = client.get("/tenants", headers=admin)
        href = "/tenants/" + quote(tenant, safe="")
        assert f'href="{href}"' in listing.text
        page = client.get(href, headers=admin)
        assert page.status_code == 200
        assert html.escape(tenant) in page.text


def _logged_bytes(gw: Gateway) -> int:
    """What the store's events hold, in bytes of their canonical form (file sizes trail)."""
    conn = open_store(gw.store)
    try:
        return conn.execute("SELECT COALESCE(SUM(LENGTH(CAST(id AS BLOB)) + LENGTH(agent) "
                            "+ LENGTH(task) + LENGTH(end_user)), 0) FROM events").fetchone()[0]
    finally:
        conn.close()


def test_a_flood_of_keyless_requests_does_not_grow_the_store(gw):
    """"Unauthenticated requests cost nothing": each is still an event in the append-only,
    signed log, with 768 characters of the client's choosing (its attribution headers). At
    the ~1,000 requests/s one plain client reaches here that is ~1.5 MB/s (5 GB an hour) of
    disk no one can give back without breaking the log, and text anyone can write into it."""
    headers = {h: "x" * 256 for h in ("x-tokometer-agent", "x-tokometer-task",
                                      "x-tokometer-user")}
    before = _logged_bytes(gw)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for _ in range(500):
            assert client.post("/v1/chat/completions", headers=headers,
                               content=b"").status_code == 401
    grown = _logged_bytes(gw) - before
    assert grown < 500 * 256, f"500 keyless requests wrote {grown:,} bytes of events"
