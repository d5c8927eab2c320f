"""Verify a whole ledger offline, trusting nobody (issue 5; PROTOCOL.md §9).

Given the rows in index order, every directory version the ledger used, the trusted root
chain and a signed checkpoint: each row's leaf must carry its own index, decode, and hold an
event whose signature verifies under the directory version recorded for it; the columns
shown to auditors must match the leaf; and the recomputed tree root must equal the
checkpoint's. The first failure raises LedgerVerificationError naming its index.

Rows are streamed (`verify_rows`), or read by chunks in worker processes (`verify_source`):
either way only the tree's right frontier is kept, O(log n) hashes, never the whole tree.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

from .audit import verify_event
from .checkpoint import Checkpoint
from .directory import Directory, TrustStore, read_unverified_root
from .errors import NotEnoughSignaturesError, NrmError, UntrustedInputError
from .ledger_entry import LedgerEntry
from .merkle import Frontier, leaf_hash
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
    this tree unless a later restore went back further (the tree it named was replaced).
    The rows are streamed: only the tree's right frontier and the roots at the sizes the
    checkpoint and the declarations name are kept."""
    tree = _Tree(checkpoint, restores)
    for expected, row in enumerate(rows):
        tree.append(_verify_row(row, expected, directories))
        progress(expected + 1)
    return tree.finish(checkpoint, restores)


class RowSource(Protocol):
    """Rows readable by index range from any process (so it pickles): a database file, say."""

    def between(self, start: int | None, end: int) -> Iterable[Row]:
        """The rows with `start <= index < end` in index order (no lower bound if None)."""
        ...

    def first_from(self, index: int) -> int | None:
        """The least row index at or after `index`, if any."""
        ...


#: Rows per chunk of `verify_source` (2**CHUNK_LEVEL: a chunk is a perfect subtree).
CHUNK_LEVEL = 14


def verify_source(
    source: RowSource,
    *,
    count: int,
    directories: Mapping[int, Directory],
    checkpoint: Checkpoint,
    restores: Sequence[RestoreDeclaration] = (),
    progress: Callable[[int], None] = lambda n: None,
    workers: int = 1,
    chunk_level: int = CHUNK_LEVEL,
) -> int:
    """`verify_rows` over the `count` rows of `source`, with the same checks, errors and
    indexes, in chunks of 2**chunk_level rows verified by `workers` processes (in this one
    if 1). Chunks are taken in order, so the first bad index is the one `verify_rows` names.
    A chunk reads its own rows and hands back the root of its perfect subtree, or its leaf
    hashes if it is the last or holds a size whose root is checked; memory is bounded by
    the chunks in flight, whatever `count`."""
    size = 1 << chunk_level
    wanted = frozenset(_wanted(checkpoint, restores))
    jobs = [(s, s + size) for s in range(0, max(count, 1), size)]
    tree = _Tree(checkpoint, restores)
    context = _ChunkContext(source, dict(directories), wanted)
    if workers <= 1:
        results: Iterable[_Chunk] = (context.verify(s, e) for s, e in jobs)
        return _fold(results, tree, chunk_level, checkpoint, restores, progress)
    # Spawned, not forked (the caller may run threads: a progress bar's, say), so a script
    # that calls this needs the `if __name__ == "__main__":` guard. A worker that dies
    # raises BrokenProcessPool here rather than leaving the verification waiting.
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(context,),
    )
    try:
        results = pool.map(_verify_in_worker, jobs)
        return _fold(results, tree, chunk_level, checkpoint, restores, progress)
    except BrokenProcessPool as e:  # out of memory, killed: an error the CLI names
        raise OSError("a verification worker died before it finished its rows") from e
    finally:  # after a failure, the chunks not yet started are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def _fold(
    results: Iterable[_Chunk],
    tree: _Tree,
    chunk_level: int,
    checkpoint: Checkpoint,
    restores: Sequence[RestoreDeclaration],
    progress: Callable[[int], None],
) -> int:
    for chunk in results:
        if chunk.failure is not None:
            raise LedgerVerificationError(*chunk.failure)
        if chunk.subtree is not None:
            tree.append_subtree(chunk.subtree, chunk_level)
        else:
            for digest in chunk.hashes:
                tree.append(digest)
        progress(tree.size)
        if chunk.last:
            break
    return tree.finish(checkpoint, restores)


