"""The trust directory in a running mechanism: distribution, refusals, rotation, revocation,
root rotation and bus authorization following the directory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from structlog.testing import capture_logs

from keys import AgencyKeys, codec, seal
from keys.codec import canonical_json, to_b64
from keys.directory import DIRECTORY_LABEL, Directory, encode_directory, sign
from keys.identity import ENCRYPTION_KID_LABEL, key_id, signing_kid
from keys.keyfile import INTERACTIVE, open_admin_key
from keys.subjects import DIRECTORY_KEY, inbox_subject, publish_id, reply_prefix
from nrm import admin
from runtime import clock
from runtime.keydir import rotate_key_dir

from . import samples
from .support import AGENCIES, Mechanism, eventually, running_mechanism
from .test_agent import connect_as, delivered, police_to_shelter, rows, sent_envelope
from .test_identity import WEAK_X25519_KEYS

REFERRAL = samples.referral()


@pytest.fixture
async def m2of3(tmp_path: Path) -> AsyncIterator[Mechanism]:
    """The three-agency mechanism with a 2-of-3 administrator root."""
    async with running_mechanism(tmp_path, admins=3, threshold=2) as m:
        yield m


def trust(m: Mechanism, agency: str) -> dict[str, object]:
    health = m.agents[agency].health()["trust"]
    assert isinstance(health, dict)
    return health


async def refused_with(m: Mechanism, agency: str, reason: str) -> None:
    async def check() -> bool:
        refused = trust(m, agency).get("refused")
        return isinstance(refused, dict) and refused["reason"] == reason

    await eventually(check, what=f"{agency} to refuse with {reason}")


def admin_key(m: Mechanism, n: int) -> bytes:
    return (m.sandbox.admin.path / f"admin-{n}.key").read_bytes()


def signed_by(m: Mechanism, directory: Directory, key_files: list[Path]) -> bytes:
    data = encode_directory(directory)
    for path in key_files:
        data = sign(data, open_admin_key(path.read_bytes(), passphrase=m.sandbox.admin_passphrase))
    return data


ORDER_8 = WEAK_X25519_KEYS["order 8 (a)"]


def signed_with_weak_agency(m: Mechanism, directory: Directory, key_files: list[Path]) -> bytes:
    """`directory` plus an agency `weak` whose encryption key is of order 8, correctly
    signed. Built by hand: the directory code refuses to hold such a key at all."""
    doc = codec.load_canonical(encode_directory(directory), "directory")
    weak = AgencyKeys.generate(agency="weak", name="Weak").public
    entry = {
        "kid": key_id(ENCRYPTION_KID_LABEL, ORDER_8),
        "public": to_b64(ORDER_8),
        "valid_from": 0,
        "valid_until": None,
        "status": "active",
        "revoked_at": None,
        "reason": None,
    }
    signing = {**entry, "kid": weak.signing_kid, "public": to_b64(bytes(weak.signing_key))}
    doc["agencies"].append(
        {
            "agency": "weak",
            "name": "Weak",
            "roles": ["ngo"],
            "signing_keys": [signing],
            "encryption_keys": [entry],
            "nats_key": weak.nats_key,
        }
    )
    doc["agencies"].sort(key=lambda a: a["agency"])
    signed = canonical_json(doc)
    signatures = []
    for path in key_files:
        key = open_admin_key(path.read_bytes(), passphrase=m.sandbox.admin_passphrase)
        sig = key.sign(DIRECTORY_LABEL + b"\x00" + signed).signature
        signatures.append({"keyid": signing_kid(key.verify_key), "sig": to_b64(sig)})
    signatures.sort(key=lambda s: s["keyid"])
    return canonical_json({"signatures": signatures, "signed": doc})


async def test_agents_load_the_published_directory(m2of3: Mechanism) -> None:
    """Every agent holds the verified directory the administrators published."""
    for agency, _, _ in AGENCIES:
        assert trust(m2of3, agency)["directory_version"] == 1
        assert m2of3.agents[agency].health()["status"] == "ok"


REFUSALS = [
    "under-signed: 1 of the 2 required signatures",
    "rolled back: version 1 offered after version 2",
    "expired: a correctly signed directory past its expiry",
    "tampered: a field of the signed part changed after signing",
    "not a directory: bytes that do not parse",
    "weak key: correctly signed, but an agency's encryption key is of small order",
]


@pytest.mark.parametrize("case", REFUSALS)
async def test_bad_directory_is_refused_and_nothing_changes(m2of3: Mechanism, case: str) -> None:
    """Each bad directory is refused with its own reason; agents keep the one they trust."""
    m = m2of3
    keys = sorted(m.sandbox.admin.path.glob("admin-*.key"))
    current = admin.verified_draft(m.sandbox.admin)
    later = Directory(
        version=current.version + 1, expires=current.expires, agencies=current.agencies
    )
    if case.startswith("under-signed"):
        data, reason = signed_by(m, later, keys[:1]), "under-signed"
    elif case.startswith("rolled back"):
        await m.sandbox.put(DIRECTORY_KEY, signed_by(m, later, keys[:2]))
        await eventually(lambda: _version_is(m, 2), what="version 2")
        data, reason = m.sandbox.admin.directory_bytes(), "rolled-back"
    elif case.startswith("expired"):
        stale = Directory(
            version=later.version, expires=int(time.time()) - 10, agencies=later.agencies
        )
        data, reason = signed_by(m, stale, keys[:2]), "expired-metadata"
    elif case.startswith("tampered"):
        good = signed_by(m, later, keys[:2]).decode()
        data, reason = good.replace('"Shelter"', '"Shelte2"').encode(), "bad-signature"
        assert data.decode() != good
    elif case.startswith("weak key"):
        data, reason = signed_with_weak_agency(m, later, keys[:2]), "weak-key"
    else:
        data, reason = b"\xff not json", "malformed"
    before = {a: trust(m, a)["directory_version"] for a in m.agents}
    await m.sandbox.put(DIRECTORY_KEY, data)
    for agency in m.agents:
        await refused_with(m, agency, reason)
        assert trust(m, agency)["directory_version"] == before[agency]
        assert m.agents[agency].health()["status"] == "degraded"
        # and the cached copy on disk did not change either
        cached = (m.setups[agency].home / "trust" / "directory.json").read_bytes()
        assert cached != data
    if reason == "weak-key":
        # A referral to the agency the refused directory would have admitted is a 422
        # naming it, never an opaque 500.
        status, body, ctype = await m.api("police").call(
            "POST", "/v1/referrals", json={"recipients": ["weak"], "referral": REFERRAL}
        )
        assert (status, ctype) == (422, "application/problem+json"), body
        assert "weak" in body["detail"]


async def _version_is(m: Mechanism, version: int) -> bool:
    return all(trust(m, a)["directory_version"] == version for a in m.agents)


async def test_rotation_during_traffic_loses_nothing(mechanism: Mechanism) -> None:
    """Rotating both sender and receiver keys mid-stream loses no referral and leaves none
    unreadable; afterwards both sides use the new keys."""
    m = mechanism
    police, shelter = m.setups["police"], m.setups["shelter"]
    old_shelter_enc = m.agents["shelter"].keys.public.encryption_kid
    sent: list[str] = []
    flow = asyncio.create_task(police_to_shelter(m, 60, sent))
    await asyncio.sleep(0.4)
    for setup in (shelter, police):
        rotate_key_dir(setup.key_dir, passphrase=setup.passphrase(), cost=INTERACTIVE)
        identity = admin.PublicIdentity.from_json(setup.identity_path.read_bytes())
        admin.add_agency(m.sandbox.admin, identity, roles=list(setup.roles))
    m.sandbox.sign_draft()
    await m.sandbox.publish()
    await flow
    for rid in sent:
        await delivered(m, "police", rid)
    assert rows(m.database("shelter"), "inbox") == len(sent)
    new_shelter = admin.PublicIdentity.from_json(shelter.identity_path.read_bytes())
    assert m.agents["shelter"].keys.public.encryption_kid == new_shelter.encryption_kid
    assert (
        m.agents["police"].keys.public.signing_kid
        == admin.PublicIdentity.from_json(police.identity_path.read_bytes()).signing_kid
    )
    # a referral sent now is sealed to the shelter's new key, not the retiring one
    rid = await m.api("police").refer(["shelter"], REFERRAL)
    kid = _recipient_kid(m, "police", rid)
    assert kid == new_shelter.encryption_kid != old_shelter_enc
    await delivered(m, "police", rid)


def _recipient_kid(m: Mechanism, agency: str, message_id: str) -> str:
    envelope = sent_envelope(m, agency, message_id)
    header = codec.unpack(codec.unpack(envelope, max_bytes=1 << 20)[1], max_bytes=8192)
    return str(header[6][0])


async def test_revoked_key_later_signatures_are_rejected(mechanism: Mechanism) -> None:
    """After police's signing key is revoked, its agent refuses to send (503) and what the
    key still signs is rejected by the recipient as revoked-key."""
    m = mechanism
    rid = await m.api("police").refer(["shelter"], REFERRAL)
    await delivered(m, "police", rid)
    police = m.agents["police"]
    kid = police.keys.public.signing_kid
    admin.revoke_key(m.sandbox.admin, "police", kid, reason="key compromised")
    m.sandbox.sign_draft()
    await m.sandbox.publish()
    await eventually(lambda: _version_is(m, 2), what="the revocation to arrive")
    status, body, _ = await m.api("police").call(
        "POST", "/v1/referrals", json={"recipients": ["shelter"], "referral": REFERRAL}
    )
    assert (status, body["reason"]) == (503, "key-revoked")
    directory = police.trust.directory
    assert directory is not None
    now = clock.now()
    forged = seal(
        sender=police.keys,
        recipients=[directory.recipient("shelter", at=now)],
        kind="referral",
        body=b"{}",
        created=now,
        expires=now + 3600,
    )
    with capture_logs() as logs:
        async with connect_as(m, "police") as nc:
            await nc.jetstream().publish(
                inbox_subject("shelter"),
                forged.data,
                headers={"Nats-Msg-Id": publish_id(forged.header.message_id, "shelter")},
            )

        async def rejected() -> bool:
            return any(
                e.get("reason") == "revoked-key" for e in logs if e["event"] == "message_rejected"
            )

        await eventually(rejected, what="the shelter to reject the revoked key")
    assert rows(m.database("shelter"), "inbox") == 1


async def test_root_rotation(m2of3: Mechanism) -> None:
    """A new root signed by the old and new thresholds is accepted with the directory it
    signs; a later directory signed only by the old root's keys is refused."""
    m = m2of3
    folder = m.sandbox.admin
    old_keys = sorted(folder.path.glob("admin-?.key"))
    admin.rotate_root(
        folder,
        old_keys=old_keys[:2],
        admins=3,
        threshold=2,
        passphrase=m.sandbox.admin_passphrase,
        cost=INTERACTIVE,
    )
    new_keys = sorted(folder.path.glob("admin-*.r2.key"))
    for key in new_keys[:2]:
        admin.sign_draft(folder, key, passphrase=m.sandbox.admin_passphrase)
    await m.sandbox.publish()

    async def on_root_2() -> bool:
        return all(
            trust(m, a)["root_version"] == 2 and trust(m, a)["directory_version"] == 2
            for a in m.agents
        )

    await eventually(on_root_2, what="agents to accept root 2")
    current = admin.verified_draft(folder)
    later = Directory(
        version=current.version + 1, expires=current.expires, agencies=current.agencies
    )
    await m.sandbox.put(DIRECTORY_KEY, signed_by(m, later, old_keys[:2]))
    for agency in m.agents:
        await refused_with(m, agency, "under-signed")
        assert trust(m, agency)["directory_version"] == 2


