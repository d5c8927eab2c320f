"""The signed trust directory (docs/PROTOCOL.md section 7): roots, thresholds, rollback,
expiry, tampering, rotation and revocation, as named scenario tables."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from keys import (
    AgencyEntry,
    BadSignatureError,
    Directory,
    ExpiredMetadataError,
    ExpiredRootError,
    KeyEntry,
    MalformedError,
    NotEnoughSignaturesError,
    RetiredKeyError,
    RevokedKeyError,
    RollbackError,
    Root,
    TrustStore,
    UnknownKeyError,
    UntrustedInputError,
    WeakKeyError,
    encode_directory,
    encode_root,
    sign,
    signature_count,
    verify_directory,
    verify_initial_root,
    verify_root_chain,
    verify_root_update,
)
from keys.codec import canonical_json
from keys.directory import DIRECTORY_LABEL, TrustFeed, directory_from_files
from keys.identity import encryption_kid, signing_kid
from keys.ledger_verify import LedgerVerificationError, verify_directory_history

from .test_identity import WEAK_X25519_KEYS

T0 = 1_767_225_600
DAY = 24 * 3600
YEAR = 365 * DAY
NATS_KEY = "U" + "A" * 55
OTHER_NATS_KEY = "U" + "B" * 55

#: Administrator keys: 0-2 form root v1, 3-5 form root v2; 6 is nobody's.
ADMINS = [SigningKey(bytes([i + 1]) * 32) for i in range(7)]
STRANGER = ADMINS[6]


def root_of(version: int, admins: list[int], threshold: int, expires: int = T0 + YEAR) -> Root:
    return Root.of(
        version=version,
        expires=expires,
        threshold=threshold,
        keys=[ADMINS[i].verify_key for i in admins],
    )


def signed_by(document: bytes, *keys: SigningKey) -> bytes:
    data = document
    for key in keys:
        data = sign(data, key)
    if not keys:  # an empty signed file
        data = canonical_json({"signed": json.loads(document), "signatures": []})
    return data


def key_entry(public: bytes, *, signing: bool, valid_from: int = T0 - DAY) -> KeyEntry:
    kid = signing_kid_of(public) if signing else encryption_kid_of(public)
    return KeyEntry(kid, public, valid_from=valid_from, valid_until=None, status="active")


def signing_kid_of(public: bytes) -> str:
    return signing_kid(VerifyKey(public))


def encryption_kid_of(public: bytes) -> str:
    return encryption_kid(PublicKey(public))


AGENCY_SIGNING = {a: SigningKey(bytes([0x40 + i]) * 32) for i, a in enumerate(["ngo", "police"])}
AGENCY_ENCRYPTION = {a: PrivateKey(bytes([0x60 + i]) * 32) for i, a in enumerate(["ngo", "police"])}


def agency(agency_id: str, roles: tuple[str, ...]) -> AgencyEntry:
    return AgencyEntry(
        agency=agency_id,
        name=f"The {agency_id}",
        roles=roles,
        signing_keys=(key_entry(bytes(AGENCY_SIGNING[agency_id].verify_key), signing=True),),
        encryption_keys=(key_entry(bytes(AGENCY_ENCRYPTION[agency_id].public_key), signing=False),),
        nats_key=NATS_KEY,
    )


def directory(version: int = 2, expires: int = T0 + 30 * DAY) -> Directory:
    return Directory(
        version=version,
        expires=expires,
        agencies=(agency("police", ("police",)), agency("ngo", ("ngo", "coordinator"))),
    )


def fresh_store() -> TrustStore:
    """Root v1 (2-of-3 of admins 0-2) and directory v2 trusted."""
    store = TrustStore(root_of(1, [0, 1, 2], 2))
    store.update_directory(signed_by(encode_directory(directory()), ADMINS[0], ADMINS[1]), T0)
    return store


def snapshot(store: TrustStore) -> tuple[Any, ...]:
    d = store.directory
    return (
        encode_root(store.root),
        None if d is None else encode_directory(d),
        store.root_bytes,
        store.directory_bytes,
    )


def edit_file(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """Change a signed file as an attacker would, keeping it canonical JSON."""
    doc = json.loads(data)
    edit(doc)
    return canonical_json(doc)


V3 = encode_directory(directory(version=3))


def _dup_signature(doc: dict[str, Any]) -> None:
    doc["signatures"].append(dict(doc["signatures"][0]))


def _flip_sig(doc: dict[str, Any]) -> None:
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[0] ^= 1
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()


DIRECTORY_SCENARIOS: list[tuple[str, Callable[[], bytes], type[Exception]]] = [
    ("2-of-3, no signature: refused", lambda: signed_by(V3), NotEnoughSignaturesError),
    ("2-of-3, one signature: refused", lambda: signed_by(V3, ADMINS[0]), NotEnoughSignaturesError),
    (
        "2-of-3, one signature by a non-root key: refused",
        lambda: signed_by(V3, ADMINS[0], STRANGER),
        NotEnoughSignaturesError,
    ),
    (
        "2-of-3, the same key signing twice counts once: refused",
        lambda: edit_file(signed_by(V3, ADMINS[0]), _dup_signature),
        NotEnoughSignaturesError,
    ),
    (
        "2-of-3, signed by the next root's keys only: refused",
        lambda: signed_by(V3, ADMINS[3], ADMINS[4]),
        NotEnoughSignaturesError,
    ),
    (
        "2-of-3, one of two signatures tampered: refused",
        lambda: edit_file(signed_by(V3, ADMINS[0], ADMINS[1]), _flip_sig),
        BadSignatureError,
    ),
    (
        "rolled back to version 1: refused",
        lambda: signed_by(encode_directory(directory(version=1)), ADMINS[0], ADMINS[1]),
        RollbackError,
    ),
    (
        "same version 2, different content: refused",
        lambda: signed_by(
            encode_directory(directory().without_agency("ngo")), ADMINS[0], ADMINS[1]
        ),
        RollbackError,
    ),
    (
        "expired: refused",
        lambda: signed_by(encode_directory(directory(3, expires=T0)), ADMINS[0], ADMINS[1]),
        ExpiredMetadataError,
    ),
    (
        "a root instead of a directory: refused",
        lambda: signed_by(encode_root(root_of(1, [0, 1, 2], 2)), ADMINS[0], ADMINS[1]),
        MalformedError,
    ),
    (
        "not canonical JSON (a space added): refused",
        lambda: signed_by(V3, ADMINS[0], ADMINS[1]).replace(b'"signed":', b'"signed": '),
        MalformedError,
    ),
    (
        "an unknown member in the signed part: refused",
        lambda: edit_file(
            signed_by(V3, ADMINS[0], ADMINS[1]), lambda d: d["signed"].update(extra=1)
        ),
        MalformedError,
    ),
    (
        "an unknown member in a signature: refused",
        lambda: edit_file(
            signed_by(V3, ADMINS[0], ADMINS[1]), lambda d: d["signatures"][0].update(extra=1)
        ),
        MalformedError,
    ),
    (
        "a float where an integer belongs: refused",
        lambda: signed_by(V3, ADMINS[0], ADMINS[1]).replace(b'"version":3', b'"version":3.0'),
        MalformedError,
    ),
    (
        "a string where an integer belongs: refused",
        lambda: edit_file(
            signed_by(V3, ADMINS[0], ADMINS[1]), lambda d: d["signed"].update(version="3")
        ),
        MalformedError,
    ),
    (
        "agencies out of order: refused",
        lambda: edit_file(
            signed_by(V3, ADMINS[0], ADMINS[1]), lambda d: d["signed"]["agencies"].reverse()
        ),
        MalformedError,
    ),
    (
        "over 1 MiB: refused before parsing",
        lambda: b"[" * ((1 << 20) + 1),
        MalformedError,
    ),
    ("not JSON: refused", lambda: b"\xff\xfe", MalformedError),
]


@pytest.mark.parametrize(
    ("name", "build", "error"), DIRECTORY_SCENARIOS, ids=[s[0] for s in DIRECTORY_SCENARIOS]
)
def test_directory_scenarios(name: str, build: Callable[[], bytes], error: type[Exception]) -> None:
    """Each refused directory raises its own error class and leaves the store unchanged."""
    store = fresh_store()
    before = snapshot(store)
    with pytest.raises(error):
        store.update_directory(build(), T0 + 1)
    assert snapshot(store) == before


def test_directory_accepted_and_same_version_is_no_change() -> None:
    """2-of-3 valid signatures and a higher version are accepted; re-serving the current
    version byte-for-byte is accepted as no change."""
    store = fresh_store()
    data = signed_by(V3, ADMINS[2], ADMINS[1])
    assert store.update_directory(data, T0 + 1).version == 3
    assert store.directory_bytes == data
    again = signed_by(V3, ADMINS[0], ADMINS[2])
    assert store.update_directory(again, T0 + 2) == store.directory


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        target = doc["signed"]
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return edit


OTHER_PUBLIC = bytes(SigningKey(b"\x77" * 32).verify_key)

TAMPERS: list[tuple[str, Callable[[dict[str, Any]], None], type[Exception]]] = [
    ("version", _set(("version",), 4), BadSignatureError),
    ("expires", _set(("expires",), T0 + 10 * YEAR), BadSignatureError),
    ("spec_version", _set(("spec_version",), 2), MalformedError),
    ("type", _set(("type",), "nrm-root"), MalformedError),
    ("agency name", _set(("agencies", 0, "name"), "Evil"), BadSignatureError),
    ("agency id", _set(("agencies", 0, "agency"), "nga"), BadSignatureError),
    ("roles", _set(("agencies", 0, "roles"), ["auditor"]), BadSignatureError),
    ("nats_key", _set(("agencies", 0, "nats_key"), OTHER_NATS_KEY), BadSignatureError),
    (
        "key valid_from",
        _set(("agencies", 1, "signing_keys", 0, "valid_from"), 0),
        BadSignatureError,
    ),
    (
        "key valid_until",
        _set(("agencies", 1, "signing_keys", 0, "valid_until"), T0 + 5),
        BadSignatureError,
    ),
    (
        "key status",
        _set(("agencies", 1, "encryption_keys", 0, "status"), "retiring"),
        BadSignatureError,
    ),
    (
        "key public (kid no longer matches)",
        _set(("agencies", 1, "signing_keys", 0, "public"), base64.b64encode(OTHER_PUBLIC).decode()),
        MalformedError,
    ),
    ("an agency removed", lambda d: d["signed"]["agencies"].pop(), BadSignatureError),
]


@pytest.mark.parametrize(("field", "edit", "error"), TAMPERS, ids=[t[0] for t in TAMPERS])
def test_tampered_signed_part(
    field: str, edit: Callable[[dict[str, Any]], None], error: type[Exception]
) -> None:
    """Changing any field of a 2-of-3 signed directory makes it fail, store unchanged."""
    store = fresh_store()
    before = snapshot(store)
    with pytest.raises(error):
        store.update_directory(edit_file(signed_by(V3, ADMINS[0], ADMINS[1]), edit), T0 + 1)
    assert snapshot(store) == before


ROOT_V2 = encode_root(root_of(2, [3, 4, 5], 2))

ROOT_SCENARIOS: list[tuple[str, Callable[[], bytes], type[Exception] | None]] = [
    (
        "v1->v2 signed by 2 old and 2 new keys: accepted",
        lambda: signed_by(ROOT_V2, ADMINS[0], ADMINS[1], ADMINS[3], ADMINS[5]),
        None,
    ),
    (
        "v1->v2 signed only by old keys: refused",
        lambda: signed_by(ROOT_V2, ADMINS[0], ADMINS[1], ADMINS[2]),
        NotEnoughSignaturesError,
    ),
    (
        "v1->v2 signed only by new keys: refused",
        lambda: signed_by(ROOT_V2, ADMINS[3], ADMINS[4], ADMINS[5]),
        NotEnoughSignaturesError,
    ),
    (
        "v1->v2 signed by 1 old and 2 new keys: refused",
        lambda: signed_by(ROOT_V2, ADMINS[0], ADMINS[3], ADMINS[4]),
        NotEnoughSignaturesError,
    ),
    (
        "v1->v3 (a version skipped), fully signed: refused",
        lambda: signed_by(
            encode_root(root_of(3, [3, 4, 5], 2)), ADMINS[0], ADMINS[1], ADMINS[3], ADMINS[4]
        ),
        RollbackError,
    ),
    (
        "v1->v1 (same version), fully signed: refused",
        lambda: signed_by(
            encode_root(root_of(1, [3, 4, 5], 2)), ADMINS[0], ADMINS[1], ADMINS[3], ADMINS[4]
        ),
        RollbackError,
    ),
    (
        "v1->v2 with its threshold tampered to 1: refused",
        lambda: edit_file(
            signed_by(ROOT_V2, ADMINS[0], ADMINS[1], ADMINS[3], ADMINS[4]),
            _set(("threshold",), 1),
        ),
        BadSignatureError,
    ),
]


@pytest.mark.parametrize(
    ("name", "build", "error"), ROOT_SCENARIOS, ids=[s[0] for s in ROOT_SCENARIOS]
)
def test_root_rotation_scenarios(
    name: str, build: Callable[[], bytes], error: type[Exception] | None
) -> None:
    """A new root needs version N+1 and a threshold of both the old and the new keys."""
    store = fresh_store()
    before = snapshot(store)
    if error is None:
        assert store.update_root(build()) == root_of(2, [3, 4, 5], 2)
        return
    with pytest.raises(error):
        store.update_root(build())
    assert snapshot(store) == before


def test_directory_after_root_rotation_needs_the_new_keys() -> None:
    """After v1->v2, a directory signed by the old root's keys is refused; by the new, accepted."""
    store = fresh_store()
    store.update_root(signed_by(ROOT_V2, ADMINS[0], ADMINS[1], ADMINS[3], ADMINS[4]))
    before = snapshot(store)
    with pytest.raises(NotEnoughSignaturesError):
        store.update_directory(signed_by(V3, ADMINS[0], ADMINS[1]), T0 + 2)
    assert snapshot(store) == before
    assert store.update_directory(signed_by(V3, ADMINS[4], ADMINS[5]), T0 + 2).version == 3


