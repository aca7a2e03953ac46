"""tokometer: a gateway and ledger that measures, prices and attributes every LLM token."""

from .config import Settings, load
from .errors import ConfigError, LedgerError, RequestError, TokometerError, UpstreamError
from .events import Event, Usage
from .gateway import create_app

__all__ = ["ConfigError", "Event", "LedgerError", "RequestError", "Settings", "TokometerError",
           "UpstreamError", "Usage", "create_app", "load"]
