"""NATS key rotation (agents/nats_key.py, PROTOCOL.md §3.2 and §7.7): the rule choosing the
seed, and a running mechanism in which the bus cuts the old key off and the agent follows."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import nats
import nats.errors
import pytest

from agents import Agent
from agents.nats_key import wanted_seed
from keys import AgencyKeys
from keys.identity import nats_public_key
from keys.keyfile import INTERACTIVE
from keys.subjects import reply_prefix
from nrm import admin
from runtime.keydir import load_key_dir, rotate_key_dir

from . import samples
from .support import Mechanism, copy_agency_folder, eventually
from .test_agent import delivered, police_to_shelter, rows

REFERRAL = samples.referral()
#: Everything nats-py may raise when the server refuses a login.
REFUSED = (nats.errors.Error, TimeoutError, OSError)

OLD = AgencyKeys.generate(agency="shelter", name="Shelter")
NEW = OLD.rotated()  # current: a new seed; previous: OLD's
ELSEWHERE = OLD.rotated()  # rotated on another machine: a seed NEW does not hold


def key(keys: AgencyKeys) -> str:
    assert keys.nats_seed is not None
    return nats_public_key(keys.nats_seed)


#: name: (key file, NKey the directory lists, seed in use, refused, expected seed)
SCENARIOS = {
    "the directory names the key in use: keep it": (NEW, key(NEW), NEW.nats_seed, False,
                                                    NEW.nats_seed),
    "rotated, directory not yet published: the previous seed": (NEW, key(OLD), NEW.nats_seed,
                                                                False, OLD.nats_seed),
    "the directory names the new key: switch to it": (NEW, key(NEW), OLD.nats_seed, False,
                                                      NEW.nats_seed),
    "refused while the directory held still names it (cut off first): the newest": (
        NEW, key(OLD), OLD.nats_seed, True, NEW.nats_seed),
    "refused and the newest is in use: nothing else to try": (NEW, key(NEW), NEW.nats_seed,
                                                              True, NEW.nats_seed),
    "the directory names a key rotated on another machine: keep (being cut off)": (
        NEW, key(ELSEWHERE), OLD.nats_seed, False, OLD.nats_seed),
    "no directory yet: keep": (NEW, None, OLD.nats_seed, False, OLD.nats_seed),
    "a key file without a previous seed, refused: the newest": (
        replace(NEW, previous_nats_seed=None), key(OLD), OLD.nats_seed, True, NEW.nats_seed),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_wanted_seed(name: str) -> None:
    """The seed an agent connects with, in every order of rotation, publication and refusal."""
    keys, listed, in_use, refused, expected = SCENARIOS[name]
    assert wanted_seed(keys, listed=listed, in_use=in_use, refused=refused) == expected


# --- a running mechanism ------------------------------------------------------------------


def seeds(m: Mechanism, agency: str) -> AgencyKeys:
    setup = m.setups[agency]
    return load_key_dir(setup.key_dir, passphrase=setup.passphrase())


def rotate(m: Mechanism, agency: str) -> AgencyKeys:
    """`nrm keys rotate` and `nrm directory add-agency` + sign (not published)."""
    setup = m.setups[agency]
    keys = rotate_key_dir(setup.key_dir, passphrase=setup.passphrase(), cost=INTERACTIVE)
    identity = admin.PublicIdentity.from_json(setup.identity_path.read_bytes())
    admin.add_agency(m.sandbox.admin, identity, roles=list(setup.roles))
    m.sandbox.sign_draft()
    return keys


async def refused(m: Mechanism, agency: str, seed: bytes) -> bool:
    """Whether the bus refuses a raw connection with `seed`."""
    try:
        nc = await nats.connect(
            m.bus.url,
            nkeys_seed_str=seed.decode(),
            inbox_prefix=reply_prefix(agency),
            allow_reconnect=False,
            connect_timeout=2,
        )
    except REFUSED:
        return True
    await nc.close()
    return False


def on_seed(agent: Agent, seed: bytes | None) -> bool:
    return agent.transport.nats_seed == seed and agent.health()["status"] == "ok"


async def test_nkey_rotation_cuts_the_old_key_off_and_loses_nothing(mechanism: Mechanism) -> None:
    """Rotating the shelter's keys, NATS key included, while police sends: once published the
    old seed can no longer log in, the shelter agent runs on the new one, and every referral
    sent before, during and after is delivered and stored exactly once."""
    m = mechanism
    old = seeds(m, "shelter")
    assert old.nats_seed is not None and not await refused(m, "shelter", old.nats_seed)
    sent: list[str] = []
    flow = asyncio.create_task(police_to_shelter(m, 40, sent))
    await asyncio.sleep(0.3)
    new = rotate(m, "shelter")
    await m.sandbox.publish()
    await flow
    shelter = m.agents["shelter"]
    await eventually(lambda: _async(on_seed(shelter, new.nats_seed)), what="the new NKey")
    assert await refused(m, "shelter", old.nats_seed)
    assert new.nats_seed is not None and not await refused(m, "shelter", new.nats_seed)
    sent.append(await m.api("police").refer(["shelter"], REFERRAL))
    for rid in sent:
        await delivered(m, "police", rid)
    assert rows(m.database("shelter"), "inbox") == len(sent)
    assert shelter.keys.public.signing_kid == new.public.signing_kid


async def test_cut_off_before_seeing_the_directory(mechanism: Mechanism) -> None:
    """When the bus authorizes the new NKey before the shelter agent could read the new
    directory (it is cut off and cannot read the bucket), the agent switches to the new seed
    from its key file, receives again, and follows the signing keys once the directory is
    published."""
    m = mechanism
    shelter = m.agents["shelter"]
    version = shelter.health()["trust"]["directory_version"]
    rid = await m.api("police").refer(["shelter"], REFERRAL)
    await delivered(m, "police", rid)
    new = rotate(m, "shelter")
    assert m.sandbox.authority is not None
    m.sandbox.authority.apply(admin.verified_draft(m.sandbox.admin))  # the bus first
    during = await m.api("police").refer(["shelter"], REFERRAL)

    async def reconnected() -> bool:
        return (
            on_seed(shelter, new.nats_seed)
            and shelter.health()["trust"]["directory_version"] == version
        )

    await eventually(reconnected, what="the agent to reconnect without the new directory")
    await delivered(m, "police", during)
    await m.sandbox.publish()

    async def followed() -> bool:
        return (
            shelter.health()["trust"]["directory_version"] == version + 1
            and shelter.keys.public.signing_kid == new.public.signing_kid
        )

    await eventually(followed, what="the agent to follow the published directory")
    after = await m.api("police").refer(["shelter"], REFERRAL)
    await delivered(m, "police", after)
    assert rows(m.database("shelter"), "inbox") == 3


async def test_restart_between_rotation_and_publication(mechanism: Mechanism) -> None:
    """An agent restarted after `nrm keys rotate` but before the directory is published
    connects with the previous seed the key file kept and says why it waits (its new signing
    key is not listed yet: standing `key-unlisted`, nothing failed); once the directory is
    published it switches seeds and every referral, including the one that waited on the
    bus, is delivered."""
    m = mechanism
    old = seeds(m, "shelter")
    await m.stop("shelter")
    new = rotate(m, "shelter")
    shelter = await m.start("shelter", wait=False)

    async def waiting() -> bool:
        health = shelter.health()
        return (
            shelter.transport.nats_seed == old.nats_seed
            and shelter.transport.connected
            and health["standing"]["state"] == "key-unlisted"
            and health["status"] == "degraded"
            and health["outbox_failed"] == 0
        )

    first = await m.api("police").refer(["shelter"], REFERRAL)
    await eventually(waiting, what="the agent connected with the previous seed, key-unlisted")
    await m.sandbox.publish()
    await eventually(lambda: _async(on_seed(shelter, new.nats_seed)), what="the new NKey")
    second = await m.api("police").refer(["shelter"], REFERRAL)
    for rid in (first, second):
        await delivered(m, "police", rid)
    assert rows(m.database("shelter"), "inbox") == 2


async def _async(value: bool) -> bool:
    return value


async def test_machine_that_changed_hands_is_cut_off(mechanism: Mechanism) -> None:
    """A second machine running the shelter's agent from a copy of its key folder made before
    the rotation is cut off once the rotated identity is published: it can no longer log in,
    the bus sees the shelter once, and referrals go only to the agent that rotated."""
    m = mechanism
    shelter = m.agents["shelter"]
    old_machine = Agent.from_config_file(copy_agency_folder(m, "shelter", "old-machine"))
    await old_machine.start()
    try:
        assert m.sandbox.authority is not None
        watch = m.sandbox.authority.connections

        async def both_logged_in() -> bool:
            return (
                old_machine.transport.connected
                and old_machine.health()["instance"]["lease"] == "duplicate-instance"
                and watch.duplicates == {"shelter": 2}
            )

        await eventually(both_logged_in, what="the old machine to be seen on the bus")
        new = rotate(m, "shelter")
        await m.sandbox.publish()

        async def cut_off() -> bool:
            return (
                not old_machine.transport.connected
                and old_machine.health()["status"] == "degraded"
                and on_seed(shelter, new.nats_seed)
                and watch.duplicates == {}
            )

        await eventually(cut_off, what="the old machine to be cut off")
        old_seed = old_machine.transport.nats_seed
        assert old_seed is not None and await refused(m, "shelter", old_seed)
        rid = await m.api("police").refer(["shelter"], REFERRAL)
        await delivered(m, "police", rid)
        assert rows(m.database("shelter"), "inbox") == 1
        assert rows(old_machine.config.database, "inbox") == 0
    finally:
        await old_machine.stop()