def test_initial_root_is_self_signed_and_may_have_expired() -> None:
    """The trust anchor needs a threshold of its own keys; its expiry is checked only if it
    stays the newest root (the chain rule below)."""
    v1 = encode_root(root_of(1, [0, 1, 2], 2))
    assert verify_initial_root(signed_by(v1, ADMINS[0], ADMINS[2])) == root_of(1, [0, 1, 2], 2)
    with pytest.raises(NotEnoughSignaturesError):
        verify_initial_root(signed_by(v1, ADMINS[0]))
    expired = encode_root(root_of(1, [0, 1, 2], 2, expires=T0))
    assert verify_initial_root(signed_by(expired, ADMINS[0], ADMINS[1])).expires == T0


def test_verify_functions_return_the_verified_object() -> None:
    """verify_root_update, verify_root_chain and verify_directory return what they verified."""
    trusted = root_of(1, [0, 1, 2], 2)
    new = signed_by(ROOT_V2, ADMINS[0], ADMINS[1], ADMINS[3], ADMINS[4])
    assert verify_root_update(trusted, new) == root_of(2, [3, 4, 5], 2)
    pinned = signed_by(encode_root(trusted), ADMINS[0], ADMINS[1])
    assert verify_root_chain(pinned, [new], now=T0) == root_of(2, [3, 4, 5], 2)
    data = signed_by(V3, ADMINS[0], ADMINS[1])
    assert verify_directory(trusted, data, now=T0, current=None) == directory(version=3)


