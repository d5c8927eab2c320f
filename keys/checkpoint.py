"""Signed ledger checkpoints (docs/PROTOCOL.md section 9.4): a C2SP tlog-checkpoint body in a
C2SP signed-note, signed with Ed25519 (signature type 0x01).

    <origin>\\n
    <tree size, decimal>\\n
    <base64 root hash>\\n
    timestamp <unix seconds>\\n
    \\n
    — <key name> <base64(key hash || 64-byte signature)>\\n

Domain separation: signed-note signs the note text as it is, with no label of its own. The
origin line (the ledger uses `nrm-exchange/ledger/v1/<ledger name>`) is the first signed line
and is checked against the expected origin, so it plays the role the `nrm/v1/...` labels play
for our other signatures: a checkpoint signature can never be mistaken for anything else, and
a checkpoint of one ledger is never accepted for another.

One strict decoder: exact line structure, canonical numbers and base64, bounded size. Pure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError as NaclBadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .errors import BadSignatureError, MalformedError

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "Checkpoint",
    "key_hash",
    "sign_checkpoint",
    "verify_checkpoint",
]

#: Largest signed checkpoint note accepted, checked before parsing (a body plus a handful of
#: signature lines fits in well under 1 KB).
MAX_CHECKPOINT_BYTES = 8192
#: Most signature lines accepted on one note.
MAX_SIGNATURES = 16
#: signed-note signature type of Ed25519.
ED25519_TYPE = 0x01
#: Prefix of every signature line: the em dash U+2014 and a space.
SIG_PREFIX = "\u2014 "

_HASH_SIZE = 32
_MAX_SIZE = (1 << 63) - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: the ledger named by `origin` had `size` leaves with root `root` at
    `timestamp` (Unix seconds)."""

    origin: str
    size: int
    root: bytes
    timestamp: int


def _check_key_name(key_name: str) -> None:
    # signed-note: non-empty, no Unicode spaces, no "+".
    if not key_name or "+" in key_name or any(c.isspace() for c in key_name):
        raise ValueError("a key name is non-empty, without spaces or '+'")
    if not key_name.isprintable():
        raise ValueError("a key name has no control characters")


def key_hash(key_name: str, key: VerifyKey) -> bytes:
    """signed-note key hash: the first 4 bytes of SHA-256(key name || 0x0A || 0x01 || key)."""
    _check_key_name(key_name)
    material = key_name.encode() + b"\n" + bytes([ED25519_TYPE]) + bytes(key)
    return hashlib.sha256(material).digest()[:4]


def _body(cp: Checkpoint) -> str:
    if not cp.origin or not cp.origin.isprintable() or cp.origin != cp.origin.strip():
        raise ValueError("an origin is non-empty printable text without surrounding spaces")
    if not 0 <= cp.size <= _MAX_SIZE:
        raise ValueError("tree size out of range")
    if not 0 <= cp.timestamp <= _MAX_SIZE:
        raise ValueError("timestamp out of range")
    if len(cp.root) != _HASH_SIZE:
        raise ValueError(f"a root hash is {_HASH_SIZE} bytes")
    root = base64.b64encode(cp.root).decode()
    return f"{cp.origin}\n{cp.size}\n{root}\ntimestamp {cp.timestamp}\n"


def sign_checkpoint(cp: Checkpoint, *, key: SigningKey, key_name: str) -> str:
    """The signed-note text of `cp` with one signature by `key` under `key_name`."""
    text = _body(cp)
    sig = key.sign(text.encode()).signature
    blob = base64.b64encode(key_hash(key_name, key.verify_key) + sig).decode()
    return f"{text}\n{SIG_PREFIX}{key_name} {blob}\n"


def _decimal(value: str, what: str) -> int:
    if not _DECIMAL.fullmatch(value):
        raise MalformedError(f"{what} is not a canonical decimal")
    n = int(value)
    if n > _MAX_SIZE:
        raise MalformedError(f"{what} out of range")
    return n


def _b64(value: str, what: str) -> bytes:
    if not _BASE64.fullmatch(value) or len(value) % 4:
        raise MalformedError(f"{what} is not canonical base64")
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise MalformedError(f"{what} is not canonical base64") from e
    if base64.b64encode(raw).decode() != value:
        raise MalformedError(f"{what} is not canonical base64")
    return raw


def verify_checkpoint(note: str, *, key_name: str, key: VerifyKey, origin: str) -> Checkpoint:
    """Parse a signed checkpoint strictly and return it if it is for `origin` and carries a
    valid signature by `key` under `key_name`. Signatures by other keys are ignored.
    Raises `MalformedError` or `BadSignatureError`."""
    _check_key_name(key_name)
    if not origin:
        raise ValueError("the expected origin must not be empty")
    if len(note) > MAX_CHECKPOINT_BYTES:
        raise MalformedError("checkpoint too large")
    try:
        raw = note.encode()
    except UnicodeEncodeError as e:
        raise MalformedError("checkpoint is not valid UTF-8 text") from e
    if len(raw) > MAX_CHECKPOINT_BYTES:
        raise MalformedError("checkpoint too large")
    if any((c < 0x20 and c != 0x0A) or c == 0x7F for c in raw):
        raise MalformedError("checkpoint contains control characters")

    # The note text ends at the last "\n\n"; signature lines follow (signed-note).
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise MalformedError("not a signed note")
    text, sig_block = note[: split + 1], note[split + 2 :]
    lines = text.split("\n")[:-1]
    if len(lines) != 4 or any(line == "" for line in lines):
        raise MalformedError("a checkpoint has exactly four body lines")
    got_origin, size_line, root_line, ext_line = lines
    size = _decimal(size_line, "tree size")
    root = _b64(root_line, "root hash")
    if len(root) != _HASH_SIZE:
        raise MalformedError("root hash has the wrong length")
    if not ext_line.startswith("timestamp "):
        raise MalformedError("unknown checkpoint extension line")
    timestamp = _decimal(ext_line[len("timestamp ") :], "timestamp")

    sig_lines = sig_block.split("\n")[:-1]
    if not sig_lines:
        raise BadSignatureError("checkpoint carries no signature")
    if len(sig_lines) > MAX_SIGNATURES:
        raise MalformedError("too many signature lines")
    want_hash = key_hash(key_name, key)
    message = text.encode()
    verified = False
    for line in sig_lines:
        if not line.startswith(SIG_PREFIX):
            raise MalformedError("not a signature line")
        parts = line[len(SIG_PREFIX) :].split(" ")
        if len(parts) != 2 or not parts[0] or "+" in parts[0]:
            raise MalformedError("malformed signature line")
        name, blob = parts
        sig = _b64(blob, "signature")
        if len(sig) < 5:
            raise MalformedError("signature too short")
        if name != key_name or not hmac.compare_digest(sig[:4], want_hash):
            continue  # another key's signature: ignored (signed-note)
        if len(sig) != 4 + 64:
            raise BadSignatureError("Ed25519 signature has the wrong length")
        try:
            key.verify(message, sig[4:])
        except NaclBadSignatureError as e:
            raise BadSignatureError("checkpoint signature does not verify") from e
        verified = True
    if not verified:
        raise BadSignatureError(f"checkpoint not signed by {key_name}")
    # The origin is the domain-separation label: a checkpoint of another log is refused.
    if got_origin != origin:
        raise BadSignatureError("checkpoint is for another origin")
    return Checkpoint(origin=got_origin, size=size, root=root, timestamp=timestamp)
