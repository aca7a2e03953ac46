"""A PostgreSQL store: the Store protocol over a psycopg 3 connection.

The queries shared with SQLite are written with `?` placeholders and a few functions of our
own (`decimal_sum`, `decimal_add`, `week_start`, `epoch_ms`); this module translates the
placeholders and defines those functions in the database, so a report reads the same on
either store. Sums of whole numbers come back as int, as SQLite returns them.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.adapt import Loader

from ..config import PostgresURL
from ..errors import LedgerError
from .derive import refold_rollups, rollups_current
from .rollups import SCHEMA as ROLLUP_SCHEMA
from .schema import SCHEMA, added_columns

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=1024)
def to_postgres(sql: str) -> str:
    """SQLite's placeholders (`?`, `:name`) as psycopg's (`%s`, `%(name)s`)."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%")).replace("?", "%s")


class PostgresStore:
    """The Store protocol (store.py) over one PostgreSQL connection; `with` closes it.

    A connection the server dropped (a restart, a network cut) is opened again at the next
    statement, so a gateway recovers by itself; until the server answers, each statement is a
    503 LedgerError (`store_unavailable`).
    """

    Error = psycopg.Error

    def __init__(self, conn: psycopg.Connection[Any], url: PostgresURL):
        self._conn, self.url = conn, url

    @property
    def broken(self) -> bool:
        """Whether the server dropped the connection (it is opened again when next used)."""
        return self._conn.broken

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn.broken:
            self._conn.close()
            self._conn = _connect(self.url, again=True)
        return self._conn

    def execute(self, sql: str,
                params: Sequence[Any] | Mapping[str, Any] = ()) -> psycopg.Cursor[Any]:
        with self._unavailable_if_gone():
            return self.conn.execute(to_postgres(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        with self._unavailable_if_gone():
            cursor = self.conn.cursor()
            cursor.executemany(to_postgres(sql), rows)
            return cursor

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Any]:
        """Rows in chunks as the server sends them (libpq's chunked mode), not all at once as
        `execute` fetches them."""
        with self._unavailable_if_gone():
            yield from self.conn.cursor().stream(to_postgres(sql), params, size=1_000)

    @contextlib.contextmanager
    def _unavailable_if_gone(self) -> Iterator[None]:
        """The server gone mid-statement is a 503 LedgerError; other failures stay Error."""
        try:
            yield
        except psycopg.OperationalError as e:
            if not self.broken:
                raise
            raise unavailable(self.url, e) from e

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._unavailable_if_gone(), self.conn.transaction():
            yield

    @contextlib.contextmanager
    def pipeline(self) -> Iterator[None]:
        with self._unavailable_if_gone(), self.conn.pipeline():
            yield

    def lazy_commit(self) -> None:
        self.execute("SET LOCAL synchronous_commit = off")

    def lock(self, name: str) -> None:
        """A transaction-scoped advisory lock, one per name: its 64-bit hash, since two
        names sharing a key would break the one order locks are taken in (32-bit hashtext
        makes a pair likely among some ten thousand budgets and limits)."""
        self.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (name,))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_postgres(url: PostgresURL, *, create: bool = False) -> PostgresStore:
    """A connection with the schema in place. Only `create=True` makes the tables in a
    database that has none; otherwise such a database is a LedgerError, as a missing file is."""
    conn = _connect(url)
    store = PostgresStore(conn, url)
    try:
        if not create and not _has_events(store):
            raise LedgerError(f"there is no store at {url} (server.store in the config): "
                              "start the gateway once to create it, or check the URL")
        migrate(store)
    except psycopg.Error as e:
        conn.close()
        raise LedgerError(f"cannot open the store at {url}: {e}") from None
    except LedgerError:
        conn.close()
        raise
    return store


def unavailable(url: PostgresURL, cause: Exception) -> LedgerError:
    """A store that was there and is not now: a 503 the client may retry."""
    return LedgerError(f"the store at {url} is unavailable: {cause}", status=503,
                       type="store_unavailable")


