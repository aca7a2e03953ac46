"""The durable record of every meter reading (SQLite by default)."""

from .connect import SQLiteStore, open_store
from .sqlite import SQLiteLedger
from .store import Ledger, Store

__all__ = ["Ledger", "SQLiteLedger", "SQLiteStore", "Store", "open_store"]
