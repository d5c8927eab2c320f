"""The RFC 6962 Merkle tree of the audit ledger (docs/PROTOCOL.md section 9).

Hashing is RFC 6962 §2.1: a leaf is SHA-256(0x00 || data), an interior node is
SHA-256(0x01 || left || right), and the empty tree is SHA-256(""). `root_of` is the plain
recursive Merkle Tree Hash, kept as the reference.

`MerkleTree` keeps only the hashes of *perfect* subtrees in a `NodeStore`: (level, index) is the
hash of leaves [index * 2**level, (index + 1) * 2**level). Every perfect subtree of every past
tree size is stored once it is complete, so the root of any past size and every proof are built
from O(log n) store reads; the imperfect right edge of a tree is recomputed from them.

Proof generation follows RFC 6962 §2.1.1 (PATH) and §2.1.2 (PROOF) exactly; verification is the
RFC 9162 §2.1.3.2 and §2.1.4.2 algorithms. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Sequence
from typing import Protocol

from .errors import ConsistencyProofError, InclusionProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "MemoryNodeStore",
    "MerkleTree",
    "NodeStore",
    "leaf_hash",
    "node_hash",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

#: Length of every hash in the tree (SHA-256).
HASH_SIZE = 32
#: Root of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()
#: Proofs longer than this cannot belong to a tree of fewer than 2**64 leaves.
_MAX_PROOF_LEN = 64


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The RFC 6962 §2.1 Merkle Tree Hash of a list of leaf hashes, by plain recursion."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = _split(n)
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


class NodeStore(Protocol):
    """Where the hashes of perfect subtrees live. Level 0 holds leaf hashes; (level, index)
    covers leaves [index * 2**level, (index + 1) * 2**level). `get` of a missing node raises
    `KeyError`."""

    def get(self, level: int, index: int) -> bytes: ...

    def put(self, level: int, index: int, digest: bytes) -> None: ...


class MemoryNodeStore:
    """A `NodeStore` in a dict, for tests and tools."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[int, int], bytes] = {}

    def get(self, level: int, index: int) -> bytes:
        return self._nodes[(level, index)]

    def put(self, level: int, index: int, digest: bytes) -> None:
        self._nodes[(level, index)] = digest

    def __len__(self) -> int:
        return len(self._nodes)


class MerkleTree:
    """An append-only RFC 6962 tree over a `NodeStore` that already holds `size` leaves."""

    def __init__(self, store: NodeStore, size: int = 0) -> None:
        if size < 0:
            raise ValueError("tree size must not be negative")
        self._store = store
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Store a leaf hash and every perfect subtree it completes; return its index."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes")
        index = self._size
        self._store.put(0, index, leaf_hash)
        digest, level, i = leaf_hash, 0, index
        while i & 1:  # a right child completes its parent
            digest = node_hash(self._store.get(level, i - 1), digest)
            level, i = level + 1, i >> 1
            self._store.put(level, i, digest)
        self._size = index + 1
        return index

    def root(self, size: int | None = None) -> bytes:
        """The root hash of the tree as it was at `size` leaves (default: now)."""
        n = self._size if size is None else size
        self._check_size(n)
        return EMPTY_ROOT if n == 0 else self._range(0, n)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 6962 §2.1.1 PATH(index, D[0:size]), leaf-side first."""
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError("leaf index out of range")
        proof: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                proof.append(self._range(start + k, end))
                end = start + k
            else:
                proof.append(self._range(start, start + k))
                start += k
        proof.reverse()
        return proof

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """RFC 6962 §2.1.2 PROOF(first, D[0:second]). Empty when first is 0 or equals second."""
        self._check_size(second)
        if not 0 <= first <= second:
            raise ValueError("need 0 <= first <= second")
        if first in (0, second):
            return []
        proof: list[bytes] = []
        m, start, end, complete = first, 0, second, True
        # SUBPROOF(m, D[start:end], complete), unrolled: m counts leaves from `start`.
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                proof.append(self._range(start + k, end))
                end = start + k
            else:
                proof.append(self._range(start, start + k))
                start, m, complete = start + k, m - k, False
        if not complete:
            proof.append(self._range(start, end))
        proof.reverse()
        return proof

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise ValueError(f"tree size {size} outside 0..{self._size}")

    def _range(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a non-empty range that starts on a boundary of a subtree at
        least its size (true of every range PATH and PROOF ask for). Perfect ranges are one
        read; otherwise the perfect left part plus the recursively computed right edge."""
        n = end - start
        if n & (n - 1) == 0:
            level = n.bit_length() - 1
            return self._store.get(level, start >> level)
        k = _split(n)
        return node_hash(self._range(start, start + k), self._range(start + k, end))