async def test_bus_authorization_follows_the_directory(mechanism: Mechanism) -> None:
    """Removing an agency from the directory reloads the bus: its NKey no longer connects;
    the server was not restarted."""
    m = mechanism
    pid = m.bus.pid
    await m.stop("coordinator")
    seed = m.agents["police"].keys.nats_seed  # police stays; check the coordinator's key
    from runtime.keydir import load_key_dir

    coordinator = load_key_dir(
        m.setups["coordinator"].key_dir, passphrase=m.setups["coordinator"].passphrase()
    )
    assert coordinator.nats_seed is not None and seed is not None
    nc = await nats.connect(
        m.bus.url,
        nkeys_seed_str=coordinator.nats_seed.decode(),
        inbox_prefix=reply_prefix("coordinator"),
        allow_reconnect=False,
    )
    await nc.close()
    admin.remove_agency(m.sandbox.admin, "coordinator")
    m.sandbox.sign_draft()
    await m.sandbox.publish()

    async def locked_out() -> bool:
        try:
            conn = await nats.connect(
                m.bus.url,
                nkeys_seed_str=coordinator.nats_seed.decode(),
                inbox_prefix=reply_prefix("coordinator"),
                allow_reconnect=False,
                connect_timeout=1,
            )
        except Exception:
            return True
        await conn.close()
        return False

    await eventually(locked_out, what="the coordinator's NKey to be refused")
    assert m.bus.pid == pid
    rid = await m.api("police").refer(["shelter"], REFERRAL)
    await delivered(m, "police", rid)
