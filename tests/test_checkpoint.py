"""Signed ledger checkpoints (docs/PROTOCOL.md section 9.3): the C2SP tlog-checkpoint in a
signed-note with the ledger's Ed25519 signature and tlog-cosignature, round trip, strict refusal
of every tampering, and the signed-note key IDs."""

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
from keys.checkpoint import MAX_CHECKPOINT_BYTES, key_id, ledger_origin

ORIGIN = "ledger.test/nrm-ledger"
KEY = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(range(1, 33)))
CP = Checkpoint(origin=ORIGIN, size=1234, root=hashlib.sha256(b"root").digest(), timestamp=1700)
NOTE = sign_checkpoint(CP, key=KEY)
ROOT_B64 = base64.b64encode(CP.root).decode()
TEXT = NOTE[: NOTE.index("\n\n") + 1]
SIG_LINE, COSIG_LINE = NOTE[NOTE.index("\n\n") + 2 :].splitlines()


def verify(note: str) -> Checkpoint:
    return verify_checkpoint(note, key=KEY.verify_key, origin=ORIGIN)


def sig_line(text: str, *, key: SigningKey = KEY, name: str = ORIGIN) -> str:
    """A type 0x01 signature line over `text`."""
    blob = key_id(name, 0x01, key.verify_key) + key.sign(text.encode()).signature
    return f"\u2014 {name} {base64.b64encode(blob).decode()}\n"


def cosig_line(text: str, t: int, *, key: SigningKey = KEY, name: str = ORIGIN) -> str:
    """A type 0x04 tlog-cosignature line over `text` at time `t`."""
    message = f"cosignature/v1\ntime {t}\n{text}".encode()
    blob = key_id(name, 0x04, key.verify_key) + t.to_bytes(8, "big") + key.sign(message).signature
    return f"\u2014 {name} {base64.b64encode(blob).decode()}\n"


def resign(text: str, *, key: SigningKey = KEY, name: str = ORIGIN, t: int = 1700) -> str:
    """A note over arbitrary text, correctly signed: isolates the parser from the signature."""
    return f"{text}\n{sig_line(text, key=key, name=name)}{cosig_line(text, t, key=key, name=name)}"


def test_round_trip() -> None:
    """A signed checkpoint verifies back to the same value, and has the documented shape: three
    body lines, no extension line, two signature lines under the origin as key name."""
    assert verify(NOTE) == CP
    lines = NOTE.split("\n")
    assert lines[:4] == [ORIGIN, "1234", ROOT_B64, ""]
    assert lines[4].startswith(f"\u2014 {ORIGIN} ")
    assert lines[5].startswith(f"\u2014 {ORIGIN} ")
    assert lines[6:] == [""]
    assert resign(TEXT) == NOTE  # Ed25519 is deterministic: byte for byte the helper's note


def test_edge_values_round_trip() -> None:
    """Size 0, timestamp 0 and the largest size and time round-trip."""
    for cp in (
        Checkpoint(origin=ORIGIN, size=0, root=bytes(32), timestamp=0),
        Checkpoint(origin=ORIGIN, size=2**63 - 1, root=b"\xff" * 32, timestamp=2**63 - 1),
    ):
        assert verify(sign_checkpoint(cp, key=KEY)) == cp


def test_key_id_known_answer() -> None:
    """The key ID is the first 4 bytes of SHA-256(name || 0x0A || type || key), matching the
    Go sumdb/note example key `PeterNeumann+c74f20a3+ARpc2Qc...`; type 0x01 leads the
    signature, type 0x04 the cosignature, followed by the big-endian u64 time."""
    vkey = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    assert vkey[0] == 0x01
    assert key_id("PeterNeumann", 0x01, VerifyKey(vkey[1:])).hex() == "c74f20a3"
    pk = bytes(KEY.verify_key)
    plain = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + pk).digest()[:4]
    cosig = hashlib.sha256(ORIGIN.encode() + b"\n\x04" + pk).digest()[:4]
    assert key_id(ORIGIN, 0x01, KEY.verify_key) == plain != cosig
    blob = base64.b64decode(SIG_LINE.split(" ")[2])
    assert len(blob) == 4 + 64 and blob[:4] == plain
    KEY.verify_key.verify(TEXT.encode(), blob[4:])
    blob = base64.b64decode(COSIG_LINE.split(" ")[2])
    assert len(blob) == 4 + 8 + 64 and blob[:4] == cosig
    assert int.from_bytes(blob[4:12], "big") == 1700
    KEY.verify_key.verify(b"cosignature/v1\ntime 1700\n" + TEXT.encode(), blob[12:])


