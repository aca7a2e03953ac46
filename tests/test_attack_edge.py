"""Red-team: the gateway's edge as a hostile client sees it (admin token guessing, ...)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from conftest import MINIMAL_CONFIG, Gateway, start_gateway, stop_gateway
from tokometer.gateway.session import FAILURES

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
                 for i in range(FAILURES + 3)]
        assert codes[:FAILURES] == [401] * FAILURES
        assert set(codes[FAILURES:]) == {429}, codes
        login = client.post("/login", data={"token": "another-guess"})
        assert login.status_code == 429  # one brake per address, whichever door is tried
