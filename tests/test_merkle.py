"""RFC 9162 Merkle trees against the Certificate Transparency test vectors, and by property."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokometer.ledger.merkle import (
    EMPTY_ROOT,
    Tree,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# RFC 6962 / 9162 reference data as published with transparency-dev/merkle's tests.
LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243",
                                     "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]
H = bytes.fromhex
INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
CONSISTENCY = [
    (2, 8, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]


def stored(leaves: list[bytes]) -> Tree:
    """A Tree over every full subtree of `leaves`, as the ledger stores them."""
    nodes = {(0, i): h for i, h in enumerate(leaves)}
    level, width = 0, len(leaves)
    while width > 1:
        for i in range(width // 2):
            nodes[(level + 1, i)] = node_hash(nodes[(level, 2 * i)], nodes[(level, 2 * i + 1)])
        level, width = level + 1, width // 2
    reads = []

    def lookup(lv: int, i: int) -> bytes:
        reads.append((lv, i))
        return nodes[(lv, i)]

    tree = Tree(lookup, len(leaves))
    tree.reads = reads  # type: ignore[attr-defined]
    return tree


HASHED = [leaf_hash(x) for x in LEAVES]


def test_empty_root_is_sha256_of_nothing():
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == ROOTS[0] == root_of([])


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_the_reference(size):
    assert root_of(HASHED[:size]) == ROOTS[size]
    assert stored(HASHED[:size]).root() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_reference(index, size, proof):
    assert stored(HASHED[:size]).inclusion_proof(index) == [H(p) for p in proof]
    assert verify_inclusion(HASHED[index], index, size, [H(p) for p in proof], ROOTS[size])


@pytest.mark.parametrize(("first", "second", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_reference(first, second, proof):
    assert stored(HASHED[:second]).consistency_proof(first) == [H(p) for p in proof]
    assert verify_consistency(first, second, [H(p) for p in proof], ROOTS[first], ROOTS[second])


def leaves_of(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300), st.data())
def test_inclusion_verifies_and_an_altered_hash_index_or_size_fails(size, data):
    leaves = leaves_of(size)
    tree = stored(leaves)
    index = data.draw(st.integers(0, size - 1))
    root, proof = tree.root(), tree.inclusion_proof(index)
    assert root == root_of(leaves)
    assert verify_inclusion(leaves[index], index, size, proof, root)
    assert not verify_inclusion(leaf_hash(b"other"), index, size, proof, root)
    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
        assert not verify_inclusion(leaves[index], other, size, proof, root)
    # A size whose tree is deeper than the proof: the size is bound to the root by the signed
    # tree head; here it fails on its own because the path no longer reaches the root.
    assert not verify_inclusion(leaves[index], index, 2 * size + 2, proof, root)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:k], bytes(32), *proof[k + 1:]]
        assert not verify_inclusion(leaves[index], index, size, bad, root)
    assert len(tree.reads) <= 2 * size.bit_length() + 2  # O(log n) stored nodes


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300), st.data())
def test_consistency_verifies_and_an_altered_hash_or_size_fails(second, data):
    first = data.draw(st.integers(1, second))
    leaves = leaves_of(second)
    tree = stored(leaves)
    proof = tree.consistency_proof(first)
    first_root, second_root = root_of(leaves[:first]), tree.root()
    assert verify_consistency(first, second, proof, first_root, second_root)
    assert not verify_consistency(first, second, proof, leaf_hash(b"x"), second_root)
    assert not verify_consistency(first, second, proof, first_root, leaf_hash(b"x"))
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:k], bytes(32), *proof[k + 1:]]
        assert not verify_consistency(first, second, bad, first_root, second_root)
    assert not verify_consistency(first, 2 * second + 2, proof, first_root, second_root)
