"""tokometer: a gateway and ledger that measures, prices and attributes every LLM token."""

import typing as _typing

from .config import Settings, load
from .errors import ConfigError, LedgerError, RequestError, TokometerError, UpstreamError
from .events import Event, Usage

if _typing.TYPE_CHECKING:
    from .gateway import create_app

__all__ = ["ConfigError", "Event", "LedgerError", "RequestError", "Settings", "TokometerError",
           "UpstreamError", "Usage", "create_app", "load"]


def __getattr__(name: str) -> _typing.Any:
    # The gateway (pyreqwest, prices, tokenizers) loads only where it runs: not in the CLI, nor
    # in granian's supervisor process.
    if name == "create_app":
        from .gateway import create_app

        return create_app
    raise AttributeError(f"module 'tokometer' has no attribute {name!r}")
