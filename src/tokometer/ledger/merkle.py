"""RFC 9162 (Certificate Transparency v2) Merkle trees: hashes, proofs and their checks.

Pure functions over a `Nodes` lookup that returns the stored hash of a full, aligned subtree
(level k, index i covers leaves [i * 2^k, (i + 1) * 2^k)). Any other subtree on the right edge
of a tree is folded from at most log2(n) stored nodes, and memoised per proof, so a root or a
proof of a tree of n leaves costs O(log n) node reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

Nodes = Callable[[int, int], bytes]  # (level, index) → hash of that full subtree


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class Tree:
    """A view of the first `size` leaves of a stored log."""

    def __init__(self, nodes: Nodes, size: int):
        self.nodes = nodes
        self.size = size
        self._memo: dict[tuple[int, int], bytes] = {}

    def mth(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a range the RFC's recursion produces."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:  # a full, aligned subtree: stored
            return self.nodes(n.bit_length() - 1, start // n)
        found = self._memo.get((start, end))
        if found is None:
            k = _split(n)
            found = node_hash(self.mth(start, start + k), self.mth(start + k, end))
            self._memo[(start, end)] = found
        return found

    def root(self) -> bytes:
        return self.mth(0, self.size)

    def inclusion_proof(self, index: int) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1."""
        if not 0 <= index < self.size:
            raise ValueError(f"leaf {index} is not in a tree of {self.size}")
        proof: list[bytes] = []
        start, end = 0, self.size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                proof.append(self.mth(start + k, end))
                end = start + k
            else:
                proof.append(self.mth(start, start + k))
                start += k
        return proof[::-1]

    def consistency_proof(self, first: int) -> list[bytes]:
        """PROOF(first, D[0:size]) of RFC 9162 section 2.1.4.1."""
        if not 0 < first <= self.size:
            raise ValueError(f"no consistency proof from {first} to {self.size}")
        return self._subproof(first, 0, self.size, True)

    def _subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if whole else [self.mth(start, end)]
        k = _split(n)
        if m <= k:
            return [*self._subproof(m, start, start + k, whole), self.mth(start + k, end)]
        return [*self._subproof(m - k, start + k, end, False), self.mth(start, start + k)]


def roots_at(leaves: Sequence[bytes], sizes: set[int]) -> dict[int, bytes]:
    """The root of every tree size in `sizes`, in one pass over leaf hashes held in memory."""
    roots = {0: EMPTY_ROOT} if 0 in sizes else {}
    stack: list[bytes] = []  # full subtrees of the right edge, largest first
    for i, node in enumerate(leaves):
        carry = i
        while carry & 1:  # like binary addition: merge the equal-sized subtrees
            node = node_hash(stack.pop(), node)
            carry >>= 1
        stack.append(node)
        if i + 1 in sizes:
            root = stack[-1]
            for left in reversed(stack[:-1]):
                root = node_hash(left, root)
            roots[i + 1] = root
    return roots


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH of leaf hashes held in memory."""
    return roots_at(leaves, {len(leaves)})[len(leaves)]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, proof: Sequence[bytes], first_root: bytes,
                       second_root: bytes) -> bool:
    """RFC 9162 section 2.1.4.2."""
    if not 0 < first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # a power of two: the first root is the proof's start
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_root and sr == second_root
