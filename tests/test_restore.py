"""Ledger restore declarations (keys/restore.py, PROTOCOL.md §9.4): signed, strictly decoded,
refused with a distinct reason when altered, re-addressed or malformed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from nacl.signing import SigningKey

from keys import codec
from keys.errors import UntrustedInputError
from keys.identity import signing_kid
from keys.merkle import EMPTY_ROOT
from keys.restore import LABEL, RestoreDeclaration, sign_restore, verify_restore

KEY = SigningKey(b"\x01" * 32)
ORIGIN = "national/nrm-ledger"
DECLARATION = RestoreDeclaration(
    origin=ORIGIN,
    seq=2,
    restored_size=10,
    restored_root=b"\x02" * 32,
    previous_size=14,
    previous_root=b"\x03" * 32,
    declared_at=1_767_225_600,
)


def resigned(fields: list[object]) -> bytes:
    body = codec.pack(fields)
    sig = KEY.sign(LABEL + b"\x00" + body).signature
    return codec.pack([1, body, signing_kid(KEY.verify_key), sig])


def fields() -> list[object]:
    return list(codec.unpack(DECLARATION.encode(), max_bytes=1024))


def test_round_trip_with_and_without_the_replaced_tree() -> None:
    """A signed declaration verifies to exactly what was signed, with or without the
    replaced tree's size and root."""
    assert verify_restore(sign_restore(DECLARATION, KEY), key=KEY.verify_key, origin=ORIGIN) == (
        DECLARATION
    )
    lost = dataclasses.replace(DECLARATION, previous_size=None, previous_root=None)
    assert verify_restore(sign_restore(lost, KEY), key=KEY.verify_key, origin=ORIGIN) == lost


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _with(index: int, value: object) -> Callable[[], bytes]:
    def make() -> bytes:
        f = fields()
        f[index] = value
        return resigned(f)

    return make


REFUSALS: list[tuple[str, Callable[[], bytes], str]] = [
    ("signature byte flipped", lambda: _flip_last(sign_restore(DECLARATION, KEY)), "bad-signature"),
    (
        "signed by another key",
        lambda: sign_restore(DECLARATION, SigningKey(b"\x09" * 32)),
        "bad-signature",
    ),
    (
        "for another ledger",
        lambda: sign_restore(dataclasses.replace(DECLARATION, origin=ORIGIN + "x"), KEY),
        "bad-signature",
    ),
    ("previous size below the restored size", _with(5, 9), "malformed"),
    ("previous size without previous root", _with(6, None), "malformed"),
    ("seq 0", _with(2, 0), "malformed"),
    ("root of 31 bytes", _with(4, b"\x02" * 31), "malformed"),
    (
        "an empty tree with another root",
        lambda: resigned([*fields()[:3], 0, b"\x02" * 32, None, None, 1]),
        "malformed",
    ),
    ("a ninth field", lambda: resigned([*fields(), 0]), "malformed"),
    ("size as a bool", _with(3, True), "malformed"),
    ("version 2", _with(0, 2), "malformed"),
    ("trailing byte", lambda: sign_restore(DECLARATION, KEY) + b"\x00", "malformed"),
    ("too large", lambda: b"\x00" * 2048, "malformed"),
]


@pytest.mark.parametrize(
    ("make", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusals_have_their_reason(make: Callable[[], bytes], reason: str) -> None:
    """Each altered or malformed declaration is refused with its own reason code."""
    with pytest.raises(UntrustedInputError) as caught:
        verify_restore(make(), key=KEY.verify_key, origin=ORIGIN)
    assert caught.value.reason == reason


def test_an_empty_restored_tree_has_the_empty_root() -> None:
    """A restore back to nothing names the empty tree's root, and only it."""
    empty = dataclasses.replace(DECLARATION, restored_size=0, restored_root=EMPTY_ROOT)
    assert verify_restore(sign_restore(empty, KEY), key=KEY.verify_key, origin=ORIGIN) == empty
    with pytest.raises(ValueError, match="empty root"):
        dataclasses.replace(DECLARATION, restored_size=0)