# --------------------------------------------------------------------------- root chain expiry

#: The roots of the chain scenarios: v1 admins 0-2, v2 admins 3-5, v3 admins 0, 4, 6; each
#: 2-of-3 and signed by a threshold of the previous root's keys and all of its own.
CHAIN_ADMINS = {1: [0, 1, 2], 2: [3, 4, 5], 3: [0, 4, 6]}
#: "Now" in the chain scenarios; a root "expired" expired a day before it.
NOW = T0 + 2 * YEAR
EXPIRED = NOW - DAY
CURRENT = NOW + YEAR


def chain_root(version: int, expires: int, *, signers: list[int] | None = None) -> bytes:
    """Root `version` of the chain, signed by `signers` (default: 2 of the previous root's
    keys and all of its own)."""
    own = CHAIN_ADMINS[version]
    if signers is None:
        signers = (CHAIN_ADMINS[version - 1][:2] if version > 1 else []) + own
    return signed_by(
        encode_root(root_of(version, own, 2, expires=expires)), *[ADMINS[i] for i in signers]
    )


def chain_directory(root_version: int, *, expires: int = NOW + 30 * DAY) -> bytes:
    """Directory v2 signed by two keys of root `root_version`."""
    keys = CHAIN_ADMINS[root_version][:2]
    return signed_by(
        encode_directory(directory(version=2, expires=expires)), *[ADMINS[i] for i in keys]
    )


