"""Offline verification of a ledger database by chunks in worker processes (issue 16):
`keys.ledger_verify.verify_source` over `nrm.audit.DatabaseRows` finds what `verify_rows`
finds, at the same index and with the same message, however deep in the ledger it is and
whether or not it falls on a chunk's edge; restore declarations are checked as before."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.ledger_store import LedgerStore
from keys.audit import AuditEvent, sign_event
from keys.checkpoint import Checkpoint, ledger_origin
from keys.directory import AgencyEntry, Directory
from keys.identity import AgencyKeys
from keys.ledger_entry import LedgerEntry
from keys.ledger_verify import LedgerVerificationError, verify_rows, verify_source
from keys.merkle import leaf_hash, root_of
from keys.restore import RestoreDeclaration
from nrm.audit import DatabaseRows

N = 3000  # events: 11 chunks of 256 and a partial one
LEVEL = 8  # 256 rows per chunk
T0 = 1_767_225_600
ORIGIN = ledger_origin("national")


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Directory]]:
    """A ledger database of N real signed events of two agencies, and its directory."""
    folder = tmp_path_factory.mktemp("ledger")
    agencies = [AgencyKeys.generate(agency=a, name=a) for a in ("police-north", "ngo-safehouse")]
    directory = Directory(
        version=1,
        expires=T0 + 10**8,
        agencies=tuple(AgencyEntry.of(k.public, ("police",), valid_from=0) for k in agencies),
    )
    store = LedgerStore(folder / "ledger.db")
    with store.transaction():
        for i in range(N):
            sender, other = agencies[i % 2], agencies[1 - i % 2]
            event = AuditEvent(
                event_id=f"{i:032x}",
                agency=sender.agency,
                kind="referral.sent" if i % 3 else "receipt.received",
                time=T0 + i,
                referral_id=f"{i // 4:032x}",
                counterpart=other.agency,
                labels=(("urgency", "routine"),),
            )
            signed = sign_event(event, sender.signing_key)
            leaf = LedgerEntry(index=i, appended_at=T0 + i + 1, signed_event=signed).encode()
            store.insert_entry(i, leaf, event, 1)
    store.close()
    return folder / "ledger.db", {1: directory}


def _leaves(db: Path) -> list[bytes]:
    with sqlite3.connect(db) as c:
        return [bytes(r[0]) for r in c.execute("SELECT leaf FROM entries ORDER BY idx")]


def _checkpoint(db: Path, size: int) -> Checkpoint:
    root = root_of([leaf_hash(leaf) for leaf in _leaves(db)[:size]])
    return Checkpoint(origin=ORIGIN, size=size, root=root, timestamp=T0 + N)


def _both(
    db: Path,
    directories: dict[int, Directory],
    checkpoint: Checkpoint,
    restores: tuple[RestoreDeclaration, ...] = (),
) -> tuple[int | LedgerVerificationError, int | LedgerVerificationError]:
    """(what 2 workers by chunks found, what `verify_rows` over every row found): the count
    of entries, or the error raised."""
    found: list[int | LedgerVerificationError] = []
    rows = DatabaseRows(db, LedgerStore(db, readonly=True).size())
    runs: list[Callable[[], int]] = [
        lambda: verify_source(
            rows,
            count=len(rows),
            directories=directories,
            checkpoint=checkpoint,
            restores=restores,
            workers=2,
            chunk_level=LEVEL,
        ),
        lambda: verify_rows(
            list(rows), directories=directories, checkpoint=checkpoint, restores=restores
        ),
    ]
    for run in runs:
        try:
            found.append(run())
        except LedgerVerificationError as e:
            found.append(e)
    return found[0], found[1]


def _same_failure(parallel: object, serial: object) -> LedgerVerificationError:
    assert isinstance(parallel, LedgerVerificationError), parallel
    assert isinstance(serial, LedgerVerificationError), serial
    assert (parallel.index, str(parallel)) == (serial.index, str(serial))
    return parallel


def test_workers_verify_what_one_process_verifies(
    ledger: tuple[Path, dict[int, Directory]],
) -> None:
    """An intact ledger verifies by chunks with the checkpoint at its end, inside a chunk or
    on a chunk's edge, and the progress reported reaches every entry."""
    db, directories = ledger
    for size in (N, 1000, 1024):
        assert _both(db, directories, _checkpoint(db, size)) == (N, N)
    seen: list[int] = []
    rows = DatabaseRows(db, N)
    verify_source(
        rows,
        count=N,
        directories=directories,
        checkpoint=_checkpoint(db, N),
        progress=seen.append,
        workers=2,
        chunk_level=LEVEL,
    )
    assert seen == sorted(seen) and seen[-1] == N


