"""The RFC 6962 Merkle tree (docs/PROTOCOL.md section 9): roots, inclusion and consistency
proofs for every tree size 0..300 against a straightforward recursive reference, and the
RFC 9162 verifiers refusing every tampered proof."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest

from keys import (
    ConsistencyProofError,
    Frontier,
    InclusionProofError,
    MemoryNodeStore,
    MerkleTree,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

MAX = 300
LEAVES = [leaf_hash(b"entry %d" % i) for i in range(MAX)]


# --- The reference: RFC 6962 §2.1, §2.1.1 and §2.1.2 as written, memoised on ranges. ---


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def mth(start: int, end: int) -> bytes:
    n = end - start
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return LEAVES[start]
    k = _k(n)
    return node_hash(mth(start, start + k), mth(start + k, end))


def ref_path(m: int, start: int, end: int) -> list[bytes]:
    n = end - start
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, start, start + k), mth(start + k, end)]
    return [*ref_path(m - k, start + k, end), mth(start, start + k)]


def ref_subproof(m: int, start: int, end: int, b: bool) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if b else [mth(start, end)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, start, start + k, b), mth(start + k, end)]
    return [*ref_subproof(m - k, start + k, end, False), mth(start, start + k)]


def ref_proof(m: int, n: int) -> list[bytes]:
    return ref_subproof(m, 0, n, True)


# --- One tree, built once. ---


class CountingStore(MemoryNodeStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.writes = 0

    def get(self, level: int, index: int) -> bytes:
        self.reads += 1
        return super().get(level, index)

    def put(self, level: int, index: int, digest: bytes) -> None:
        self.writes += 1
        super().put(level, index, digest)


STORE = CountingStore()
TREE = MerkleTree(STORE)
for _leaf in LEAVES:
    TREE.append(_leaf)


def flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8 % len(b)] ^= 1 << (bit % 8)
    return bytes(out)


def refused(verify: Callable[..., object], error: type[Exception], **kwargs: Any) -> bool:
    """Whether `verify(**kwargs)` refuses with `error` (any other exception propagates)."""
    try:
        verify(**kwargs)
    except error:
        return True
    return False


def inclusion_refused(**kwargs: Any) -> bool:
    return refused(verify_inclusion, InclusionProofError, **kwargs)


def consistency_refused(**kwargs: Any) -> bool:
    return refused(verify_consistency, ConsistencyProofError, **kwargs)


def test_reference_root_matches_root_of() -> None:
    """The memoised reference agrees with `root_of`, the plain recursive MTH."""
    for n in range(MAX + 1):
        assert mth(0, n) == root_of(LEAVES[:n])


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    """The empty tree's root is SHA-256 of the empty string."""
    assert root_of([]) == TREE.root(0) == hashlib.sha256(b"").digest()


def test_leaf_and_node_hash_prefixes() -> None:
    """Leaves and nodes are hashed with the 0x00 and 0x01 prefixes of RFC 6962."""
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()


def test_root_of_every_size_including_past_sizes() -> None:
    """The tree's root at every size 0..300 equals `root_of` of that prefix, and an
    incrementally built tree agrees at each step."""
    for n in range(MAX + 1):
        assert TREE.root(n) == root_of(LEAVES[:n])
    grown = MerkleTree(MemoryNodeStore())
    for n, leaf in enumerate(LEAVES[:40]):
        assert grown.append(leaf) == n
        assert grown.size == n + 1
        assert grown.root() == root_of(LEAVES[: n + 1])


def test_frontier_root_at_every_size_and_with_subtrees() -> None:
    """A `Frontier` appended leaf by leaf has `root_of`'s root at every size 0..300; one fed
    perfect subtrees of 8 leaves (leaves for the rest) reaches the same roots at their
    boundaries; a subtree off its boundary or a hash of the wrong size is refused."""
    frontier = Frontier()
    assert frontier.root() == root_of([])
    for n, leaf in enumerate(LEAVES):
        frontier.append(leaf)
        assert frontier.size == n + 1
        assert frontier.root() == root_of(LEAVES[: n + 1])
    chunked = Frontier()
    for start in range(0, MAX - MAX % 8, 8):
        chunked.append_subtree(root_of(LEAVES[start : start + 8]), 3)
        assert chunked.root() == root_of(LEAVES[: start + 8])
    for leaf in LEAVES[MAX - MAX % 8 :]:
        chunked.append(leaf)
    assert chunked.size == MAX and chunked.root() == root_of(LEAVES)
    with pytest.raises(ValueError, match="cannot follow"):
        chunked.append_subtree(LEAVES[0], 3)  # 300 leaves: not on a boundary of 8
    with pytest.raises(ValueError, match="32 bytes"):
        Frontier().append(b"short")