def _tampered(data: bytes) -> bytes:
    return edit_file(data, _set(("threshold",), 1))


#: (name, pinned root, later roots, error or None). A success trusts the newest root.
CHAIN_SCENARIOS: list[tuple[str, Callable[[], tuple[bytes, list[bytes]]], type[Exception] | None]]
CHAIN_SCENARIOS = [
    (
        "root.1 current alone: trusted",
        lambda: (chain_root(1, CURRENT), []),
        None,
    ),
    (
        "root.1 expired, root.2 current: trusted",
        lambda: (chain_root(1, EXPIRED), [chain_root(2, CURRENT)]),
        None,
    ),
    (
        "root.1 and root.2 expired, root.3 current: trusted",
        lambda: (chain_root(1, EXPIRED), [chain_root(2, EXPIRED), chain_root(3, CURRENT)]),
        None,
    ),
    (
        "root.1 current, root.2 current: trusted",
        lambda: (chain_root(1, CURRENT), [chain_root(2, CURRENT)]),
        None,
    ),
    (
        "root.1 expired alone (the newest root expired): refused",
        lambda: (chain_root(1, EXPIRED), []),
        ExpiredRootError,
    ),
    (
        "root.1 expired, root.2 expired (the newest root expired): refused",
        lambda: (chain_root(1, EXPIRED), [chain_root(2, EXPIRED)]),
        ExpiredRootError,
    ),
    (
        "root.1 current, root.2 expired (the newest counts, not the pinned): refused",
        lambda: (chain_root(1, CURRENT), [chain_root(2, EXPIRED)]),
        ExpiredRootError,
    ),
    (
        "root.1 expired, root.2 current but signed by 1 of root.1's keys: refused",
        lambda: (chain_root(1, EXPIRED), [chain_root(2, CURRENT, signers=[0, 3, 4, 5])]),
        NotEnoughSignaturesError,
    ),
    (
        "root.1 expired, root.2 current but signed only by its own keys: refused",
        lambda: (chain_root(1, EXPIRED), [chain_root(2, CURRENT, signers=[3, 4, 5])]),
        NotEnoughSignaturesError,
    ),
    (
        "root.1 expired, root.2 current with its threshold tampered after signing: refused",
        lambda: (chain_root(1, EXPIRED), [_tampered(chain_root(2, CURRENT))]),
        BadSignatureError,
    ),
    (
        "root.1 expired, root.3 current with root.2 skipped: refused",
        lambda: (
            chain_root(1, EXPIRED),
            [chain_root(3, CURRENT, signers=[0, 1, 0, 4, 6])],
        ),
        RollbackError,
    ),
    (
        "pinned root.1 signed by 1 of its 2 required keys: refused",
        lambda: (chain_root(1, CURRENT, signers=[0]), []),
        NotEnoughSignaturesError,
    ),
]


