"""The sealed envelope v1 (docs/PROTOCOL.md section 4): round trips, tampering, limits."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgpack
import nacl.bindings as sodium
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from keys import (
    AgencyKeys,
    BadSignatureError,
    DecryptionError,
    ExpiredError,
    Limits,
    MalformedError,
    NotAddressedToMeError,
    PeerBook,
    Recipient,
    UnknownKeyError,
    UntrustedInputError,
    codec,
    envelope_hash,
    open_envelope,
    seal,
    verify_outer,
)
from keys.envelope import UnsafeFixedRandomness, _inner_message, _outer_message

T0 = 1_767_225_600
TTL = 14 * 24 * 3600
BODY = b'{"type":"referral"}'
CONTENT_KEY = bytes(range(32))
NONCE = bytes(range(100, 124))

POLICE = AgencyKeys.generate(agency="police", name="Police")
SHELTER = AgencyKeys.generate(agency="shelter", name="Shelter")
LABOUR = AgencyKeys.generate(agency="labour-inspectorate", name="Labour Inspectorate")
PROSECUTOR = AgencyKeys.generate(agency="prosecutor", name="Prosecutor")
BOOK = PeerBook.of(k.public for k in (POLICE, SHELTER, LABOUR, PROSECUTOR))


def sealed(
    recipients: tuple[AgencyKeys, ...] = (SHELTER, LABOUR),
    *,
    body: bytes = BODY,
    created: int = T0,
    expires: int = T0 + TTL,
) -> bytes:
    return seal(
        sender=POLICE,
        recipients=[BOOK.recipient(r.agency) for r in recipients],
        kind="referral",
        body=body,
        created=created,
        expires=expires,
        unsafe_randomness=UnsafeFixedRandomness(
            message_id="00112233445566778899aabbccddeeff",
            content_key=CONTENT_KEY,
            nonce=NONCE,
            ephemeral_keys=[PrivateKey.generate() for _ in recipients],
        ),
    ).data


ENVELOPE = sealed()


def open_as(
    who: AgencyKeys, data: bytes, *, now: int = T0 + 60, limits: Limits | None = None
) -> bytes:
    return open_envelope(
        data,
        me=who.agency,
        decryption_keys={who.public.encryption_kid: who.encryption_key},
        signers=BOOK,
        now=now,
        **({} if limits is None else {"limits": limits}),
    ).body


def fields(data: bytes) -> list[object]:
    top: list[object] = codec.unpack(data, max_bytes=len(data))
    return top


def flip(data: bytes, part: bytes, index: int = 0) -> bytes:
    """`data` with one bit flipped in byte `index` of the unique occurrence of `part`."""
    assert data.count(part) == 1
    at = data.index(part) + index
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def resign(parts: list[object]) -> bytes:
    """Re-encode `parts` with a fresh outer signature by the police."""
    unsigned = codec.pack([*parts[:5], bytes(64)])
    sig = POLICE.signing_key.sign(_outer_message(unsigned[:-66])).signature
    return unsigned[:-64] + sig


def with_payload(payload: bytes) -> bytes:
    """ENVELOPE with its encrypted payload replaced, outer signature redone."""
    parts = fields(ENVELOPE)
    header = parts[1]
    assert isinstance(header, bytes)
    parts[4] = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        payload, header, NONCE, CONTENT_KEY
    )
    return resign(parts)


def test_round_trip_to_each_recipient() -> None:
    """Every recipient opens the same envelope to the same body, header and hash."""
    for who in (SHELTER, LABOUR):
        opened = open_envelope(
            ENVELOPE,
            me=who.agency,
            decryption_keys={who.public.encryption_kid: who.encryption_key},
            signers=BOOK,
            now=T0 + 60,
        )
        assert opened.body == BODY
        assert opened.header.sender == "police"
        assert opened.header.recipients == ("shelter", "labour-inspectorate")
        assert opened.envelope_hash == envelope_hash(ENVELOPE)


def test_random_sealing_round_trip() -> None:
    """Sealing with real randomness opens, and two seals of one body differ."""

    def seal_once() -> bytes:
        return seal(
            sender=POLICE,
            recipients=[BOOK.recipient("shelter")],
            kind="referral",
            body=BODY,
            created=int(time.time()),
            expires=int(time.time()) + TTL,
        ).data

    a, b = seal_once(), seal_once()
    assert a != b
    assert open_as(SHELTER, a, now=int(time.time())) == BODY


def test_verify_outer_authenticates_without_keys() -> None:
    """The outer signature alone authenticates the sender and yields the header."""
    header = verify_outer(ENVELOPE, signers=BOOK)
    assert header.sender == "police"
    assert header.message_id == "00112233445566778899aabbccddeeff"


def _stanza(i: int, j: int) -> Callable[[bytes], bytes]:
    def tamper(data: bytes) -> bytes:
        stanzas = fields(data)[2]
        assert isinstance(stanzas, list)
        return flip(data, stanzas[i][j], 3)

    return tamper


def _header_message_id(data: bytes) -> bytes:
    return flip(data, b"00112233445566778899aabbccddeeff", 0)  # '0' -> '1', still valid hex


def _header_created(data: bytes) -> bytes:
    header = codec.unpack(fields(data)[1], max_bytes=8192)  # type: ignore[arg-type]
    header[7] += 1
    parts = fields(data)
    parts[1] = codec.pack(header)
    return codec.pack(parts)  # the old outer signature stays


def _nonce(data: bytes) -> bytes:
    return flip(data, NONCE, 10)


def _ciphertext(data: bytes) -> bytes:
    ciphertext = fields(data)[4]
    assert isinstance(ciphertext, bytes)
    return flip(data, ciphertext, 20)


def _outer_sig(data: bytes) -> bytes:
    return data[:-10] + bytes([data[-10] ^ 0x80]) + data[-9:]


def _inner_sig(data: bytes) -> bytes:
    header = fields(data)[1]
    assert isinstance(header, bytes)
    sig = bytearray(POLICE.signing_key.sign(_inner_message(header, BODY)).signature)
    sig[5] ^= 0x01
    return with_payload(codec.pack([bytes(sig), BODY]))


def _ciphertext_resigned(data: bytes) -> bytes:
    parts = fields(data)
    assert isinstance(parts[4], bytes)
    ciphertext = bytearray(parts[4])
    ciphertext[0] ^= 0x01
    parts[4] = bytes(ciphertext)
    return resign(parts)


def _stanza_resigned(data: bytes) -> bytes:
    parts = fields(data)
    stanzas = parts[2]
    assert isinstance(stanzas, list)
    wrapped = bytearray(stanzas[0][1])
    wrapped[0] ^= 0x01
    stanzas[0][1] = bytes(wrapped)
    return resign(parts)


TAMPERING: dict[str, tuple[Callable[[bytes], bytes], type[UntrustedInputError]]] = {
    "header message id changed: outer signature fails": (_header_message_id, BadSignatureError),
    "header created time changed: outer signature fails": (_header_created, BadSignatureError),
    "first stanza's ephemeral key changed: outer signature fails": (
        _stanza(0, 0),
        BadSignatureError,
    ),
    "first stanza's wrapped key changed: outer signature fails": (_stanza(0, 1), BadSignatureError),
    "second stanza's ephemeral key changed: outer signature fails": (
        _stanza(1, 0),
        BadSignatureError,
    ),
    "second stanza's wrapped key changed: outer signature fails": (
        _stanza(1, 1),
        BadSignatureError,
    ),
    "nonce changed: outer signature fails": (_nonce, BadSignatureError),
    "body ciphertext changed: outer signature fails": (_ciphertext, BadSignatureError),
    "outer signature changed: it fails": (_outer_sig, BadSignatureError),
    "inner signature changed, outer redone: inner signature fails": (_inner_sig, BadSignatureError),
    "body ciphertext changed, outer redone: AEAD fails": (_ciphertext_resigned, DecryptionError),
    "my stanza changed, outer redone: unwrap fails": (_stanza_resigned, DecryptionError),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_rejected(case: str) -> None:
    """Each tampered part of a sealed envelope is refused with its own reason."""
    tamper, error = TAMPERING[case]
    data = tamper(ENVELOPE)
    assert data != ENVELOPE
    with pytest.raises(error):
        open_as(SHELTER, data)


def test_third_agency_cannot_open() -> None:
    """An agency that is not a recipient is told so, even holding its own valid key."""
    with pytest.raises(NotAddressedToMeError):
        open_as(PROSECUTOR, ENVELOPE)


def test_third_agency_cannot_claim_a_recipients_name() -> None:
    """Claiming to be a recipient without its key does not decrypt."""

    def open_as_shelter(kid: str, key: PrivateKey) -> None:
        open_envelope(ENVELOPE, me="shelter", decryption_keys={kid: key}, signers=BOOK, now=T0 + 60)

    with pytest.raises(NotAddressedToMeError):
        open_as_shelter(PROSECUTOR.public.encryption_kid, PROSECUTOR.encryption_key)
    with pytest.raises(DecryptionError):
        open_as_shelter(SHELTER.public.encryption_kid, PROSECUTOR.encryption_key)


def test_expired_rejected() -> None:
    """An envelope past its expiry plus the clock skew is refused as expired."""
    skew = Limits().clock_skew_seconds
    assert open_as(SHELTER, ENVELOPE, now=T0 + TTL + skew) == BODY
    with pytest.raises(ExpiredError):
        open_as(SHELTER, ENVELOPE, now=T0 + TTL + skew + 1)


def test_future_dated_rejected() -> None:
    """An envelope created further in the future than the clock skew is refused as expired."""
    skew = Limits().clock_skew_seconds
    assert open_as(SHELTER, ENVELOPE, now=T0 - skew) == BODY
    with pytest.raises(ExpiredError):
        open_as(SHELTER, ENVELOPE, now=T0 - skew - 1)


def test_unknown_sender_rejected() -> None:
    """A sender the receiver does not trust is refused before any decryption."""
    stranger = AgencyKeys.generate(agency="police", name="Impostor")
    data = seal(
        sender=stranger,
        recipients=[BOOK.recipient("shelter")],
        kind="referral",
        body=BODY,
        created=T0,
        expires=T0 + TTL,
    ).data
    with pytest.raises(UnknownKeyError):
        open_as(SHELTER, data)


def test_payload_must_be_signature_and_body() -> None:
    """A payload that is not [inner_sig, body] is malformed, never a crash."""
    for payload in (codec.pack(5), codec.pack(None), codec.pack([BODY]), codec.pack(b"xy")):
        with pytest.raises(MalformedError):
            open_as(SHELTER, with_payload(payload))


def test_body_over_the_limit_is_malformed_before_the_inner_signature() -> None:
    """A body of 786 433 bytes is refused at step 9 (`malformed`) whatever its signature; one
    of exactly 786 432 bytes passes step 9 and fails only the inner signature (§4.7)."""
    limit = Limits().max_body_bytes
    assert limit == 786_432
    with pytest.raises(MalformedError, match="body is larger"):
        open_as(SHELTER, with_payload(codec.pack([bytes(64), bytes(limit + 1)])))
    with pytest.raises(BadSignatureError):
        open_as(SHELTER, with_payload(codec.pack([bytes(64), bytes(limit)])))


def test_header_version_true_is_not_one() -> None:
    """A header whose version is msgpack `true` is malformed, though `True == 1` in Python."""
    parts = fields(ENVELOPE)
    header = codec.unpack(parts[1], max_bytes=8192)  # type: ignore[arg-type]
    header[0] = True
    parts[1] = codec.pack(header)
    with pytest.raises(MalformedError):
        open_as(SHELTER, resign(parts))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(ENVELOPE) - 1), st.integers(1, 255)), min_size=1, max_size=4
    ),
    st.integers(0, 2),
    st.binary(max_size=4),
)
def test_random_mutations_never_open(flips: list[tuple[int, int]], cut: int, suffix: bytes) -> None:
    """Random byte changes, truncations and appended bytes never open and raise only
    UntrustedInputError subclasses."""
    data = bytearray(ENVELOPE)
    for at, mask in flips:
        data[at] ^= mask
    mutated = bytes(data[: len(data) - cut]) + suffix
    if mutated == ENVELOPE:
        return
    for who in (SHELTER, LABOUR, PROSECUTOR):
        with pytest.raises(UntrustedInputError):
            open_as(who, mutated)


def test_size_limit_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """An envelope over the size limit is refused without being handed to the decoder."""
    limits = Limits(max_envelope_bytes=len(ENVELOPE) - 1)

    def must_not_decode(*args: object, **kwargs: object) -> object:
        raise AssertionError("the decoder ran on an oversized envelope")

    monkeypatch.setattr(msgpack, "unpackb", must_not_decode)
    with pytest.raises(MalformedError, match="limit"):
        open_as(SHELTER, ENVELOPE, limits=limits)


@pytest.mark.parametrize(
    "data",
    [
        b"\x91" * 100_000,  # arrays nested 100 000 deep
        b"\x96" + b"\x91" * 200_000 + b"\x00",
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 294 967 295 items
        b"\x96\x01\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
        b"\x96\x01\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
    ],
    ids=["depth-bomb", "depth-bomb-inside", "huge-array", "huge-bin", "huge-str"],
)
def test_decoder_bombs_are_malformed_quickly(data: bytes) -> None:
    """Depth bombs and huge length headers are refused as malformed in well under a second."""
    started = time.monotonic()
    with pytest.raises(MalformedError):
        open_as(SHELTER, data)
    assert time.monotonic() - started < 0.5


def test_seal_refuses_misuse() -> None:
    """Sealing with no recipients, a repeated recipient or an oversized body is a ValueError."""
    shelter = BOOK.recipient("shelter")
    bad: list[tuple[list[Recipient], bytes]] = [
        ([], BODY),
        ([shelter, shelter], BODY),
        ([shelter], bytes(Limits().max_body_bytes + 1)),
    ]
    for recipients, body in bad:
        with pytest.raises(ValueError):
            seal(
                sender=POLICE,
                recipients=recipients,
                kind="referral",
                body=body,
                created=T0,
                expires=T0 + TTL,
            )