def _flip_signature(c: sqlite3.Connection, k: int) -> None:
    (leaf,) = c.execute("SELECT leaf FROM entries WHERE idx = ?", (k,)).fetchone()
    c.execute("UPDATE entries SET leaf = ? WHERE idx = ?", (leaf[:-1] + bytes([leaf[-1] ^ 1]), k))


TAMPERING: list[tuple[str, Callable[[sqlite3.Connection], None], int, str]] = [
    ("signature-deep", lambda c: _flip_signature(c, 2345), 2345, "event does not verify"),
    (
        "two-tampered-first-named",
        lambda c: (_flip_signature(c, 2900), _flip_signature(c, 1500)),
        1500,
        "event does not verify",
    ),
    (
        "column",
        lambda c: c.execute("UPDATE entries SET time = time - 1 WHERE idx = 1777"),
        1777,
        "columns do not match",
    ),
    (
        "delete-on-a-chunk-edge",
        lambda c: c.execute("DELETE FROM entries WHERE idx = 1024"),
        1024,
        "missing; the next row is 1025",
    ),
    (
        "delete-a-whole-chunk",
        lambda c: c.execute("DELETE FROM entries WHERE idx >= 1280 AND idx < 1536"),
        1280,
        "missing; the next row is 1536",
    ),
    (
        "delete-the-last",
        lambda c: c.execute("DELETE FROM entries WHERE idx = ?", (N - 1,)),
        N - 1,
        f"missing; the checkpoint has {N}",
    ),
    (
        "negative-index",
        lambda c: c.execute("UPDATE entries SET idx = -7 WHERE idx = 2999"),
        0,
        "missing; the next row is -7",
    ),
    (
        "moved-across-chunks",
        lambda c: (
            c.execute("UPDATE entries SET idx = -1 WHERE idx = 300"),
            c.execute("UPDATE entries SET idx = 300 WHERE idx = 2600"),
            c.execute("UPDATE entries SET idx = 2600 WHERE idx = -1"),
        ),
        300,
        "leaf belongs at index 2600",
    ),
]


@pytest.mark.parametrize(
    ("tamper", "index", "reason"),
    [pytest.param(t, i, r, id=name) for name, t, i, r in TAMPERING],
)
def test_tampering_deep_in_the_ledger_is_named_at_its_index(
    ledger: tuple[Path, dict[int, Directory]],
    tmp_path: Path,
    tamper: Callable[[sqlite3.Connection], None],
    index: int,
    reason: str,
) -> None:
    """A row changed, removed or moved anywhere in a ledger of 12 chunks is named by the
    workers at the index and with the message `verify_rows` gives."""
    db = Path(shutil.copy(ledger[0], tmp_path / "copy.db"))
    checkpoint = _checkpoint(db, N)
    with sqlite3.connect(db) as c:
        tamper(c)
    failure = _same_failure(*_both(db, ledger[1], checkpoint))
    assert failure.index == index and reason in str(failure), failure


def _restore(seq: int, size: int, root: bytes) -> RestoreDeclaration:
    return RestoreDeclaration(
        origin=ORIGIN,
        seq=seq,
        restored_size=size,
        restored_root=root,
        previous_size=None,
        previous_root=None,
        declared_at=T0 + N,
    )


def test_restore_declarations_are_checked_inside_and_on_edges_of_chunks(
    ledger: tuple[Path, dict[int, Directory]],
) -> None:
    """Declarations naming true prefixes (inside a chunk, on its edge, empty) pass; one whose
    root is not the prefix's fails in both paths with the same message, unless a later
    restore went back further."""
    db, directories = ledger
    hashes = [leaf_hash(leaf) for leaf in _leaves(db)]
    checkpoint = _checkpoint(db, N)
    good = (_restore(1, 0, root_of([])), _restore(2, 1500, root_of(hashes[:1500])))
    good += (_restore(3, 2048, root_of(hashes[:2048])),)
    assert _both(db, directories, checkpoint, good) == (N, N)
    wrong = _restore(4, 1700, root_of(hashes[:1699]))
    failure = _same_failure(*_both(db, directories, checkpoint, (*good, wrong)))
    assert failure.index is None
    assert "restore 4 declares a tree that is not this ledger's first entries" in str(failure)
    # The tree restore 4 named was replaced by restore 5's, which went back before it.
    later = _restore(5, 1500, root_of(hashes[:1500]))
    assert _both(db, directories, checkpoint, (*good, wrong, later)) == (N, N)
