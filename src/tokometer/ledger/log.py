"""The Merkle log's right edge, kept in memory by the writer so an append reads nothing.

A log of n leaves is, right to left, one full subtree per set bit of n; appending a leaf
merges equal-sized subtrees like carrying in binary addition. Each merge is a node to store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .merkle import EMPTY_ROOT, Nodes, Tree, node_hash
from .store import Store

_T = TypeVar("_T")
INSERT_NODE = "INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)"


def leaf_count(conn: Store) -> int:
    """How many leaves the store holds (each lands in its event's commit)."""
    return int(conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM merkle_nodes WHERE level = 0"
                            ).fetchone()[0])


@dataclass(frozen=True, slots=True)
class MerkleLog:
    size: int
    frontier: tuple[tuple[int, bytes], ...]  # (level, hash), largest subtree first

    @classmethod
    def load(cls, conn: Store, size: int) -> MerkleLog:
        """The log of its first `size` stored leaves (its frontier read in one query)."""
        positions, offset = [], 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                positions.append((level, offset >> level))
                offset += 1 << level
        nodes = prefetched_nodes(conn, positions)
        return cls(size, tuple((level, nodes(level, idx)) for level, idx in positions))

    def extend(self, leaves: list[bytes]) -> tuple[MerkleLog, list[tuple[int, int, bytes]]]:
        """The log with `leaves` appended, and the nodes (level, index, hash) to store."""
        stack, nodes, size = list(self.frontier), [], self.size
        for leaf in leaves:
            nodes.append((0, size, leaf))
            stack.append((0, leaf))
            while len(stack) > 1 and stack[-1][0] == stack[-2][0]:
                (level, right), (_, left) = stack.pop(), stack.pop()
                merged = node_hash(left, right)
                nodes.append((level + 1, size >> (level + 1), merged))
                stack.append((level + 1, merged))
            size += 1
        return MerkleLog(size, tuple(stack)), nodes

    def root(self) -> bytes:
        if not self.frontier:
            return EMPTY_ROOT
        root = self.frontier[-1][1]
        for _, left in reversed(self.frontier[:-1]):
            root = node_hash(left, root)
        return root


def stored_nodes(conn: Store) -> Nodes:
    """A merkle.Nodes lookup over the store. A node above the leaves that the writer has not
    stored yet (its latest tenth of a second, or what a crash left) is folded from below."""
    def lookup(level: int, idx: int) -> bytes:
        row = conn.execute("SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?",
                           (level, idx)).fetchone()
        if row is not None:
            return bytes(row[0])
        if level == 0:
            raise LookupError(f"Merkle leaf {idx} is missing from the store")
        return node_hash(lookup(level - 1, 2 * idx), lookup(level - 1, 2 * idx + 1))
    return lookup


def walk_stored(conn: Store, size: int, walk: Callable[[Tree], _T]) -> _T:
    """`walk` (a proof, a root) over the stored log's first `size` leaves, the nodes it reads
    fetched first in one query (prefetched_nodes): a round trip per node is most of a proof's
    time on PostgreSQL. Nodes not stored yet are looked up and folded as usual."""
    wanted: list[tuple[int, int]] = []

    def note(level: int, idx: int) -> bytes:
        wanted.append((level, idx))
        return bytes(32)  # any hash: which nodes a walk reads depends on sizes only

    walk(Tree(note, size))
    return walk(Tree(prefetched_nodes(conn, wanted), size))


def prefetched_nodes(conn: Store, wanted: list[tuple[int, int]]) -> Nodes:
    """stored_nodes, with the nodes at `wanted` (level, index) read first in one query."""
    found: dict[tuple[int, int], bytes] = {}
    for chunk in (wanted[i:i + 200] for i in range(0, len(wanted), 200)):
        where = " OR ".join("(level = ? AND idx = ?)" for _ in chunk)
        found.update(((level, idx), bytes(node)) for level, idx, node in conn.execute(
            f"SELECT level, idx, hash FROM merkle_nodes WHERE {where}",
            [n for pair in chunk for n in pair]))
    stored = stored_nodes(conn)
    return lambda level, idx: found.get((level, idx)) or stored(level, idx)
