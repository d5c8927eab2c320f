"""Signed ledger checkpoints (docs/PROTOCOL.md section 9.3): the C2SP tlog-checkpoint in a
signed-note, round trip, strict refusal of every tampering, and the signed-note key hash."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from nacl.signing import SigningKey, VerifyKey

from keys import (
    BadSignatureError,
    Checkpoint,
    MalformedError,
    UntrustedInputError,
    sign_checkpoint,
    verify_checkpoint,
)
from keys.checkpoint import MAX_CHECKPOINT_BYTES, key_hash

ORIGIN = "nrm-exchange/ledger/v1/test"
NAME = "ledger.test"
KEY = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(range(1, 33)))
CP = Checkpoint(origin=ORIGIN, size=1234, root=hashlib.sha256(b"root").digest(), timestamp=1700)
NOTE = sign_checkpoint(CP, key=KEY, key_name=NAME)
ROOT_B64 = base64.b64encode(CP.root).decode()


def verify(note: str) -> Checkpoint:
    return verify_checkpoint(note, key_name=NAME, key=KEY.verify_key, origin=ORIGIN)


def resign(text: str, *, key: SigningKey = KEY, name: str = NAME) -> str:
    """A note over arbitrary text, correctly signed: isolates the parser from the signature."""
    sig = key.sign(text.encode()).signature
    blob = base64.b64encode(key_hash(name, key.verify_key) + sig).decode()
    return f"{text}\n\u2014 {name} {blob}\n"


def test_round_trip() -> None:
    """A signed checkpoint verifies back to the same value, and has the documented shape."""
    assert verify(NOTE) == CP
    lines = NOTE.split("\n")
    assert lines[:5] == [ORIGIN, "1234", ROOT_B64, "timestamp 1700", ""]
    assert lines[5].startswith("\u2014 ledger.test ")
    assert lines[6:] == [""]


def test_edge_values_round_trip() -> None:
    """Size 0, timestamp 0 and the largest size round-trip."""
    for cp in (
        Checkpoint(origin=ORIGIN, size=0, root=bytes(32), timestamp=0),
        Checkpoint(origin=ORIGIN, size=2**63 - 1, root=b"\xff" * 32, timestamp=2**40),
    ):
        assert verify(sign_checkpoint(cp, key=KEY, key_name=NAME)) == cp


def test_key_hash_known_answer() -> None:
    """The key hash is the first 4 bytes of SHA-256(name || 0x0A || 0x01 || key), matching the
    Go sumdb/note example key `PeterNeumann+c74f20a3+ARpc2Qc...`, and leads every signature."""
    vkey = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    assert vkey[0] == 0x01
    assert key_hash("PeterNeumann", VerifyKey(vkey[1:])).hex() == "c74f20a3"
    pk = bytes(KEY.verify_key)
    expected = hashlib.sha256(NAME.encode() + b"\n\x01" + pk).digest()[:4]
    assert key_hash(NAME, KEY.verify_key) == expected
    blob = base64.b64decode(NOTE.split("\n")[5].split(" ")[2])
    assert len(blob) == 4 + 64 and blob[:4] == expected
    KEY.verify_key.verify(NOTE[: NOTE.index("\n\n") + 1].encode(), blob[4:])


def test_signed_note_interop_vector() -> None:
    """The Go sumdb/note example signature verifies under our reading of signed-note: the
    message is the text up to and including its last newline, the key hash leads."""
    vkey = VerifyKey(base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[1:])
    text = (
        "If you think cryptography is the answer to your problem,\n"
        "then you don't know what your problem is.\n"
    )
    sig = base64.b64decode(
        "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
    )
    assert sig[:4] == key_hash("PeterNeumann", vkey)
    vkey.verify(text.encode(), sig[4:])


def test_other_keys_signatures_are_ignored() -> None:
    """Signature lines by other keys (before or after ours) are ignored; ours suffices."""
    other_line = resign(NOTE[: NOTE.index("\n\n") + 1], key=OTHER, name="witness.example")
    other_sig = other_line.split("\n\n")[1]
    assert verify(NOTE + other_sig) == CP
    text, ours = NOTE.split("\n\n")
    assert verify(f"{text}\n\n{other_sig}{ours}") == CP


def _replace_line(index: int, value: str) -> Callable[[str], str]:
    def edit(note: str) -> str:
        lines = note.split("\n")
        lines[index] = value
        return "\n".join(lines)

    return edit


def _forge(note: str) -> str:
    text, sig_line = note.split("\n\n")
    name_part, blob = sig_line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[10] ^= 1
    return f"{text}\n\n{name_part} {base64.b64encode(bytes(raw)).decode()}\n"


def _body(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


# (scenario, note, expected error)
SCENARIOS: list[tuple[str, Callable[[], str], type[UntrustedInputError]]] = [
    ("forged signature: refused", lambda: _forge(NOTE), BadSignatureError),
    (
        "signed by another key under our name: refused (key hash differs, so ignored)",
        lambda: resign(NOTE[: NOTE.index("\n\n") + 1], key=OTHER),
        BadSignatureError,
    ),
    (
        "signed by our key under another name: refused",
        lambda: resign(NOTE[: NOTE.index("\n\n") + 1], name="other.name"),
        BadSignatureError,
    ),
    ("tampered size: refused", lambda: _replace_line(1, "1235")(NOTE), BadSignatureError),
    (
        "tampered root: refused",
        lambda: _replace_line(2, base64.b64encode(bytes(32)).decode())(NOTE),
        BadSignatureError,
    ),
    (
        "tampered origin: refused",
        lambda: _replace_line(0, ORIGIN + "x")(NOTE),
        BadSignatureError,
    ),
    (
        "tampered timestamp: refused",
        lambda: _replace_line(3, "timestamp 1701")(NOTE),
        BadSignatureError,
    ),
    (
        "validly signed for another origin: refused",
        lambda: sign_checkpoint(
            Checkpoint("nrm-exchange/ledger/v1/other", CP.size, CP.root, CP.timestamp),
            key=KEY,
            key_name=NAME,
        ),
        BadSignatureError,
    ),
    ("missing signature: refused", lambda: NOTE[: NOTE.index("\n\n") + 2], BadSignatureError),
    ("no signature block at all: refused", lambda: NOTE[: NOTE.index("\n\n") + 1], MalformedError),
    (
        "extra blank line before the signatures: refused",
        lambda: NOTE.replace("\n\n", "\n\n\n"),
        MalformedError,
    ),
    ("extra blank line at the end: refused", lambda: NOTE + "\n", MalformedError),
    ("blank line inside the body: refused", lambda: NOTE.replace("\n", "\n\n", 1), MalformedError),
    ("no final newline: refused", lambda: NOTE[:-1], MalformedError),
    ("CRLF line endings: refused", lambda: NOTE.replace("\n", "\r\n"), MalformedError),
    ("oversized note: refused", lambda: NOTE + "x" * MAX_CHECKPOINT_BYTES, MalformedError),
    (
        "garbage signature line: refused",
        lambda: NOTE + "\u2014 someone not-base64!\n",
        MalformedError,
    ),
    (
        "signature line without the em dash: refused",
        lambda: NOTE.replace("\u2014", "-"),
        MalformedError,
    ),
]

# Bodies that are correctly signed but not canonical: the parser alone must refuse them.
BAD_BODIES: list[tuple[str, str]] = [
    ("size with a leading zero", _body(ORIGIN, "01234", ROOT_B64, "timestamp 1700")),
    ("size with a plus sign", _body(ORIGIN, "+1234", ROOT_B64, "timestamp 1700")),
    ("negative size", _body(ORIGIN, "-1", ROOT_B64, "timestamp 1700")),
    ("size too large", _body(ORIGIN, str(2**63), ROOT_B64, "timestamp 1700")),
    ("timestamp with a leading zero", _body(ORIGIN, "1234", ROOT_B64, "timestamp 01700")),
    ("timestamp with a plus sign", _body(ORIGIN, "1234", ROOT_B64, "timestamp +1700")),
    ("timestamp with two spaces", _body(ORIGIN, "1234", ROOT_B64, "timestamp  1700")),
    ("root without padding", _body(ORIGIN, "1234", ROOT_B64.rstrip("="), "timestamp 1700")),
    (
        "root of 31 bytes",
        _body(ORIGIN, "1234", base64.b64encode(bytes(31)).decode(), "timestamp 1700"),
    ),
    (
        "root in URL-safe base64",
        _body(ORIGIN, "1234", base64.urlsafe_b64encode(b"\xfb" * 32).decode(), "timestamp 1700"),
    ),
    ("missing timestamp line", _body(ORIGIN, "1234", ROOT_B64)),
    ("unknown extension line", _body(ORIGIN, "1234", ROOT_B64, "timestamp 1700", "color blue")),
    ("other extension instead of timestamp", _body(ORIGIN, "1234", ROOT_B64, "time 1700")),
    ("trailing space on the size", _body(ORIGIN, "1234 ", ROOT_B64, "timestamp 1700")),
]


@pytest.mark.parametrize(
    ("note", "error"),
    [pytest.param(make, error, id=name) for name, make, error in SCENARIOS],
)
def test_tampering_is_refused(note: Callable[[], str], error: type[UntrustedInputError]) -> None:
    """Each scenario is refused with its own error class."""
    with pytest.raises(error):
        verify(note())


@pytest.mark.parametrize("body", [pytest.param(b, id=n) for n, b in BAD_BODIES])
def test_non_canonical_bodies_are_refused_even_when_signed(body: str) -> None:
    """A body that is not canonical is malformed, however well signed."""
    with pytest.raises(MalformedError):
        verify(resign(body))


def test_resign_helper_is_sound() -> None:
    """The helper used above produces notes that do verify when the body is canonical."""
    assert verify(resign(NOTE[: NOTE.index("\n\n") + 1])) == CP


def test_signing_misuse_is_a_value_error() -> None:
    """Bad values or key names from the caller are ValueErrors, not signed."""
    for cp, name in (
        (Checkpoint("", 1, CP.root, 1), NAME),
        (Checkpoint("a\nb", 1, CP.root, 1), NAME),
        (Checkpoint(ORIGIN, -1, CP.root, 1), NAME),
        (Checkpoint(ORIGIN, 1, CP.root[:31], 1), NAME),
        (Checkpoint(ORIGIN, 1, CP.root, -1), NAME),
        (CP, "with space"),
        (CP, "with+plus"),
        (CP, ""),
    ):
        with pytest.raises(ValueError):
            sign_checkpoint(cp, key=KEY, key_name=name)