def test_cosignature_interop_vectors() -> None:
    """Our reading of tlog-cosignature/v1 matches transparency-dev/formats (note_cosigv1_test.go):
    its native type 0x04 vkey `remora.n621.de+da77ade7+BOvN...` has the key ID we derive, and
    its timestamped signature is 76 bytes with the time as a big-endian u64 after the key ID."""
    vkey = base64.b64decode("BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2")
    assert vkey[0] == 0x04
    assert key_id("remora.n621.de", 0x04, VerifyKey(vkey[1:])).hex() == "da77ade7"
    sig = base64.b64decode(
        "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJ"
        "XORmnFBOBA=="
    )
    assert len(sig) == 4 + 8 + 64 and int.from_bytes(sig[4:12], "big") == 1727964367


def test_signed_note_interop_vector() -> None:
    """The Go sumdb/note example signature verifies under our reading of signed-note: the
    message is the text up to and including its last newline, the key ID leads."""
    vkey = VerifyKey(base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[1:])
    text = (
        "If you think cryptography is the answer to your problem,\n"
        "then you don't know what your problem is.\n"
    )
    sig = base64.b64decode(
        "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
    )
    assert sig[:4] == key_id("PeterNeumann", 0x01, vkey)
    vkey.verify(text.encode(), sig[4:])


def test_ledger_origin() -> None:
    """The origin is the ledger's DNS-like name and `/nrm-ledger`; other names are refused."""
    assert ledger_origin("national") == "national/nrm-ledger"
    assert ledger_origin("nrm.gov.example") == "nrm.gov.example/nrm-ledger"
    long = ".".join(["x" * 63] * 3)  # 191 characters: its origin would not fit 200
    assert len(ledger_origin(long[:189])) == 200
    for bad in ("", "National", "a b", "a+b", "a/b", "-a", "a-", "a..b", "a_b", "x" * 64, long):
        with pytest.raises(ValueError):
            ledger_origin(bad)


def test_other_keys_signatures_are_ignored() -> None:
    """Signature lines by other keys (other names, or our name with another key ID: another
    key or another signature type) are ignored, before or after ours."""
    others = (
        sig_line(TEXT, key=OTHER, name="witness.example")
        + cosig_line(TEXT, 1800, key=OTHER, name="witness.example")
        + sig_line(TEXT, key=OTHER)
        + f"\u2014 {ORIGIN} {base64.b64encode(bytes(4 + 70)).decode()}\n"
    )
    assert verify(NOTE + others) == CP
    assert verify(f"{TEXT}\n{others}{SIG_LINE}\n{COSIG_LINE}\n") == CP


def _replace_line(index: int, value: str) -> Callable[[str], str]:
    def edit(note: str) -> str:
        lines = note.split("\n")
        lines[index] = value
        return "\n".join(lines)

    return edit


def _flip(line: str, at: int) -> str:
    name_part, blob = line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[at] ^= 1
    return f"{name_part} {base64.b64encode(bytes(raw)).decode()}"