@pytest.mark.parametrize(
    ("name", "build", "error"), CHAIN_SCENARIOS, ids=[s[0] for s in CHAIN_SCENARIOS]
)
def test_root_chain_expiry_scenarios(
    name: str, build: Callable[[], tuple[bytes, list[bytes]]], error: type[Exception] | None
) -> None:
    """Walking the chain from the pinned root, the pinned and intermediate roots may have
    expired; only the newest must be current; every step's signatures and version hold."""
    pinned, later = build()
    if error is None:
        newest = verify_root_chain(pinned, later, now=NOW)
        assert newest.version == 1 + len(later)
        assert newest.expires > NOW
    else:
        with pytest.raises(error):
            verify_root_chain(pinned, later, now=NOW)


@pytest.mark.parametrize(
    ("name", "build", "error"), CHAIN_SCENARIOS, ids=[s[0] for s in CHAIN_SCENARIOS]
)
def test_trust_store_follows_the_chain_rule(
    name: str, build: Callable[[], tuple[bytes, list[bytes]]], error: type[Exception] | None
) -> None:
    """A TrustStore fed the same roots one at a time, then a directory signed by the newest
    root, trusts that directory exactly when the chain rule holds; the refused step changes
    nothing."""
    pinned, later = build()
    if error is NotEnoughSignaturesError and not later:
        with pytest.raises(error):
            TrustStore.pinned(pinned)
        return
    store = TrustStore.pinned(pinned)
    for data in later:
        before = snapshot(store)
        try:
            store.update_root(data)
        except UntrustedInputError as e:
            assert isinstance(e, error or ()), name
            assert snapshot(store) == before
            return
    before = snapshot(store)
    signed = chain_directory(store.root.version)
    if error is None:
        assert store.update_directory(signed, NOW) == directory(version=2, expires=NOW + 30 * DAY)
        assert store.directory_at(NOW) == store.directory
        return
    with pytest.raises(error):
        store.update_directory(signed, NOW)
    assert snapshot(store) == before
    assert store.directory_at(NOW) is None


def test_a_trusted_directory_stops_being_trusted_when_the_newest_root_expires() -> None:
    """directory_at answers the directory only while both it and the newest root are
    current; a later root brings it back once a directory signed under it arrives."""
    store = TrustStore.pinned(chain_root(1, NOW + DAY))
    store.update_directory(chain_directory(1, expires=NOW + 30 * DAY), NOW)
    assert store.directory_at(NOW) is not None
    assert store.directory_at(NOW + DAY) is None  # the root expired, the directory has not
    with pytest.raises(ExpiredRootError):
        store.update_directory(chain_directory(1, expires=NOW + 30 * DAY), NOW + DAY)
    store.update_root(chain_root(2, CURRENT))
    renewed = signed_by(
        encode_directory(directory(version=3, expires=NOW + 31 * DAY)), ADMINS[3], ADMINS[4]
    )
    assert store.update_directory(renewed, NOW + DAY).version == 3
    assert store.directory_at(NOW + DAY) is not None