def test_reopened_tree_continues_from_the_store() -> None:
    """A tree constructed over an existing store and size continues where it left off."""
    store = MemoryNodeStore()
    first = MerkleTree(store)
    for leaf in LEAVES[:37]:
        first.append(leaf)
    again = MerkleTree(store, 37)
    for leaf in LEAVES[37:70]:
        again.append(leaf)
    assert again.root() == root_of(LEAVES[:70])
    assert again.root(37) == root_of(LEAVES[:37])


def test_every_inclusion_proof_matches_the_reference_and_verifies() -> None:
    """For every size 0..300 and every index, the proof is RFC 6962 PATH exactly, verifies,
    and flipping a bit of any element (or of the root), or changing the index or the size,
    is refused."""
    for n in range(1, MAX + 1):
        root = TREE.root(n)
        for i in range(n):
            proof = TREE.inclusion_proof(i, n)
            assert proof == ref_path(i, 0, n), (i, n)
            verify_inclusion(leaf_hash=LEAVES[i], index=i, size=n, proof=proof, root=root)
            for j, element in enumerate(proof):
                bad = [*proof]
                bad[j] = flip(element, i * 31 + j * 7 + n)
                assert inclusion_refused(
                    leaf_hash=LEAVES[i], index=i, size=n, proof=bad, root=root
                ), (i, n, j)
            assert inclusion_refused(
                leaf_hash=LEAVES[i], index=i, size=n, proof=proof, root=flip(root, i + n)
            )
            for other in (i - 1, i + 1, n, n + 5):
                if other >= 0:
                    assert inclusion_refused(
                        leaf_hash=LEAVES[i], index=other, size=n, proof=proof, root=root
                    ), (i, other, n)
            for size in (n - 1, n + 1):
                if i < size <= MAX:
                    assert inclusion_refused(
                        leaf_hash=LEAVES[i], index=i, size=size, proof=proof, root=TREE.root(size)
                    ), (i, n, size)


@pytest.mark.parametrize(("index", "size"), [(0, 1), (0, 2), (5, 7), (63, 64), (200, 300)])
def test_every_bit_of_an_inclusion_proof_matters(index: int, size: int) -> None:
    """Flipping any single bit of any proof element, the leaf or the root is refused."""
    proof = TREE.inclusion_proof(index, size)
    root = TREE.root(size)
    leaf = LEAVES[index]
    for j in range(len(proof)):
        for bit in range(256):
            bad = [*proof]
            bad[j] = flip(proof[j], bit)
            with pytest.raises(InclusionProofError):
                verify_inclusion(leaf_hash=leaf, index=index, size=size, proof=bad, root=root)
    for bit in range(256):
        with pytest.raises(InclusionProofError):
            verify_inclusion(
                leaf_hash=leaf, index=index, size=size, proof=proof, root=flip(root, bit)
            )
        with pytest.raises(InclusionProofError):
            verify_inclusion(
                leaf_hash=flip(leaf, bit), index=index, size=size, proof=proof, root=root
            )


