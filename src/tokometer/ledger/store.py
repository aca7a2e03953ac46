"""The store seam: what the gateway, the CLI and the reports ask of a store, whatever keeps it.

SQLite implements both protocols today; a PostgreSQL store is to be one more implementation of
them, not a fork of the request path or the commands.

- `Ledger`: the append-only writer the request path awaits (events durable, heads signed).
- `Store`: a connection for reading and for administration (keys, budgets, receipts, reports).
  Its SQL is written with `?` placeholders; a store whose driver wants others translates them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, Self

from ..events import Event

Writes = tuple[tuple[str, tuple[Any, ...]], ...]  # statements (SQL, parameters) to commit along
# An ingested reading's identities, each (tenant, origin, reading id): a reading whose
# identity is already claimed is a replay, recorded once (claims.py).
Claims = tuple[tuple[str, str, str], ...]

if TYPE_CHECKING:  # cryptography loads where signing happens, not in every CLI command
    from .signer import Signer, TreeHead


class Rows(Protocol):
    """The result of a statement: DB-API's cursor, as far as we use it."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any:
        """The columns of a query's rows; each one's name first."""
        ...

    def fetchone(self) -> Any: ...

    def fetchmany(self, size: int) -> list[Any]: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Store(Protocol):
    @property
    def Error(self) -> type[Exception]:  # DB-API's name for it
        """What the store raises when it fails (locked, read-only, corrupt)."""
        ...

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Rows: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Rows: ...

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Any]:
        """A query's rows as they are read, never the whole result in memory at once (for
        exports and copies of any size); the connection serves nothing else meanwhile."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """All statements inside commit together, or none does."""
        ...

    def pipeline(self) -> AbstractContextManager[None]:
        """Statements inside are sent without waiting for each one's answer, until an answer
        is read: one round trip for many on PostgreSQL (libpq's pipeline mode)."""
        ...

    def lazy_commit(self) -> None:
        """Inside a transaction: it holds working state, not readings, so it may commit
        without waiting for the disk; a crash of the store's server may lose it (PostgreSQL:
        synchronous_commit off for it; SQLite keeps its `durability`)."""
        ...

    def lock(self, name: str) -> None:
        """Inside a transaction: hold the lock called `name` until it ends, so processes
        sharing the store take turns at what it guards."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class Ledger(Protocol):
    signer: Signer

    def start(self) -> None:
        """Begin writing (on the running event loop)."""
        ...

    async def append(self, event: Event, along: Writes = (), claims: Claims = ()) -> str:
        """Returns once the event and its Merkle leaf are durable, committed with the
        statements `along`, with the event's id; LedgerError if not. An event with `claims`
        is appended only if none of them was claimed before, else nothing is written and the
        id returned is that of the event that claimed it."""
        ...

    async def committed(self) -> None:
        """Returns once every event appended before the call is committed (or failed)."""
        ...

    async def sign_now(self) -> TreeHead:
        """A tree head signed over everything appended so far."""
        ...

    async def close(self) -> None:
        """Write what is queued and stop."""
        ...
