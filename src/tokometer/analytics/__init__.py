"""Questions asked of the ledger: who consumed what, at what cost, and where it flowed."""

from .market import RANKED_BY, flows, rankings
from .report import GROUPABLE, REPORT_PERIODS, report

__all__ = ["GROUPABLE", "RANKED_BY", "REPORT_PERIODS", "flows", "rankings", "report"]