def test_a_trust_feed_keeps_a_directory_until_the_root_that_signs_it_arrives() -> None:
    """Bucket entries in any order: a directory signed by the next root's keys is refused
    (and the refusal kept) until that root is taken, then taken with it in one offer; an
    old root is ignored; a taken directory clears the refusal."""
    feed = TrustFeed(chain_root(1, CURRENT))
    early = feed.offer("directory", chain_directory(2), now=NOW)
    assert not early.changed and early.refused is not None
    assert feed.refused == early.refused and feed.store.directory is None
    offered = feed.offer("root.2", chain_root(2, CURRENT), now=NOW)
    assert [root.version for root, _ in offered.roots] == [2]
    assert offered.directory is not None and offered.directory[0].version == 2
    assert offered.changed and feed.refused is None
    assert not feed.offer("root.1", chain_root(1, CURRENT), now=NOW).changed
    assert not feed.offer("directory", chain_directory(2), now=NOW).changed  # the same again


def test_a_trust_feed_refuses_what_does_not_parse_or_follow() -> None:
    """A malformed entry and a root that skips a version (so the trusted root's keys did not
    sign it) are refused by reason; nothing trusted changes."""
    feed = TrustFeed(chain_root(1, CURRENT))
    assert feed.offer("directory", b"{", now=NOW).refused == feed.refused
    assert feed.refused is not None and feed.refused.reason == "malformed"
    skipped = feed.offer_root(chain_root(3, CURRENT), now=NOW)
    assert skipped.refused is not None and skipped.refused.reason == "under-signed"
    assert feed.store.root.version == 1 and feed.store.directory is None


def test_directory_from_files_verifies_the_whole_chain() -> None:
    """Pinned root, later roots, directory: the directory, or the chain's failure."""
    pinned, later = chain_root(1, EXPIRED), [chain_root(2, CURRENT)]
    assert directory_from_files(pinned, later, chain_directory(2), now=NOW).version == 2
    with pytest.raises(ExpiredRootError):
        directory_from_files(pinned, [], chain_directory(1), now=NOW)


# --------------------------------------------------------------------------- canonical encoding


def test_canonical_encoding_is_stable() -> None:
    """The same document always encodes and signs to the same bytes, whatever the order of
    construction and of signing."""
    d1 = directory(version=3)
    d2 = Directory(version=3, expires=d1.expires, agencies=tuple(reversed(d1.agencies)))
    assert encode_directory(d1) == encode_directory(d2) == V3
    assert json.loads(V3)["agencies"][0]["agency"] == "ngo"
    ab = signed_by(V3, ADMINS[0], ADMINS[1])
    ba = signed_by(V3, ADMINS[1], ADMINS[0])
    assert ab == ba
    assert encode_root(root_of(1, [0, 1, 2], 2)) == encode_root(root_of(1, [2, 1, 0], 2))


def test_signing_twice_with_one_key_does_not_duplicate() -> None:
    """Adding the same key's signature again changes nothing and counts once."""
    once = signed_by(V3, ADMINS[0])
    assert sign(once, ADMINS[0]) == once
    assert signature_count(once, keys=None) == 1
    root = root_of(1, [0, 1, 2], 2)
    assert signature_count(signed_by(V3, ADMINS[0], STRANGER), keys=root) == 1
    assert signature_count(signed_by(V3, ADMINS[0], STRANGER), keys=None) == 2


def test_signature_is_over_label_and_canonical_signed_part() -> None:
    """A signature is Ed25519 over "nrm/v1/directory" || 0x00 || canonical signed part."""
    sig_b64 = json.loads(signed_by(V3, ADMINS[0]))["signatures"][0]["sig"]
    sig = base64.b64decode(sig_b64)
    ADMINS[0].verify_key.verify(DIRECTORY_LABEL + b"\x00" + V3, sig)


def test_root_constructor_refuses_unsafe_values() -> None:
    """Empty key sets, a zero threshold and a threshold above the key count are refused."""
    for threshold, admins in ((0, [0, 1]), (3, [0, 1]), (1, [])):
        with pytest.raises(ValueError):
            root_of(1, admins, threshold)


# --------------------------------------------------------------------------- key validity


def test_revoked_key_refused_from_revoked_at_only() -> None:
    """A revoked signing key is refused at and after revoked_at and accepted before it."""
    d = directory()
    kid = d.agency("police").signing_keys[0].kid
    revoked = d.revoke("police", kid, at=T0 + 100, reason="laptop stolen")
    assert bytes(revoked.signing_key("police", kid, at=T0 + 99)) == bytes(
        AGENCY_SIGNING["police"].verify_key
    )
    with pytest.raises(RevokedKeyError):
        revoked.signing_key("police", kid, at=T0 + 100)
    assert d.signing_key("police", kid, at=T0 + 100)  # the original is untouched