def _check_consistency(m: int, n: int, *, tamper: bool) -> None:
    proof = TREE.consistency_proof(m, n)
    assert proof == ref_proof(m, n), (m, n)
    first_root, second_root = TREE.root(m), TREE.root(n)
    verify_consistency(
        first=m, second=n, first_root=first_root, second_root=second_root, proof=proof
    )
    if not tamper:
        return

    def refuses(first: int, second: int, r1: bytes, r2: bytes, p: list[bytes]) -> bool:
        return consistency_refused(
            first=first, second=second, first_root=r1, second_root=r2, proof=p
        )

    for j, element in enumerate(proof):
        bad = [*proof]
        bad[j] = flip(element, m * 13 + n * 3 + j)
        assert refuses(m, n, first_root, second_root, bad), (m, n, j)
    assert refuses(m, n, flip(first_root, m + n), second_root, proof)
    assert refuses(m, n, first_root, flip(second_root, m * n), proof)
    assert refuses(m, n, first_root, second_root, [*proof, proof[0] if proof else first_root])
    if proof:
        assert refuses(m, n, first_root, second_root, proof[:-1])
    for first, second in ((m - 1, n), (m + 1, n), (m, n + 1), (m, n - 1)):
        if 0 < first < second <= MAX and (first, second) != (m, n):
            assert refuses(first, second, TREE.root(first), TREE.root(second), proof), (
                m,
                n,
                first,
                second,
            )


def test_every_consistency_proof_up_to_64() -> None:
    """For every 0 < m <= n <= 64 the proof is RFC 6962 PROOF exactly, verifies, and any
    tampering (a flipped bit, a root, a size, an element added or dropped) is refused."""
    for n in range(1, 65):
        for m in range(1, n + 1):
            _check_consistency(m, n, tamper=True)


def test_sampled_consistency_proofs_up_to_300() -> None:
    """A deterministic sample of (m, n) up to 300, plus every m against n = 300."""
    rng = random.Random(6962)  # noqa: S311 - a fixed, reproducible sample, not a secret
    pairs = {tuple(sorted((rng.randint(1, MAX), rng.randint(1, MAX)))) for _ in range(1500)}
    pairs |= {(m, MAX) for m in range(1, MAX + 1)}
    for m, n in sorted(pairs):
        _check_consistency(m, n, tamper=True)


@pytest.mark.parametrize(("first", "second"), [(1, 2), (3, 7), (4, 8), (64, 65), (100, 300)])
def test_every_bit_of_a_consistency_proof_matters(first: int, second: int) -> None:
    """Flipping any single bit of any consistency proof element is refused."""
    proof = TREE.consistency_proof(first, second)
    r1, r2 = TREE.root(first), TREE.root(second)
    for j in range(len(proof)):
        for bit in range(256):
            bad = [*proof]
            bad[j] = flip(proof[j], bit)
            with pytest.raises(ConsistencyProofError):
                verify_consistency(
                    first=first, second=second, first_root=r1, second_root=r2, proof=bad
                )


def test_consistency_edge_cases() -> None:
    """RFC 9162 at the edges: equal sizes (0 with 0 too) need an empty proof and equal roots;
    size 0 is consistent with anything given the empty root and an empty proof; a shrinking
    tree, a proof too long or too short, or an empty proof for a real extension is refused."""
    r5, r9 = TREE.root(5), TREE.root(9)
    verify_consistency(first=5, second=5, first_root=r5, second_root=r5, proof=[])
    r0 = TREE.root(0)
    verify_consistency(first=0, second=9, first_root=r0, second_root=r9, proof=[])
    verify_consistency(first=0, second=0, first_root=r0, second_root=r0, proof=[])
    assert TREE.consistency_proof(0, 9) == [] and TREE.consistency_proof(9, 9) == []
    assert TREE.consistency_proof(0, 0) == []
    cases: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (5, 5, r5, r9, []),
        (5, 5, r9, r5, []),
        (0, 0, r0, r5, []),
        (0, 0, r5, r0, []),
        (0, 0, r5, r5, []),
        (0, 0, r0, r0, [r0]),
        (0, 9, r0, r9, [r9]),
        (1, 1, LEAVES[0], LEAVES[0], [LEAVES[0]]),
        (1, 2, LEAVES[0], TREE.root(2), []),
        (1, 2, LEAVES[0], TREE.root(2), [LEAVES[1], LEAVES[1]]),
        (4, 8, r5, TREE.root(8), TREE.consistency_proof(4, 8)),
        (5, 5, r5, r5, [r9]),
        (0, 9, r5, r9, []),
        (9, 5, r9, r5, TREE.consistency_proof(5, 9)),
        (5, 9, r5, r9, []),
        (5, 9, r5[:31], r9, TREE.consistency_proof(5, 9)),
        (5, 9, r5, r9, [p[:31] for p in TREE.consistency_proof(5, 9)]),
        (5, 9, r5, r9, [r5] * 65),
    ]
    for first, second, a, b, proof in cases:
        with pytest.raises(ConsistencyProofError) as info:
            verify_consistency(first=first, second=second, first_root=a, second_root=b, proof=proof)
        assert info.value.reason == "bad-consistency-proof"