def _body(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


# (scenario, note, expected error)
SCENARIOS: list[tuple[str, Callable[[], str], type[UntrustedInputError]]] = [
    (
        "forged signature: refused",
        lambda: f"{TEXT}\n{_flip(SIG_LINE, 10)}\n{COSIG_LINE}\n",
        BadSignatureError,
    ),
    (
        "forged cosignature: refused",
        lambda: f"{TEXT}\n{SIG_LINE}\n{_flip(COSIG_LINE, 20)}\n",
        BadSignatureError,
    ),
    (
        "cosignature time changed: refused",
        lambda: f"{TEXT}\n{SIG_LINE}\n{_flip(COSIG_LINE, 11)}\n",
        BadSignatureError,
    ),
    (
        "signature without the cosignature: refused (no signed time)",
        lambda: f"{TEXT}\n{SIG_LINE}\n",
        BadSignatureError,
    ),
    (
        "cosignature without the signature: refused",
        lambda: f"{TEXT}\n{COSIG_LINE}\n",
        BadSignatureError,
    ),
    (
        "two cosignatures by the ledger key: refused",
        lambda: NOTE + cosig_line(TEXT, 1800),
        MalformedError,
    ),
    ("two signatures by the ledger key: refused", lambda: NOTE + SIG_LINE + "\n", MalformedError),
    (
        "cosignature time above 2^63 - 1: refused",
        lambda: f"{TEXT}\n{SIG_LINE}\n{cosig_line(TEXT, 2**63)}",
        MalformedError,
    ),
    (
        "signed by another key under our name: refused (key ID differs, so ignored)",
        lambda: resign(TEXT, key=OTHER),
        BadSignatureError,
    ),
    (
        "signed by our key under another name: refused",
        lambda: resign(TEXT, name="other.name"),
        BadSignatureError,
    ),
    ("tampered size: refused", lambda: NOTE.replace("\n1234\n", "\n1235\n"), BadSignatureError),
    (
        "tampered root: refused",
        lambda: NOTE.replace(ROOT_B64, base64.b64encode(bytes(32)).decode()),
        BadSignatureError,
    ),
    (
        "validly signed for another origin: refused",
        lambda: resign(_body("other.test/nrm-ledger", "1234", ROOT_B64)),
        BadSignatureError,
    ),
    ("missing signatures: refused", lambda: TEXT + "\n", BadSignatureError),
    ("no signature block at all: refused", lambda: TEXT, MalformedError),
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

# Bodies that are correctly signed and cosigned but not canonical: the parser alone must
# refuse them.
BAD_BODIES: list[tuple[str, str]] = [
    ("size with a leading zero", _body(ORIGIN, "01234", ROOT_B64)),
    ("size with a plus sign", _body(ORIGIN, "+1234", ROOT_B64)),
    ("negative size", _body(ORIGIN, "-1", ROOT_B64)),
    ("size too large", _body(ORIGIN, str(2**63), ROOT_B64)),
    ("root without padding", _body(ORIGIN, "1234", ROOT_B64.rstrip("="))),
    ("root of 31 bytes", _body(ORIGIN, "1234", base64.b64encode(bytes(31)).decode())),
    (
        "root in URL-safe base64",
        _body(ORIGIN, "1234", base64.urlsafe_b64encode(b"\xfb" * 32).decode()),
    ),
    ("missing root line", _body(ORIGIN, "1234")),
    ("the former timestamp extension line", _body(ORIGIN, "1234", ROOT_B64, "timestamp 1700")),
    ("any extension line", _body(ORIGIN, "1234", ROOT_B64, "color blue")),
    ("trailing space on the size", _body(ORIGIN, "1234 ", ROOT_B64)),
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
    """The helper used above produces notes that do verify when the body is canonical, with
    the time of the cosignature."""
    assert verify(resign(TEXT, t=99)) == Checkpoint(ORIGIN, CP.size, CP.root, 99)


def test_signing_misuse_is_a_value_error() -> None:
    """Bad values or origins (the origin is the key name) from the caller are ValueErrors."""
    for cp in (
        Checkpoint("", 1, CP.root, 1),
        Checkpoint("a\nb", 1, CP.root, 1),
        Checkpoint("with space", 1, CP.root, 1),
        Checkpoint("with+plus", 1, CP.root, 1),
        Checkpoint(ORIGIN, -1, CP.root, 1),
        Checkpoint(ORIGIN, 1, CP.root[:31], 1),
        Checkpoint(ORIGIN, 1, CP.root, -1),
        Checkpoint(ORIGIN, 1, CP.root, 2**63),
    ):
        with pytest.raises(ValueError):
            sign_checkpoint(cp, key=KEY)
