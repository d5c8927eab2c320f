"""Putting a ledger database back from a backup, declared so that agents do not take it for
tampering and re-offer what it lost (docs/PROTOCOL.md §9.4, docs/RUNBOOK.md "Restore").

`restore_ledger` runs with the ledger stopped (it takes the database lock): it recomputes the
backup's tree from its leaves, checks that the backup is an earlier state of the database it
replaces (the replaced tree's first `restored_size` leaves have the backup's root), signs a
restore declaration with the ledger's key, and installs the backup with the declaration, the
replaced tree's nodes (so agents can check their last checkpoint of it) and a request to read
the audit stream again from its start. The replaced database files are kept beside it,
renamed, never deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from keys import AgencyKeys
from keys.restore import RestoreDeclaration, sign_restore
from runtime import clock
from runtime.durability import SUFFIXES, backup, install

from .ledger import LedgerConfig
from .ledger_store import install_restore, lock_database, recompute

log = structlog.get_logger("nrm.ledger")

#: The files SQLite keeps for a database in WAL mode.


class RestoreError(ValueError):
    """The restore was refused; nothing was changed."""


@dataclass(frozen=True, slots=True)
class RestoreResult:
    declaration: RestoreDeclaration
    kept: Path | None  # where the replaced database now is


def restore_ledger(
    config: LedgerConfig, source: Path, *, signer: AgencyKeys, replaced_lost: bool
) -> RestoreResult:
    """Install the backup `source` as the ledger database of `config`, declared.

    `replaced_lost`: the current database is gone or unreadable (a lost disk); the
    declaration then names no previous tree, and agents cannot check theirs against it.
    Raises `RestoreError` (or `LedgerBusyError` while the ledger runs)."""
    database = config.database
    if not source.is_file():
        raise RestoreError(f"{source} is not a file")
    if source.resolve() == database.resolve():
        raise RestoreError("the backup is the ledger database itself")
    lock = lock_database(database)
    try:
        present = database.exists()
        if present == replaced_lost:
            raise RestoreError(
                f"{database} exists: restore over it without --replaced-lost"
                if present
                else f"{database} does not exist: give --replaced-lost if it was lost"
            )
        try:
            restored, _ = recompute(source)
        except (ValueError, OSError) as e:
            raise RestoreError(f"the backup is not a readable ledger database: {e}") from e
        previous_size: int | None = None
        previous_root: bytes | None = None
        last_seq = restored.last_restore
        if present:
            try:
                current, prefix = recompute(database, prefix=restored.size)
            except (ValueError, OSError) as e:
                raise RestoreError(
                    f"the current database cannot be read ({e}); move it aside and give "
                    "--replaced-lost"
                ) from e
            if prefix != restored.root:
                raise RestoreError(
                    "the backup is not an earlier state of the current ledger database "
                    f"(its {restored.size} entries are not the first {restored.size} there)"
                )
            previous_size, previous_root = current.size, current.root
            last_seq = max(last_seq, current.last_restore)
        declaration = RestoreDeclaration(
            origin=config.origin,
            seq=last_seq + 1,
            restored_size=restored.size,
            restored_root=restored.root,
            previous_size=previous_size,
            previous_root=previous_root,
            declared_at=clock.now(),
        )
        signed = sign_restore(declaration, signer.signing_key)
        staged = database.with_name(f"{database.name}.restoring-{declaration.seq}")
        for suffix in SUFFIXES:
            Path(f"{staged}{suffix}").unlink(missing_ok=True)
        backup(source, staged)
        try:
            install_restore(
                staged,
                replaced=database if present else None,
                seq=declaration.seq,
                declaration=signed,
                restored_size=declaration.restored_size,
                previous_size=previous_size,
                declared_at=declaration.declared_at,
            )
        except BaseException:
            for suffix in (*SUFFIXES, ".lock"):
                Path(f"{staged}{suffix}").unlink(missing_ok=True)
            raise
        kept = database.with_name(f"{database.name}.before-restore-{declaration.seq}")
        install(staged, database, kept=kept, extra=(".lock",))
    finally:
        os.close(lock)
    log.info(
        "ledger_restored",
        seq=declaration.seq,
        restored_size=declaration.restored_size,
        previous_size=previous_size,
    )
    return RestoreResult(declaration=declaration, kept=kept if present else None)
