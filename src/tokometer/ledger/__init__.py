"""The durable record of every meter reading (SQLite by default)."""

from .sqlite import SQLiteLedger, open_db
from .store import Ledger

__all__ = ["Ledger", "SQLiteLedger", "open_db"]