class Frontier:
    """The right frontier of an append-only tree: the roots of its perfect subtrees, largest
    (leftmost) first, O(log n) hashes in all. Enough to append and to take the root of the
    tree as it stands, never of a past size: a verifier that must know the root at some
    size takes it when the tree reaches that size. The roots equal `MerkleTree`'s."""

    __slots__ = ("_hashes", "_levels", "_size")

    def __init__(self) -> None:
        self._levels: list[int] = []
        self._hashes: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash."""
        self.append_subtree(leaf_hash, 0)

    def append_subtree(self, digest: bytes, level: int) -> None:
        """Append the root `digest` of a perfect subtree of 2**level leaves; the tree's size
        must be a multiple of 2**level (the subtree sits on its own boundary)."""
        if len(digest) != HASH_SIZE:
            raise ValueError(f"a subtree hash is {HASH_SIZE} bytes")
        if level < 0 or self._size & ((1 << level) - 1):
            raise ValueError(f"a subtree of level {level} cannot follow {self._size} leaves")
        self._size += 1 << level
        levels, hashes = self._levels, self._hashes
        while levels and levels[-1] == level:  # two equal neighbours make their parent
            levels.pop()
            digest = node_hash(hashes.pop(), digest)
            level += 1
        levels.append(level)
        hashes.append(digest)

    def root(self) -> bytes:
        """MTH of the tree as it stands (RFC 6962 §2.1: the perfect subtrees folded from the
        right)."""
        if not self._hashes:
            return EMPTY_ROOT
        digest = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            digest = node_hash(left, digest)
        return digest


def _check_hash(value: bytes, error: type[Exception], what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise error(f"{what} is not a {HASH_SIZE}-byte hash")


def _walk(
    fn: int, sn: int, path: Sequence[bytes], error: type[Exception], what: str
) -> Iterator[tuple[bytes, bool]]:
    """RFC 9162's walk up from node `fn` of a tree whose last node is `sn` (§2.1.3.2 and
    §2.1.4.2 alike): each element of `path` with whether it is a left sibling, then `error`
    if `path` does not end exactly at the root."""
    for p in path:
        if sn == 0:
            raise error(f"{what} proof too long")
        left = bool(fn & 1 or fn == sn)
        yield p, left
        if left and not fn & 1:
            while fn & 1 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise error(f"{what} proof too short")


def verify_inclusion(
    *, leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Verify that `leaf_hash` is leaf `index` of the tree of `size` leaves with `root`
    (RFC 9162 §2.1.3.2). Raises `InclusionProofError` if not; `ValueError` on negative
    arguments."""
    if index < 0 or size < 0:
        raise ValueError("index and size must not be negative")
    if index >= size:
        raise InclusionProofError("leaf index outside the tree")
    if len(proof) > _MAX_PROOF_LEN:
        raise InclusionProofError("inclusion proof too long")
    _check_hash(leaf_hash, InclusionProofError, "leaf hash")
    _check_hash(root, InclusionProofError, "root")
    for p in proof:
        _check_hash(p, InclusionProofError, "proof element")
    r = leaf_hash
    for p, left in _walk(index, size - 1, proof, InclusionProofError, "inclusion"):
        r = node_hash(p, r) if left else node_hash(r, p)
    if not hmac.compare_digest(r, root):
        raise InclusionProofError("inclusion proof does not lead to the root")


def verify_consistency(
    *,
    first: int,
    second: int,
    first_root: bytes,
    second_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Verify that the tree of `first` leaves with `first_root` is a prefix of the tree of
    `second` leaves with `second_root` (RFC 9162 §2.1.4.2). When first is 0 or equals second
    the proof must be empty; equal sizes need equal roots and size 0 the empty root (so
    0 with 0 needs both roots empty). Raises
    `ConsistencyProofError` if not; `ValueError` on negative sizes."""
    if first < 0 or second < 0:
        raise ValueError("tree sizes must not be negative")
    if first > second:
        raise ConsistencyProofError("first tree size is larger than the second")
    if len(proof) > _MAX_PROOF_LEN:
        raise ConsistencyProofError("consistency proof too long")
    _check_hash(first_root, ConsistencyProofError, "first root")
    _check_hash(second_root, ConsistencyProofError, "second root")
    if first == 0 or first == second:
        # RFC 9162 §2.1.4.2 covers 0 < first < second; at the edges the proof is empty
        # (§2.1.4.1), equal sizes need equal roots, and size 0 has the empty root: both
        # checks apply when first == second == 0.
        if proof:
            raise ConsistencyProofError("consistency proof must be empty")
        if first == 0 and not hmac.compare_digest(first_root, EMPTY_ROOT):
            raise ConsistencyProofError("first root is not the root of the empty tree")
        if first == second and not hmac.compare_digest(first_root, second_root):
            raise ConsistencyProofError("roots of equal trees differ")
        return
    if not proof:
        raise ConsistencyProofError("consistency proof is empty")
    for p in proof:
        _check_hash(p, ConsistencyProofError, "proof element")
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c, left in _walk(fn, sn, path[1:], ConsistencyProofError, "consistency"):
        if left:
            fr = node_hash(c, fr)
        sr = node_hash(c, sr) if left else node_hash(sr, c)
    if not hmac.compare_digest(fr, first_root):
        raise ConsistencyProofError("consistency proof does not lead to the first root")
    if not hmac.compare_digest(sr, second_root):
        raise ConsistencyProofError("consistency proof does not lead to the second root")
