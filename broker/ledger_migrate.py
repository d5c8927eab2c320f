"""Re-sign, once, what a ledger database stored before checkpoints followed C2SP
(docs/PROTOCOL.md §9.3, "Earlier databases").

Before, the origin was `nrm-exchange/ledger/v1/<name>`, the checkpoint key name was `<name>`
and the time was a `timestamp <t>` extension line. Verifiers now know only the current format
(origin `<name>/nrm-ledger`, key name = origin, time in a tlog-cosignature), so the ledger,
which holds the key, re-signs its stored history when it opens the database:

- a stored checkpoint is re-signed for the same size and root, cosigned at the time it was
  first signed (the `timestamp` column), not at the migration: the statement "as of t the
  tree head was (size, root)" stays the one made at t. Only a note that is byte for byte
  what the former format gives for its row (Ed25519 is deterministic) is replaced.
- a restore declaration that verifies under the former origin is re-signed with the current
  origin and every other field unchanged (its seq, sizes, roots and declared_at).

Anything else is left as it is, and counted in the log.
"""

from __future__ import annotations

import base64
import dataclasses

import structlog
from nacl.signing import SigningKey

from keys.checkpoint import Checkpoint, key_id, ledger_origin, sign_checkpoint
from keys.errors import UntrustedInputError
from keys.restore import sign_restore, verify_restore

from .ledger_store import LedgerStore

log = structlog.get_logger("nrm.ledger")

#: The origin of the former format was this prefix and the ledger's name.
LEGACY_ORIGIN_PREFIX = "nrm-exchange/ledger/v1/"


def legacy_note(name: str, size: int, root: bytes, timestamp: int, key: SigningKey) -> str:
    """The checkpoint note the former format gave for a row (and what tests make old data
    with)."""
    text = (
        f"{LEGACY_ORIGIN_PREFIX}{name}\n{size}\n{base64.b64encode(root).decode()}\n"
        f"timestamp {timestamp}\n"
    )
    blob = key_id(name, 0x01, key.verify_key) + key.sign(text.encode()).signature
    return f"{text}\n\u2014 {name} {base64.b64encode(blob).decode()}\n"


def migrate_legacy(store: LedgerStore, *, key: SigningKey, name: str) -> int:
    """Re-sign every stored checkpoint and restore declaration of the former format; returns
    how many were re-signed. Idempotent: a database in the current format is left alone."""
    origin = ledger_origin(name)
    legacy = LEGACY_ORIGIN_PREFIX + name
    migrated = skipped = 0
    with store.transaction():
        for size, root, timestamp, note in store.checkpoint_rows(legacy + "\n"):
            if note != legacy_note(name, size, root, timestamp, key):
                skipped += 1
                continue
            cp = Checkpoint(origin=origin, size=size, root=root, timestamp=timestamp)
            store.replace_checkpoint_note(size, sign_checkpoint(cp, key=key))
            migrated += 1
        for seq, data in store.restores():
            try:
                declaration = verify_restore(data, key=key.verify_key, origin=legacy)
            except UntrustedInputError:
                continue  # current format (or not the ledger's): left as it is
            current = dataclasses.replace(declaration, origin=origin)
            store.replace_restore_declaration(seq, sign_restore(current, key))
            migrated += 1
    if migrated or skipped:
        log.info("ledger_legacy_resigned", resigned=migrated, left=skipped)
    return migrated