def test_inclusion_edge_cases() -> None:
    """An index outside the tree, an empty tree, wrong hash lengths and overlong proofs are
    refused as untrusted input; negative arguments are a caller's ValueError."""
    proof = TREE.inclusion_proof(3, 10)
    root = TREE.root(10)
    bad: list[tuple[int, int, bytes, list[bytes], bytes]] = [
        (10, 10, LEAVES[3], proof, root),
        (0, 0, LEAVES[3], [], TREE.root(0)),
        (3, 10, LEAVES[3][:31], proof, root),
        (3, 10, LEAVES[3], proof, root + b"\x00"),
        (3, 10, LEAVES[3], [*proof, proof[0]], root),
        (3, 10, LEAVES[3], proof[:-1], root),
        (3, 10, LEAVES[3], [root] * 65, root),
        (0, 1, LEAVES[0], [LEAVES[0]], LEAVES[0]),
        (0, 1, LEAVES[0], [], LEAVES[1]),
        (0, 2, LEAVES[0], [], TREE.root(2)),
        (1, 2, LEAVES[1], [LEAVES[0], LEAVES[0]], TREE.root(2)),
        (7, 8, LEAVES[7], TREE.inclusion_proof(7, 8)[:-1], TREE.root(8)),
    ]
    for index, size, leaf, p, r in bad:
        with pytest.raises(InclusionProofError) as info:
            verify_inclusion(leaf_hash=leaf, index=index, size=size, proof=p, root=r)
        assert info.value.reason == "bad-inclusion-proof"
    # A single-leaf tree: the root is the leaf hash and the proof is empty.
    verify_inclusion(leaf_hash=LEAVES[0], index=0, size=1, proof=[], root=LEAVES[0])
    with pytest.raises(ValueError):
        verify_inclusion(leaf_hash=LEAVES[0], index=-1, size=1, proof=[], root=LEAVES[0])
    with pytest.raises(ValueError):
        verify_consistency(first=-1, second=1, first_root=root, second_root=root, proof=[])


def test_caller_misuse_raises_value_error() -> None:
    """Asking for sizes the tree does not have, or appending a non-hash, is a ValueError."""
    for call in (
        lambda: TREE.root(MAX + 1),
        lambda: TREE.root(-1),
        lambda: TREE.inclusion_proof(5, 5),
        lambda: TREE.inclusion_proof(0, MAX + 1),
        lambda: TREE.consistency_proof(6, 5),
        lambda: TREE.consistency_proof(1, MAX + 1),
        lambda: MerkleTree(MemoryNodeStore()).append(b"short"),
        lambda: MerkleTree(MemoryNodeStore(), -1),
    ):
        with pytest.raises(ValueError):
            call()


def test_operations_cost_logarithmic_store_access() -> None:
    """Appending, roots and proofs touch O(log n) stored nodes."""
    store = CountingStore()
    tree = MerkleTree(store)
    for leaf in LEAVES:
        tree.append(leaf)
    assert store.writes == len(store) < 2 * MAX  # every node written once
    bound = 2 * (MAX.bit_length() + 1)
    for n in (1, 2, 3, 100, 255, 256, 257, MAX):
        for what in ("root", "inclusion", "consistency"):
            store.reads = 0
            if what == "root":
                tree.root(n)
            elif what == "inclusion":
                tree.inclusion_proof(n // 2, n)
            else:
                tree.consistency_proof(max(1, n // 3), n)
            assert store.reads <= bound, (n, what, store.reads)
    store.reads = store.writes = 0
    tree.append(leaf_hash(b"one more"))  # size 301 -> completes nothing big
    big = MerkleTree(store, MAX + 1)
    for leaf in LEAVES[: 511 - (MAX + 1)]:
        big.append(leaf)
    store.reads = store.writes = 0
    big.append(leaf_hash(b"the 512th"))  # completes subtrees at levels 1..9
    assert store.writes == 10 and store.reads == 9
