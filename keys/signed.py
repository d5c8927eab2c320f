"""The signed frame of audit events and restore declarations (docs/PROTOCOL.md §9.1, §9.4):

    signed    = canonical msgpack [1, body (bin), signer kid, signature]
    signature = Ed25519(signing key, label || 0x00 || body)

One encoder and one strict decoder for both; what the body holds, and which key must have
signed it, is the caller's. Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import nacl.exceptions
from nacl.signing import SigningKey, VerifyKey

from . import codec
from .codec import canonical_json, exact_b64, exact_members, load_canonical, to_b64
from .errors import BadSignatureError, MalformedError
from .identity import signing_kid

VERSION = 1

T = TypeVar("T")


def sign_frame(label: bytes, body: bytes, key: SigningKey) -> bytes:
    """`body` signed by `key` under the domain-separation `label`, framed."""
    signature = key.sign(label + b"\x00" + body).signature
    return codec.pack([VERSION, body, signing_kid(key.verify_key), signature])


def decode_frame(
    data: bytes, *, max_bytes: int, max_items: int, what: str, body_name: str
) -> tuple[bytes, str, bytes]:
    """(body, signer kid, signature), strictly decoded (size checked first); nothing
    verified. MalformedError names `[1, <body_name>, signer kid, signature]`."""
    raw = codec.unpack(data, max_bytes=max_bytes, max_items=max_items, what=what)
    if not (
        isinstance(raw, list)
        and len(raw) == 4
        and raw[0] == VERSION
        and not isinstance(raw[0], bool)
        and isinstance(raw[1], bytes)
        and isinstance(raw[2], str)
        and isinstance(raw[3], bytes)
        and len(raw[3]) == 64
    ):
        raise MalformedError(f"signed {what} must be [1, {body_name}, signer kid, signature]")
    _, body, kid, signature = raw
    return body, kid, signature


def check_signature(
    label: bytes, body: bytes, signature: bytes, key: VerifyKey, *, failure: str
) -> None:
    """Raise BadSignatureError(`failure`) unless `key` made `signature` over label||0||body."""
    verify_message(key, label + b"\x00" + body, signature, failure=failure)


def verify_message(key: VerifyKey, message: bytes, signature: bytes, *, failure: str) -> None:
    """Raise BadSignatureError(`failure`) unless `key` made `signature` over `message`."""
    try:
        key.verify(message, signature)
    except nacl.exceptions.BadSignatureError as e:
        raise BadSignatureError(failure) from e


def open_frame(
    data: bytes,
    *,
    label: bytes,
    what: str,
    max_bytes: int,
    max_items: int,
    decode: Callable[[bytes], T],
    signer: Callable[[T, str], VerifyKey],
) -> T:
    """The value of a signed frame whose body `decode` accepts, if the key `signer` names for
    that value and the frame's signer kid made the signature; MalformedError, what `signer`
    raises (UnknownKeyError, RevokedKeyError, ...), or BadSignatureError otherwise. The body
    is decoded before the key is looked up: the key depends on who the body says signed."""
    body, kid, signature = decode_frame(
        data, max_bytes=max_bytes, max_items=max_items, what=what, body_name=what
    )
    value = decode(body)
    key = signer(value, kid)
    check_signature(label, body, signature, key, failure=f"{what} signature does not verify")
    return value


# A signed file with exactly one signature (the service catalogue §8.8, the rapporteur's
# report §8.12, in the shape of the directory's §7.4):
#     {"signatures": [{"keyid", "sig"}], "signed": {...}}, canonical JSON,
#     sig = Ed25519(signing key, label || 0x00 || canonical JSON of signed)


def sign_file(label: bytes, signed: bytes, key: SigningKey) -> bytes:
    """The one-signature file of the canonical JSON `signed`, signed by `key` under `label`."""
    sig = key.sign(label + b"\x00" + signed).signature
    return canonical_json(
        {
            "signatures": [{"keyid": signing_kid(key.verify_key), "sig": to_b64(sig)}],
            "signed": load_canonical(signed, what="signed part"),
        }
    )


def decode_file(data: bytes, *, max_bytes: int, what: str) -> tuple[Any, bytes, str, bytes]:
    """(the signed JSON value, its canonical bytes, keyid, signature) of a one-signature file,
    strictly decoded (size first); nothing verified. MalformedError naming `what` otherwise;
    the signed value's own members are the caller's to check."""
    if len(data) > max_bytes:
        raise MalformedError(f"a signed {what} is at most {max_bytes} bytes")
    doc = load_canonical(bytes(data), what)
    try:
        outer = exact_members(doc, {"signatures", "signed"}, f"signed {what}")
        signatures = outer["signatures"]
        if not isinstance(signatures, list) or len(signatures) != 1:
            raise ValueError(f"a {what} carries exactly one signature")
        signature = exact_members(signatures[0], {"keyid", "sig"}, "signature")
        kid, sig = signature["keyid"], exact_b64(signature["sig"], 64, "sig")
        if not isinstance(kid, str):
            raise ValueError("keyid must be a string")
    except (ValueError, TypeError) as e:
        raise MalformedError(str(e)) from e
    return outer["signed"], canonical_json(outer["signed"]), kid, sig