def test_retiring_key_refused_after_valid_until() -> None:
    """After a rotation the old signing key works until the overlap ends, then is retired;
    the new one works from the rotation on."""
    d = directory()
    old_kid = d.agency("police").signing_keys[0].kid
    new_sign, new_enc = SigningKey(b"\x55" * 32), PrivateKey(b"\x56" * 32)
    rotated = d.rotate(
        "police",
        signing=(signing_kid(new_sign.verify_key), bytes(new_sign.verify_key)),
        encryption=(encryption_kid(new_enc.public_key), bytes(new_enc.public_key)),
        now=T0,
        overlap_seconds=DAY,
    )
    assert rotated.agency("police").signing_keys[0].status == "retiring"
    assert rotated.signing_key("police", old_kid, at=T0 + DAY)
    with pytest.raises(RetiredKeyError):
        rotated.signing_key("police", old_kid, at=T0 + DAY + 1)
    assert rotated.signing_key("police", signing_kid(new_sign.verify_key), at=T0 + 1)
    with pytest.raises(RetiredKeyError):
        rotated.signing_key("police", signing_kid(new_sign.verify_key), at=T0 - 1)
    with pytest.raises(UnknownKeyError):
        rotated.signing_key("police", "0" * 32, at=T0)
    with pytest.raises(UnknownKeyError):
        rotated.signing_key("customs", old_kid, at=T0)


def test_recipient_is_the_newest_key_after_rotate() -> None:
    """Senders seal to the newest non-revoked encryption key; before a rotation, the old one."""
    d = directory()
    old = d.recipient("police", at=T0)
    assert old.kid == encryption_kid(AGENCY_ENCRYPTION["police"].public_key)
    new_sign, new_enc = SigningKey(b"\x57" * 32), PrivateKey(b"\x58" * 32)
    rotated = d.rotate(
        "police",
        signing=(signing_kid(new_sign.verify_key), bytes(new_sign.verify_key)),
        encryption=(encryption_kid(new_enc.public_key), bytes(new_enc.public_key)),
        now=T0 + 10,
        overlap_seconds=DAY,
    )
    assert rotated.recipient("police", at=T0 + 10).kid == encryption_kid(new_enc.public_key)
    assert rotated.recipient("police", at=T0 + 9).kid == old.kid
    revoked = rotated.revoke("police", encryption_kid(new_enc.public_key), at=T0, reason="leak")
    assert revoked.recipient("police", at=T0 + 11).kid == old.kid
    assert "police" in rotated and "customs" not in rotated


def test_agency_entry_checks_kids_roles_and_nats_key() -> None:
    """Key ids must match their key and label, roles must be known, the NKey well-shaped."""
    entry = agency("police", ("police",))
    with pytest.raises(ValueError):  # a signing key listed as an encryption key
        AgencyEntry("police", "P", ("police",), entry.signing_keys, entry.signing_keys, NATS_KEY)
    with pytest.raises(ValueError):
        AgencyEntry("police", "P", ("spy",), entry.signing_keys, entry.encryption_keys, NATS_KEY)
    with pytest.raises(ValueError):
        AgencyEntry(
            "police", "P", ("police",), entry.signing_keys, entry.encryption_keys, "N" + "A" * 55
        )


def _sign_raw(document: bytes, *keys: SigningKey) -> bytes:
    """A signed file made without the directory code, which refuses what it cannot hold."""
    sigs = [
        {
            "keyid": signing_kid(k.verify_key),
            "sig": base64.b64encode(
                k.sign(DIRECTORY_LABEL + b"\x00" + document).signature
            ).decode(),
        }
        for k in keys
    ]
    sigs.sort(key=lambda s: s["keyid"])
    return canonical_json({"signatures": sigs, "signed": json.loads(document)})


