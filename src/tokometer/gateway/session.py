"""The dashboard's session: a signed cookie value, and a brake on guessing the admin token.

The cookie never holds the admin token (a copied cookie would otherwise be the token itself,
valid for the admin API too and forever). It holds its expiry and an HMAC-SHA256 of it:

    value = "<expires, Unix seconds>.<base64url HMAC(key, "<expires>")>"
    key   = HMAC-SHA256(admin token, "tokometer dashboard session")

So a session cannot be forged or extended without the token, it ends at its expiry, and
changing the admin token ends every session at once. Nothing is kept on the server.

Failed sign-ins are counted per client address (the ASGI scope's `client`; for IPv6 its /64,
which one host gets whole and can walk through): after FAILURES
of them within WINDOW seconds the form answers 429 with `Retry-After` until the oldest one
is WINDOW old, without looking at the token, so guessing goes no faster than FAILURES per
WINDOW per address. Nothing waits on the event loop. Behind a reverse proxy every client has
the proxy's address, so the brake is shared by all of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import time
from collections import deque
from typing import Any

SESSION_SECONDS = 12 * 3600
FAILURES = 5
WINDOW = 300.0  # seconds
TRACKED = 10_000  # client addresses remembered at most: the brake's memory is bounded
_PURPOSE = b"tokometer dashboard session"


class Sessions:
    """Issues and checks session values for one admin token; `now` is Unix time."""

    def __init__(self, admin_token: str):
        self._key = hmac.new(admin_token.encode(), _PURPOSE, hashlib.sha256).digest()

    def issue(self, now: float) -> str:
        expires = int(now) + SESSION_SECONDS
        return f"{expires}.{self._mac(expires)}"

    def valid(self, value: str, now: float) -> bool:
        """True for an untampered value whose expiry is still ahead."""
        expires, _, mac = value.partition(".")
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
            return False
        return (hmac.compare_digest(mac.encode(), self._mac(int(expires)).encode())
                and int(expires) > now)

    def _mac(self, expires: int) -> str:
        digest = hmac.new(self._key, str(expires).encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class AdminToken:
    """The admin token and the brake on guessing it: one count of wrong tokens per client
    address, however the token comes (the sign-in form, a bearer header to the dashboard, the
    admin API, /metrics, the log's endpoints). Without a token, nothing matches it."""

    def __init__(self, token: str | None, brake: LoginBrake | None = None):
        self.token = token
        self.brake = brake or LoginBrake()

    def matches(self, given: bytes) -> bool:
        """Whether `given` is the token (in constant time), braked or not."""
        return self.token is not None and hmac.compare_digest(given, self.token.encode())

    def braked(self, client: str) -> int | None:
        """Seconds until `client` may present the token again, or None."""
        if self.token is None:
            return None
        return self.brake.retry_after(client, time.monotonic())

    def check(self, given: bytes, client: str) -> bool:
        """Whether `given` is the token; a wrong one counts against `client`."""
        if self.matches(given):
            self.brake.succeeded(client)
            return True
        self.wrong(client)
        return False

    def wrong(self, client: str) -> None:
        """A wrong guess at the token from `client`."""
        if self.token is not None:
            self.brake.failed(client, time.monotonic())


def scope_client(scope: dict[str, Any]) -> str:
    """Whom the brake counts for an ASGI request: client_of its peer's address."""
    return client_of((scope.get("client") or ("",))[0])


def client_of(address: str) -> str:
    """Whom the brake counts: the IPv4 address, or the IPv6 address's /64 network."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # no address (a Unix socket): one client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginBrake:
    """Failed sign-ins per client address in a sliding window; pure, the clock is passed in."""

    def __init__(self) -> None:
        # Ordered by each address's latest failure, oldest first, so eviction is O(1).
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str, now: float) -> int | None:
        """Seconds until `client` may try again, or None when it may try now."""
        recent = self._recent(client, now)
        if len(recent) < FAILURES:
            return None
        return max(1, math.ceil(recent[0] + WINDOW - now))

    def failed(self, client: str, now: float) -> None:
        recent = self._recent(client, now)
        recent.append(now)
        self._failures.pop(client, None)
        self._failures[client] = recent
        if len(self._failures) > TRACKED:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _recent(self, client: str, now: float) -> deque[float]:
        recent = self._failures.get(client) or deque(maxlen=FAILURES)
        while recent and recent[0] <= now - WINDOW:
            recent.popleft()
        return recent
