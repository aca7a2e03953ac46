"""Questions asked of the ledger: who consumed what, at what cost."""

from .report import GROUPABLE, report

__all__ = ["GROUPABLE", "report"]
