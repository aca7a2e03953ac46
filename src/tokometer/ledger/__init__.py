"""The durable record of every meter reading (SQLite by default)."""

from .connect import open_db
from .sqlite import SQLiteLedger
from .store import Ledger

__all__ = ["Ledger", "SQLiteLedger", "open_db"]
