"""Rate limits: requests and tokens per minute over a sliding 60-second window.

A TPM window holds each request's reserved tokens from admission and its actual tokens once
settled, so concurrent requests cannot slip past the limit between admission and answer.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from dataclasses import dataclass

from ..config import Limit

WINDOW_SECONDS = 60.0


@dataclass(slots=True, eq=False)  # an entry is one request: never equal to another
class Entry:
    at: float  # monotonic seconds
    tokens: int


class Window:
    """One limit's last minute of requests."""

    def __init__(self, limit: Limit):
        self.limit = limit
        self.entries: deque[Entry] = deque()
        self.tokens = 0

    def _prune(self, now: float) -> None:
        while self.entries and self.entries[0].at <= now - WINDOW_SECONDS:
            self.tokens -= self.entries.popleft().tokens

    def wait(self, now: float, tokens: int) -> float | None:
        """Seconds until a request of `tokens` fits, or None when it fits now."""
        self._prune(now)
        rpm, tpm = self.limit.rpm, self.limit.tpm
        waits = []
        if rpm is not None and len(self.entries) >= rpm:
            waits.append(self.entries[len(self.entries) - rpm].at + WINDOW_SECONDS - now)
        if tpm is not None and self.tokens + tokens > tpm:
            if tokens > tpm:
                return WINDOW_SECONDS
            excess = self.tokens + tokens - tpm
            for entry in self.entries:  # oldest first: when enough of them have expired
                excess -= entry.tokens
                if excess <= 0:
                    waits.append(entry.at + WINDOW_SECONDS - now)
                    break
        return max(waits) if waits else None

    def add(self, now: float, tokens: int) -> Entry:
        entry = Entry(now, tokens)
        self.entries.append(entry)
        self.tokens += tokens
        return entry

    def settle(self, entry: Entry, tokens: int) -> None:
        """Replace a reservation with the tokens actually used (if still in the window)."""
        if self.entries and entry.at >= self.entries[0].at:
            self.tokens += tokens - entry.tokens
        entry.tokens = tokens

    def remove(self, entry: Entry) -> None:
        """Forget a request refused after all (if still in the window)."""
        with contextlib.suppress(ValueError):
            self.entries.remove(entry)
            self.tokens -= entry.tokens

    def describe(self, tokens: int) -> str:
        rpm, tpm = self.limit.rpm, self.limit.tpm
        if tpm is not None and tokens > tpm:
            return (f"limit {self.limit.name} ({self.limit.scope}): the request needs up to "
                    f"{tokens} tokens, more than its {tpm} tokens per minute; lower max_tokens "
                    "or n")
        parts = [f"{rpm} requests" if rpm else "", f"{tpm} tokens" if tpm else ""]
        return (f"rate limit {self.limit.name} ({self.limit.scope}) of "
                f"{' and '.join(p for p in parts if p)} per minute reached")


def retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))
