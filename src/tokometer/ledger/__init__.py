"""The durable record of every meter reading (SQLite by default)."""

from .sqlite import SQLiteLedger, open_db

__all__ = ["SQLiteLedger", "open_db"]
