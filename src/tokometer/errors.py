"""One small tree of errors, each with an HTTP status, a stable type and a message for people.

    TokometerError
    ├── ConfigError        bad TOML or values; raised at start-up, names file and key
    ├── RequestError       the client's request cannot be served (400/401/404/413)
    │   ├── AuthError      no key, or an unknown or revoked one (401)
    │   └── PolicyError    refused by a residency rule, rate limit or budget (403/429/402)
    ├── UpstreamError      the provider failed, timed out or answered nonsense (502/504)
    └── LedgerError        the store could not record an event

Foreign exceptions (pyreqwest, sqlite3, tomllib) are translated where they arise.
"""

from __future__ import annotations


class TokometerError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code


class ConfigError(TokometerError):
    type = "config_error"


class RequestError(TokometerError):
    status = 400
    type = "invalid_request_error"


class AuthError(RequestError):
    status = 401
    type = "authentication_error"


class PolicyError(RequestError):
    """A refusal the gateway records as an event; `retry_after` in seconds for 429s, and
    what a wallet has left (`balance`: amount and currency) for its 402s."""

    def __init__(self, message: str, *, status: int, type: str, code: str,
                 retry_after: int | None = None, balance: str | None = None):
        super().__init__(message, status=status, type=type, code=code)
        self.retry_after = retry_after
        self.balance = balance


class UpstreamError(TokometerError):
    status = 502
    type = "upstream_error"


class LedgerError(TokometerError):
    type = "ledger_error"
