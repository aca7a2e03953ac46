"""The dashboard's session and login brake as plain objects: the clock is passed in."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from tokometer import config
from tokometer.gateway import session
from tokometer.gateway.dashboard import Dashboard
from tokometer.gateway.session import (
    FAILURES,
    WINDOW,
    AdminToken,
    LoginBrake,
    Sessions,
    client_of,
)


def test_a_session_holds_until_its_expiry_and_only_for_its_token():
    sessions = Sessions("t0ken")
    value = sessions.issue(now=1_000_000)
    assert "t0ken" not in value
    assert sessions.valid(value, now=1_000_000 + session.SESSION_SECONDS - 1)
    assert not sessions.valid(value, now=1_000_000 + session.SESSION_SECONDS)
    assert not Sessions("another token").valid(value, now=1_000_000)  # a new token ends it


def test_the_brake_slides_with_its_window():
    brake = LoginBrake()
    for i in range(FAILURES):
        assert brake.retry_after("a", now=100.0 + i) is None
        brake.failed("a", now=100.0 + i)
    assert brake.retry_after("a", now=104.5) == WINDOW - 4  # until the first failure is old
    assert brake.retry_after("b", now=104.5) is None  # per address
    assert brake.retry_after("a", now=100.0 + WINDOW) is None  # the first one slid out
    brake.failed("a", now=100.0 + WINDOW)
    assert brake.retry_after("a", now=100.0 + WINDOW) == 1
    brake.succeeded("a")
    assert brake.retry_after("a", now=100.0 + WINDOW) is None


@pytest.mark.parametrize(("address", "client"), [
    ("192.0.2.7", "192.0.2.7"), ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"), ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"), ("", "")])
def test_the_brake_counts_an_ipv6_host_by_its_64(address, client):
    assert client_of(address) == client


def test_the_brake_remembers_a_bounded_number_of_addresses(monkeypatch):
    monkeypatch.setattr(session, "TRACKED", 3)
    brake = LoginBrake()
    for _ in range(FAILURES):
        brake.failed("old", now=1.0)
    for n, address in enumerate(["b", "c", "d"]):
        brake.failed(address, now=2.0 + n)
    assert len(brake._failures) == 3 and "old" not in brake._failures


@pytest.mark.parametrize(("scheme", "secure"), [("https", True), ("http", False)])
def test_the_cookie_is_secure_when_served_over_tls(tmp_path, scheme, secure):
    path = tmp_path / "t.toml"
    path.write_text('[server]\nadmin_token_env = "TKM"\nstore = "sqlite:///t.db"\n')
    dashboard = Dashboard(config.load(path, environ={"TKM": "s3cret"}),  # type: ignore[arg-type]
                          SimpleNamespace(run=None), AdminToken("s3cret"))
    scope = {"scheme": scheme, "client": ("192.0.2.1", 5000)}
    status, headers, _ = asyncio.run(dashboard.handle("POST", "/login", scope, {},
                                                      b"token=s3cret"))
    cookie = dict(headers)[b"set-cookie"].decode()
    assert status == 303 and cookie.endswith("; Secure") is secure
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret" not in cookie
