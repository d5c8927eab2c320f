"""Verify a whole ledger offline, trusting nobody (issue 5; PROTOCOL.md §9).

Given the rows in index order, every directory version the ledger used, the trusted root
chain and a signed checkpoint: each row's leaf must carry its own index, decode, and hold an
event whose signature verifies under the directory version recorded for it; the columns
shown to auditors must match the leaf; and the recomputed tree root must equal the
checkpoint's. The first failure raises LedgerVerificationError naming its index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .audit import verify_event
from .checkpoint import Checkpoint
from .directory import Directory, TrustStore, read_unverified_root
from .errors import NotEnoughSignaturesError, NrmError, UntrustedInputError
from .ledger_entry import LedgerEntry
from .merkle import MemoryNodeStore, MerkleTree, leaf_hash
from .restore import RestoreDeclaration


class LedgerVerificationError(NrmError):
    """The ledger does not verify; `index` is the first entry found bad (or None)."""

    def __init__(self, index: int | None, reason: str) -> None:
        where = "the ledger" if index is None else f"entry {index}"
        super().__init__(f"{where}: {reason}")
        self.index = index
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Row:
    """One ledger row as stored or served: the leaf and the columns shown beside it."""

    index: int
    leaf: bytes
    directory_version: int
    columns: Mapping[str, Any]


def verify_directory_history(
    pinned: bytes,
    later_roots: Sequence[bytes],
    directories: Iterable[tuple[int, bytes, int]],
) -> dict[int, Directory]:
    """Verify each directory version the ledger used, `(version, signed bytes, accepted at)`
    oldest first, against the root chain as it stood when the ledger accepted it.

    The chain starts at the auditor's own `pinned` root; `later_roots` (any order, e.g. as
    the ledger serves them, duplicates and older versions ignored) are taken one version at
    a time, each verified by the one before (PROTOCOL.md §7.5): a root is moved on from
    only when a directory does not verify under it, and a directory must verify under a root
    that was current when it was accepted. Nothing the ledger serves is taken on trust.
    """
    try:
        store = TrustStore.pinned(pinned)
    except UntrustedInputError as e:
        raise LedgerVerificationError(None, f"the pinned root does not verify ({e.reason})") from e
    by_version: dict[int, bytes] = {}
    for data in later_roots:
        try:
            version = read_unverified_root(data).version
        except UntrustedInputError as e:
            raise LedgerVerificationError(None, f"a served root does not parse ({e})") from e
        if version > store.root.version:
            by_version.setdefault(version, data)
    verified: dict[int, Directory] = {}
    for version, data, accepted_at in directories:
        while True:
            try:
                verified[version] = store.update_directory(data, now=accepted_at)
                break
            except UntrustedInputError as e:
                following = by_version.get(store.root.version + 1)
                if following is None:
                    missing = ""
                    if isinstance(e, NotEnoughSignaturesError):
                        # Most likely signed by the keys of a root this auditor lacks.
                        later = store.root.version + 1
                        missing = (
                            f": it is probably signed by the keys of root version {later}, "
                            "which neither the ledger served nor --root gave; get "
                            f"root.{later}.json from the administrators and add "
                            f"--root root.{later}.json"
                        )
                    raise LedgerVerificationError(
                        None,
                        f"directory version {version} does not verify under root version "
                        f"{store.root.version} ({e.reason}){missing}",
                    ) from e
                try:
                    store.update_root(following)
                except UntrustedInputError as e2:
                    raise LedgerVerificationError(
                        None,
                        f"root version {store.root.version + 1} does not follow root version "
                        f"{store.root.version} ({e2.reason})",
                    ) from e2
    return verified


def verify_rows(
    rows: Iterable[Row],
    *,
    directories: Mapping[int, Directory],
    checkpoint: Checkpoint,
    restores: Sequence[RestoreDeclaration] = (),
    progress: Callable[[int], None] = lambda n: None,
) -> int:
    """Verify every row and the checkpoint; returns the number of entries verified.

    Each restore declaration (verified by the caller, oldest first) must name a prefix of
    this tree unless a later restore went back further (the tree it named was replaced)."""
    tree = MerkleTree(MemoryNodeStore())
    for expected, row in enumerate(rows):
        if row.index != expected:
            raise LedgerVerificationError(expected, f"missing; the next row is {row.index}")
        try:
            entry = LedgerEntry.decode(row.leaf)
        except UntrustedInputError as e:
            raise LedgerVerificationError(row.index, f"leaf does not decode ({e})") from e
        if entry.index != row.index:
            raise LedgerVerificationError(
                row.index, f"leaf belongs at index {entry.index}: rows moved or inserted"
            )
        directory = directories.get(row.directory_version)
        if directory is None:
            raise LedgerVerificationError(
                row.index, f"no verified directory version {row.directory_version}"
            )
        try:
            # At the event's time only: the ledger also refused what the bus stored after
            # the key's revocation, but a leaf keeps only appended_at (at or after the
            # stored time), which would refuse honest entries appended late (§9.0).
            signed = verify_event(entry.signed_event, signers=directory)
        except UntrustedInputError as e:
            raise LedgerVerificationError(row.index, f"event does not verify ({e.reason})") from e
        if _columns(signed.event) != {k: row.columns.get(k) for k in _COLUMN_NAMES}:
            raise LedgerVerificationError(row.index, "columns do not match the signed event")
        tree.append(leaf_hash(row.leaf))
        progress(expected + 1)
    if tree.size < checkpoint.size:
        raise LedgerVerificationError(tree.size, f"missing; the checkpoint has {checkpoint.size}")
    if tree.root(checkpoint.size) != checkpoint.root:
        raise LedgerVerificationError(None, "recomputed root differs from the checkpoint")
    floor = tree.size
    for d in reversed(restores):
        if d.restored_size <= floor and (
            d.restored_size > tree.size or tree.root(d.restored_size) != d.restored_root
        ):
            raise LedgerVerificationError(
                None, f"restore {d.seq} declares a tree that is not this ledger's first entries"
            )
        floor = min(floor, d.restored_size)
    return tree.size


_COLUMN_NAMES = (
    "event_id",
    "agency",
    "kind",
    "referral_id",
    "counterpart",
    "reason",
    "labels",
    "time",
)


def _columns(event: Any) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "agency": event.agency,
        "kind": event.kind,
        "referral_id": event.referral_id,
        "counterpart": event.counterpart,
        "reason": event.reason,
        "labels": dict(event.labels),
        "time": event.time,
    }
