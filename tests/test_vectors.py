"""Every envelope test vector through the real decoder; the generator reproduces them exactly."""

from __future__ import annotations

import base64
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.public import PrivateKey
from nacl.signing import VerifyKey

from agents import inbound
from agents.messages import REFUSAL, Refusal
from agents.resend import ResendRequest
from keys import DEFAULT_LIMITS, UnknownKeyError, UntrustedInputError, open_envelope
from keys.identity import encryption_kid, signing_kid
from keys.restore import verify_restore

VECTORS = Path(__file__).parent / "vectors"
FILES = sorted(VECTORS.glob("envelope-*.txt"))


@dataclass(frozen=True)
class OneSigner:
    """Trusts exactly one signing key of one agency (a `SignerKeys`)."""

    agency: str
    key: VerifyKey

    def signing_key(self, agency: str, kid: str, *, at: int) -> VerifyKey:
        if agency != self.agency or kid != signing_kid(self.key):
            raise UnknownKeyError(f"key {kid} of {agency} is not trusted")
        return self.key


def parse(path: Path) -> tuple[dict[str, str], bytes]:
    head, _, tail = path.read_text(encoding="utf-8").partition("\n\n")
    fields = dict(line.split(": ", 1) for line in head.splitlines())
    return fields, base64.b64decode("".join(tail.split()), validate=True)


def test_vectors_exist() -> None:
    """The committed vector set covers ok and failure outcomes."""
    outcomes = {parse(path)[0]["expect"] for path in FILES}
    assert len(FILES) >= 15
    assert {"ok", "bad-signature", "undecryptable", "malformed", "expired"} <= outcomes


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_vector(path: Path) -> None:
    """Opening the vector's envelope gives exactly the outcome its `expect` line states."""
    fields, data = parse(path)
    secret = PrivateKey(bytes.fromhex(fields["recipient_x25519_secret"]))
    signers = OneSigner(
        fields["sender_agency"], VerifyKey(bytes.fromhex(fields["sender_ed25519_public"]))
    )

    def open_it() -> bytes:
        return open_envelope(
            data,
            me=fields["recipient"],
            decryption_keys={encryption_kid(secret.public_key): secret},
            signers=signers,
            now=int(fields["now"]),
        ).body

    if fields["expect"] == "ok":
        assert open_it() == bytes.fromhex(fields["body"])
    else:
        with pytest.raises(UntrustedInputError) as caught:
            open_it()
        assert caught.value.reason == fields["expect"]


RESTORE_FILES = sorted(VECTORS.glob("restore-*.txt"))


@pytest.mark.parametrize("path", RESTORE_FILES, ids=[p.stem for p in RESTORE_FILES])
def test_restore_vector(path: Path) -> None:
    """Verifying the vector's restore declaration gives exactly its `expect` outcome and,
    when ok, exactly its fields."""
    fields, data = parse(path)
    key = VerifyKey(bytes.fromhex(fields["ledger_ed25519_public"]))
    if fields["expect"] != "ok":
        with pytest.raises(UntrustedInputError) as caught:
            verify_restore(data, key=key, origin=fields["origin"])
        assert caught.value.reason == fields["expect"]
        return
    d = verify_restore(data, key=key, origin=fields["origin"])
    for name in ("seq", "restored_size", "restored_root", "previous_size", "previous_root"):
        value = getattr(d, name)
        shown = "nil" if value is None else value.hex() if isinstance(value, bytes) else str(value)
        assert shown == fields[name], name


RESEND_FILES = sorted(VECTORS.glob("resend-request-*.txt"))


@pytest.mark.parametrize("path", RESEND_FILES, ids=[p.stem for p in RESEND_FILES])
def test_resend_request_vector(path: Path) -> None:
    """Decoding the vector's resend request body gives exactly its `expect` outcome and,
    when ok, exactly its fields."""
    fields, body = parse(path)
    if fields["expect"] != "ok":
        with pytest.raises(UntrustedInputError) as caught:
            ResendRequest.decode(body)
        assert caught.value.reason == fields["expect"]
        return
    request = ResendRequest.decode(body)
    assert request.since == int(fields["since"])
    assert ",".join(request.have) == fields["have"]


REFUSAL_FILES = sorted(VECTORS.glob("refusal-*.txt"))


@pytest.mark.parametrize("path", REFUSAL_FILES, ids=[p.stem for p in REFUSAL_FILES])
def test_refusal_vector(path: Path) -> None:
    """The receiver's checks of a refusal body (agents/inbound.py) give exactly the vector's
    `expect` outcome and, when ok, exactly its fields."""
    fields, body = parse(path)
    if fields["expect"] != "ok":
        with pytest.raises(UntrustedInputError) as caught:
            inbound.check(REFUSAL, body, roles={"police"}, limits=DEFAULT_LIMITS)
        assert caught.value.reason == fields["expect"]
        return
    refusal = inbound.check(REFUSAL, body, roles={"police"}, limits=DEFAULT_LIMITS)
    assert refusal == Refusal(
        fields["message_id"], fields["envelope_hash"], fields["reason"], int(fields["refused_at"])
    )


def test_generator_reproduces_vectors(tmp_path: Path) -> None:
    """Running the generator again writes byte-identical files, and no others."""
    subprocess.run(
        [sys.executable, str(VECTORS / "generate.py"), str(tmp_path)], check=True, timeout=60
    )
    fresh = sorted(tmp_path.glob("*.txt"))
    committed = sorted(VECTORS.glob("*.txt"))
    assert [p.name for p in fresh] == [p.name for p in committed]
    assert len(RESTORE_FILES) >= 4 and len(RESEND_FILES) >= 4 and len(REFUSAL_FILES) >= 6
    for new, old in zip(fresh, committed, strict=True):
        assert new.read_bytes() == old.read_bytes(), new.name
