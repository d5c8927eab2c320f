"""Ledger restore declarations (docs/PROTOCOL.md §9.4): what the ledger's operator signs when
a ledger database is put back from a backup, so that agents tell a declared restore from a
rewrite.

    declaration = canonical msgpack [1, origin, seq, restored_size, restored_root,
                                     previous_size, previous_root, declared_at]
    signed      = canonical msgpack [1, declaration (bin), signer kid, signature]
    signature   = Ed25519(ledger signing key, "nrm/v1/ledger-restore" || 0x00 || declaration)

A declaration says: "restore number `seq` of the ledger `origin` put back a tree of
`restored_size` leaves with root `restored_root`; before it, the tree had `previous_size`
leaves with root `previous_root` (both nil when that tree was lost)". It covers exactly one
rollback: a checkpoint whose first `restored_size` leaves are the restored tree. One strict
decoder; verification returns the declaration or raises. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from nacl.signing import SigningKey, VerifyKey

from . import codec
from .errors import BadSignatureError, MalformedError
from .identity import signing_kid
from .merkle import EMPTY_ROOT, HASH_SIZE
from .signed import check_signature, decode_frame, sign_frame

VERSION = 1
LABEL = b"nrm/v1/ledger-restore"
#: Largest signed declaration accepted, checked before decoding.
MAX_SIGNED_RESTORE_BYTES = 1024

_MAX_UINT = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class RestoreDeclaration(codec.Encoded):
    """Restore `seq` of ledger `origin`: the tree went back to `restored_size` leaves with
    root `restored_root`, from `previous_size`/`previous_root` (None when unknown)."""

    #: The declaration's wire form (PROTOCOL.md).
    WIRE: ClassVar[codec.Record] = codec.Record(
        "restore declaration",
        VERSION,
        (
            "origin",
            "seq",
            "restored_size",
            "restored_root",
            "previous_size",
            "previous_root",
            "declared_at",
        ),
    )

    origin: str
    seq: int
    restored_size: int
    restored_root: bytes
    previous_size: int | None
    previous_root: bytes | None
    declared_at: int

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("invalid restore declaration: " + "; ".join(problems))


def sign_restore(declaration: RestoreDeclaration, key: SigningKey) -> bytes:
    """The signed declaration bytes."""
    return sign_frame(LABEL, declaration.encode(), key)


def verify_restore(data: bytes, *, key: VerifyKey, origin: str) -> RestoreDeclaration:
    """Decode a signed declaration strictly and return it if `key` signed it for `origin`.
    Raises `MalformedError` or `BadSignatureError`."""
    if not origin:
        raise ValueError("the expected origin must not be empty")
    body, kid, signature = decode_frame(
        data,
        max_bytes=MAX_SIGNED_RESTORE_BYTES,
        max_items=8,
        what="restore",
        body_name="declaration",
    )
    if not codec.HEX32.fullmatch(kid):
        raise MalformedError("signed restore must be [1, declaration, signer kid, signature]")
    declaration = _decode(body)
    if kid != signing_kid(key):
        raise BadSignatureError("restore declaration not signed by the ledger's key")
    failure = "restore declaration signature does not verify"
    check_signature(LABEL, body, signature, key, failure=failure)
    if declaration.origin != origin:
        raise BadSignatureError("restore declaration is for another ledger")
    return declaration


def _decode(body: bytes) -> RestoreDeclaration:
    return RestoreDeclaration.decoded(body, max_bytes=MAX_SIGNED_RESTORE_BYTES, max_items=8)


def _uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_UINT


def _problems(d: RestoreDeclaration) -> list[str]:
    p: list[str] = []
    if not (isinstance(d.origin, str) and 0 < len(d.origin) <= 200 and d.origin.isprintable()):
        p.append("origin must be printable text of 1-200 characters")
    if not (_uint(d.seq) and d.seq >= 1):
        p.append("seq must be a positive integer")
    if not _uint(d.restored_size):
        p.append("restored_size must be a non-negative integer")
    if not (isinstance(d.restored_root, bytes) and len(d.restored_root) == HASH_SIZE):
        p.append(f"restored_root must be {HASH_SIZE} bytes")
    elif d.restored_size == 0 and d.restored_root != EMPTY_ROOT:
        p.append("an empty restored tree has the empty root")
    if (d.previous_size is None) != (d.previous_root is None):
        p.append("previous_size and previous_root are both given or both nil")
    if d.previous_size is not None:
        if not _uint(d.previous_size):
            p.append("previous_size must be a non-negative integer")
        elif _uint(d.restored_size) and d.previous_size < d.restored_size:
            p.append("previous_size must not be below restored_size")
        if not (isinstance(d.previous_root, bytes) and len(d.previous_root) == HASH_SIZE):
            p.append(f"previous_root must be {HASH_SIZE} bytes")
    if not _uint(d.declared_at):
        p.append("declared_at must be Unix seconds")
    return p


__all__: Sequence[str] = [
    "LABEL",
    "MAX_SIGNED_RESTORE_BYTES",
    "RestoreDeclaration",
    "sign_restore",
    "verify_restore",
]
