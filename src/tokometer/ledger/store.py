"""What the gateway asks of a ledger, whatever store keeps it (SQLite today; PostgreSQL is
to be one more implementation of this protocol, not a fork of the request path)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..events import Event

if TYPE_CHECKING:  # cryptography loads where signing happens, not in every CLI command
    from .signer import TreeHead


class Ledger(Protocol):
    def start(self) -> None:
        """Begin writing (on the running event loop)."""
        ...

    async def append(self, event: Event) -> None:
        """Returns once the event and its Merkle leaf are durable; LedgerError if not."""
        ...

    async def sign_now(self) -> TreeHead:
        """A tree head signed over everything appended so far."""
        ...

    async def close(self) -> None:
        """Write what is queued and stop."""
        ...
