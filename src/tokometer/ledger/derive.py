"""What follows from the stored events: the Merkle tree above the leaves, the rollups, and
signed tree heads; each step moves a watermark in `ledger_meta` in the same transaction, so
whatever a crash interrupts is derived again, exactly once, at the next start."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..events import FIELDS
from .log import INSERT_NODE, MerkleLog
from .rollups import MEASURES, ROLLUPS, upserts
from .rows import LEAF_COLUMN, leaf_of
from .schema import INSERT_EVENT, INSERT_HEAD
from .store import Store

if TYPE_CHECKING:  # cryptography loads where signing happens, not in every CLI command
    from .signer import Signer, TreeHead

LOG_LOCK = "tokometer.log"  # Store.lock's name for the log: its appends and its signing
LOGGED = "logged"  # how many leaves have the tree nodes above them stored
ROLLED_UP = "rolled_up"  # how many leaves' events are in the rollups


def insert_leaves(store: Store, rows: list[list[Any]], first: int) -> list[bytes]:
    """Store event rows as the log's leaves `first`, `first + 1`, ... (each row gets its
    leaf_index), in the caller's transaction; returns the leaf hashes."""
    for i, row in enumerate(rows):
        row[LEAF_COLUMN] = first + i
    leaves = [leaf_of(row) for row in rows]
    store.executemany(INSERT_EVENT, rows)
    store.executemany(INSERT_NODE, [(0, first + i, leaf) for i, leaf in enumerate(leaves)])
    return leaves


def grow_log(store: Store, tree: MerkleLog, leaves: list[bytes]) -> MerkleLog:
    """`tree` with stored `leaves` appended, storing the nodes above them they complete."""
    if not leaves:
        return tree
    grown, nodes = tree.extend(leaves)
    store.executemany(INSERT_NODE, [node for node in nodes if node[0] > 0])
    set_meta(store, LOGGED, grown.size)
    return grown


def catch_up(store: Store, tree: MerkleLog) -> MerkleLog:
    """In the caller's transaction, under the store's write lock: the tree nodes above every
    stored leaf that has none yet and the rollups over every stored event not in them,
    whichever process wrote them; returns the log as stored (`tree`: as the caller last saw
    it, loaded again if another process has moved it)."""
    logged = meta(store, LOGGED) or 0
    if logged != tree.size:
        tree = MerkleLog.load(store, logged)
    tree = grow_log(store, tree, [bytes(h) for (h,) in store.execute(
        "SELECT hash FROM merkle_nodes WHERE level = 0 AND idx >= ? ORDER BY idx", (logged,))])
    unrolled = store.execute(f"SELECT {', '.join(FIELDS)} FROM events WHERE leaf_index >= ? "
                             "ORDER BY leaf_index", (meta(store, ROLLED_UP) or 0,))
    while chunk := [list(row) for row in unrolled.fetchmany(10_000)]:
        fold(store, chunk)
    return tree


def fold(store: Store, rows: list[list[Any]]) -> None:
    """Add event rows (in log order) to the rollups and move the watermark past them."""
    for statement, params in upserts(rows):
        store.executemany(statement, params)
    set_meta(store, ROLLED_UP, rows[-1][LEAF_COLUMN] + 1)


def rollups_current(columns: Callable[[str], set[str]]) -> bool:
    """Whether every rollup table has every column it is made with now (`columns`: a
    table's column names in the store)."""
    return all({*dims, *MEASURES} <= columns(name) for name, dims in ROLLUPS.items())


def refold_rollups(store: Store, create: Iterable[str]) -> None:
    """Rollups are derived data: older ones are dropped, made again (`create`: the store's
    DDL for them) and folded again from the logged events, in the caller's transaction."""
    for name in ROLLUPS:
        store.execute(f"DROP TABLE IF EXISTS {name}")
    for statement in create:
        store.execute(statement)
    set_meta(store, ROLLED_UP, 0)
    done = -1
    while chunk := [list(r) for r in store.execute(
            f"SELECT {', '.join(FIELDS)} FROM events WHERE leaf_index > ? "
            "ORDER BY leaf_index LIMIT 10000", (done,)).fetchall()]:
        fold(store, chunk)
        done = chunk[-1][LEAF_COLUMN]


def sign_head(store: Store, signer: Signer, tree_size: int, root: bytes,
              timestamp: int) -> TreeHead:
    """Sign the log at `tree_size` leaves with this root and store the head."""
    head = signer.sign(tree_size, root, timestamp)
    store.execute(INSERT_HEAD, (head.tree_size, head.root_hash, head.timestamp,
                                head.signature))
    return head


def sign_if_grown(store: Store, signer: Signer, tree: MerkleLog,
                  asked: bool) -> TreeHead | None:
    """Under the log's lock: a head over `tree` unless a stored one already covers it and
    nobody `asked` for a fresh one, so processes sharing a log do not each sign it. The clock
    is read under the lock, so heads in timestamp order never shrink."""
    (signed,) = store.execute("SELECT MAX(tree_size) FROM tree_heads").fetchone()
    if signed is not None and signed >= tree.size and not asked:
        return None
    return sign_head(store, signer, tree.size, tree.root(), int(time.time() * 1000))


def meta(store: Store, key: str) -> int | None:
    row = store.execute("SELECT value FROM ledger_meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else int(row[0])


def set_meta(store: Store, key: str, value: int) -> None:
    store.execute("INSERT INTO ledger_meta (key, value) VALUES (?, ?) "
                  "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))