def _connect(url: PostgresURL, *, again: bool = False) -> psycopg.Connection[Any]:
    """`again`: reconnecting to a store that was there, whose absence is `unavailable`."""
    try:
        conn = psycopg.connect(url.url, autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        if again:
            raise unavailable(url, e) from None
        raise LedgerError(f"cannot open the store at {url}: {e}") from None
    conn.adapters.register_loader("numeric", _WholeOrDecimal)
    return conn


def migrate(store: PostgresStore) -> None:
    """Tables made if new, event columns added since, rollups made before their current
    columns folded again, the shared SQL functions defined: one process at a time."""
    with store.transaction():
        store.lock("tokometer.migrate")
        store.conn.execute(_FUNCTIONS)
        for statement in _postgres_ddl(SCHEMA + ROLLUP_SCHEMA):
            store.conn.execute(statement)
        for statement in added_columns(_columns(store, "events")):
            store.conn.execute(_types(statement))
        if not rollups_current(lambda table: _columns(store, table)):
            refold_rollups(store, _postgres_ddl(ROLLUP_SCHEMA))


def _has_events(store: PostgresStore) -> bool:
    return store.conn.execute("SELECT to_regclass('events') IS NOT NULL").fetchone() == (True,)


def _columns(store: PostgresStore, table: str) -> set[str]:
    rows = store.conn.execute("SELECT column_name FROM information_schema.columns "
                              "WHERE table_schema = current_schema() AND table_name = %s",
                              (table,))
    return {name for (name,) in rows}


_TYPES = ((re.compile(r"\bBLOB\b"), "BYTEA"), (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
          (re.compile(r"\bINTEGER\b"), "BIGINT"), (re.compile(r"\)\s*WITHOUT ROWID"), ")"))


def _types(statement: str) -> str:
    for pattern, replacement in _TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


def _postgres_ddl(script: str) -> list[str]:
    """SQLite's DDL as PostgreSQL's, statement by statement (comments dropped)."""
    text = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [_types(s.strip()) for s in text.split(";") if s.strip()]


class _WholeOrDecimal(Loader):
    """numeric → int when whole (SUM over integer columns), else Decimal."""

    def load(self, data: Any) -> Any:
        text = bytes(data).decode()
        return int(text) if text.lstrip("-").isdigit() else Decimal(text)


# The functions the shared queries call; SQLite registers its own (connect.py).
_FUNCTIONS = """
CREATE OR REPLACE FUNCTION decimal_add(a text, b text) RETURNS text LANGUAGE sql IMMUTABLE
  AS $$ SELECT trim_scale(COALESCE(a, '0')::numeric + COALESCE(b, '0')::numeric)::text $$;
CREATE OR REPLACE FUNCTION decimal_sum_step(total numeric, value text) RETURNS numeric
  LANGUAGE sql IMMUTABLE
  AS $$ SELECT CASE WHEN value IS NULL THEN total
                    ELSE COALESCE(total, 0) + value::numeric END $$;
CREATE OR REPLACE FUNCTION decimal_sum_text(total numeric) RETURNS text LANGUAGE sql IMMUTABLE
  AS $$ SELECT trim_scale(total)::text $$;
CREATE OR REPLACE AGGREGATE decimal_sum(text) (SFUNC = decimal_sum_step, STYPE = numeric,
  FINALFUNC = decimal_sum_text);
CREATE OR REPLACE FUNCTION week_start(day text) RETURNS text LANGUAGE sql IMMUTABLE
  AS $$ SELECT to_char(date_trunc('week', day::date), 'YYYY-MM-DD') $$;
CREATE OR REPLACE FUNCTION epoch_ms(at text) RETURNS double precision LANGUAGE sql IMMUTABLE
  AS $$ SELECT extract(epoch FROM at::timestamptz)::double precision * 1000 $$;
"""