@pytest.mark.parametrize("name", ["0", "order 8 (b)", "p - 1", "1, top bit set", "a real key + p"])
def test_directory_with_a_weak_encryption_key_is_refused_as_a_whole(name: str) -> None:
    """An agency entry cannot hold a small-order or non-canonical X25519 key (even a revoked
    one); a correctly signed directory listing one is refused `weak-key` by the store and the
    feed, and cannot be signed: nothing trusted changes."""
    weak = WEAK_X25519_KEYS[name]
    entry = agency("police", ("police",))
    bad_key = replace(entry.encryption_keys[0], kid=encryption_kid_of(weak), public=weak)
    with pytest.raises(WeakKeyError, match="of police"):
        replace(entry, encryption_keys=(bad_key,))
    revoked = replace(bad_key, status="revoked", revoked_at=T0, reason="weak")
    with pytest.raises(WeakKeyError):
        replace(entry, encryption_keys=(entry.encryption_keys[0], revoked))
    doc = json.loads(V3)
    police = next(a for a in doc["agencies"] if a["agency"] == "police")
    police["encryption_keys"][0].update(
        kid=encryption_kid_of(weak), public=base64.b64encode(weak).decode()
    )
    document = canonical_json(doc)
    data = _sign_raw(document, ADMINS[0], ADMINS[1])
    store = fresh_store()
    before = snapshot(store)
    with pytest.raises(WeakKeyError) as info:
        store.update_directory(data, T0 + 1)
    assert info.value.reason == "weak-key"
    assert snapshot(store) == before
    feed = TrustFeed(signed_by(encode_root(root_of(1, [0, 1, 2], 2)), *ADMINS[:2]))
    offered = feed.offer("directory", data, now=T0 + 1)
    assert offered.refused is not None and offered.refused.reason == "weak-key"
    assert feed.store.directory is None
    with pytest.raises(WeakKeyError):
        sign(document, ADMINS[0])


# --------------------------------------------------------------------------- fuzzing

SIGNED_V3 = signed_by(V3, ADMINS[0], ADMINS[1])
TRUSTED_ROOT = root_of(1, [0, 1, 2], 2)


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(SIGNED_V3)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif kind == "delete" and data:
            del data[pos]
        else:
            del data[pos:]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_directory_never_verifies(data: bytes) -> None:
    """Random mutations of a 2-of-3 signed directory never verify, and fail only with
    untrusted-input errors."""
    if data == SIGNED_V3:
        return
    with pytest.raises(UntrustedInputError):
        verify_directory(TRUSTED_ROOT, data, now=T0, current=None)


# --------------------------------------------------------------------------- auditor's chain


def _history_directory(version: int, root_version: int, expires: int) -> bytes:
    keys = CHAIN_ADMINS[root_version][:2]
    return signed_by(
        encode_directory(directory(version=version, expires=expires)),
        *[ADMINS[i] for i in keys],
    )


#: root.1 expires after a year; directory 2 (root.1) accepted at T0; directory 3 (root.2)
#: accepted ten days after root.1 expired.
HISTORY = [
    (2, _history_directory(2, 1, T0 + 30 * DAY), T0),
    (3, _history_directory(3, 2, T0 + YEAR + 40 * DAY), T0 + YEAR + 10 * DAY),
]
ROOT_1 = chain_root(1, T0 + YEAR)
ROOT_2 = chain_root(2, T0 + 3 * YEAR)
FORGED_ROOT_2 = chain_root(2, T0 + 3 * YEAR, signers=[6, 3, 4, 5])
FORGED_ROOT_1 = signed_by(encode_root(root_of(1, [6], 1)), ADMINS[6])

HISTORY_SCENARIOS: list[tuple[str, list[bytes], str | None]] = [
    ("root.2 served: both versions verify", [ROOT_2], None),
    ("root.2 served twice, with the ledger's own root.1: both verify", [ROOT_1, ROOT_2, ROOT_2],
     None),
    ("a forged root.1 served (at or below the pin): ignored", [FORGED_ROOT_1, ROOT_2], None),
    ("no later root served: refused, naming the missing root", [],
     "does not verify under root version 1 (under-signed): it is probably signed by the keys "
     "of root version 2, which neither the ledger served nor --root gave; get root.2.json"),
    ("a root.2 signed by a stranger instead of root.1's keys: refused", [FORGED_ROOT_2],
     "root version 2 does not follow root version 1 (under-signed)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "served", "refusal"), HISTORY_SCENARIOS, ids=[s[0] for s in HISTORY_SCENARIOS]
)
def test_auditor_walks_the_served_root_chain_from_its_own_pin(
    name: str, served: list[bytes], refusal: str | None
) -> None:
    """verify_directory_history starts at the auditor's pinned root, takes served roots only
    through R1-R4 (an expired intermediate root is fine), and judges each directory at the
    time the ledger accepted it."""
    if refusal is None:
        verified = verify_directory_history(ROOT_1, served, HISTORY)
        assert sorted(verified) == [2, 3]
        assert verified[3].version == 3
        return
    with pytest.raises(LedgerVerificationError, match=re.escape(refusal)):
        verify_directory_history(ROOT_1, served, HISTORY)