@dataclass(frozen=True, slots=True)
class _Chunk:
    """What verifying rows [start, end) found: the first failure `(index, reason)`, or the
    subtree root of a whole chunk, or the leaf hashes; `last` if the ledger ends in it."""

    failure: tuple[int | None, str] | None = None
    subtree: bytes | None = None
    hashes: tuple[bytes, ...] = ()
    last: bool = False


@dataclass(frozen=True, slots=True)
class _ChunkContext:
    source: RowSource
    directories: dict[int, Directory]
    wanted: frozenset[int]

    def verify(self, start: int, end: int) -> _Chunk:
        hashes: list[bytes] = []
        expected = start
        try:
            for row in self.source.between(None if start == 0 else start, end):
                hashes.append(_verify_row(row, expected, self.directories))
                expected += 1
            if expected < end:  # the chunk ran out: a row is missing, or the ledger ends
                following = self.source.first_from(expected)
                if following is not None:
                    raise LedgerVerificationError(expected, f"missing; the next row is {following}")
                return _Chunk(hashes=tuple(hashes), last=True)
        except LedgerVerificationError as e:
            return _Chunk(failure=(e.index, e.reason))
        if any(start < n < end for n in self.wanted):
            return _Chunk(hashes=tuple(hashes))
        frontier = Frontier()
        for digest in hashes:
            frontier.append(digest)
        return _Chunk(subtree=frontier.root())


_WORKER: list[_ChunkContext] = []


def _start_worker(context: _ChunkContext) -> None:
    _WORKER.append(context)


def _verify_in_worker(job: tuple[int, int]) -> _Chunk:
    return _WORKER[0].verify(*job)


def _wanted(checkpoint: Checkpoint, restores: Sequence[RestoreDeclaration]) -> set[int]:
    """The sizes whose roots are checked: the checkpoint's and each restore's."""
    return {checkpoint.size, *(d.restored_size for d in restores)}


class _Tree:
    """The frontier of the recomputed tree and its roots at the sizes that are checked."""

    def __init__(self, checkpoint: Checkpoint, restores: Sequence[RestoreDeclaration]) -> None:
        self._frontier = Frontier()
        self._wanted = _wanted(checkpoint, restores)
        self._roots: dict[int, bytes] = {}
        self._keep()

    @property
    def size(self) -> int:
        return self._frontier.size

    def append(self, digest: bytes) -> None:
        self._frontier.append(digest)
        if self._frontier.size in self._wanted:
            self._keep()

    def append_subtree(self, digest: bytes, level: int) -> None:
        self._frontier.append_subtree(digest, level)
        if self._frontier.size in self._wanted:
            self._keep()

    def _keep(self) -> None:
        self._roots[self._frontier.size] = self._frontier.root()

    def finish(self, checkpoint: Checkpoint, restores: Sequence[RestoreDeclaration]) -> int:
        """The checks after the last row; returns the number of entries."""
        size = self._frontier.size
        if size < checkpoint.size:
            raise LedgerVerificationError(size, f"missing; the checkpoint has {checkpoint.size}")
        if self._roots[checkpoint.size] != checkpoint.root:
            raise LedgerVerificationError(None, "recomputed root differs from the checkpoint")
        floor = size
        for d in reversed(restores):
            if d.restored_size <= floor and (
                d.restored_size > size or self._roots[d.restored_size] != d.restored_root
            ):
                raise LedgerVerificationError(
                    None,
                    f"restore {d.seq} declares a tree that is not this ledger's first entries",
                )
            floor = min(floor, d.restored_size)
        return size


def _verify_row(row: Row, expected: int, directories: Mapping[int, Directory]) -> bytes:
    """Every check of one row at position `expected`; returns its leaf hash."""
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
    return leaf_hash(row.leaf)


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
