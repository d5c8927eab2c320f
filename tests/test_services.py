"""Services with capacity end to end (PROTOCOL.md §8.8): the shelter's agent signs and puts
its catalogue and capacity in the services bucket, the police agent follows the bucket,
verifies and lists them; a capacity that is not renewed turns unknown; the bus refuses a
put under another agency's key. Real nats-server, real agents, real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from structlog.testing import capture_logs

from agents.errors import NotFound, Unavailable
from agents.services import Services
from broker import NatsServer
from keys import DEFAULT_LIMITS, Limits
from keys.audit import decode_signed_event
from keys.catalogue import Capacity, Catalogue, claimed_number, sign_capacity, sign_catalogue
from keys.directory import Directory
from keys.identity import AgencyKeys
from keys.subjects import (
    SERVICES_BUCKET,
    SERVICES_STREAM,
    capacity_key,
    catalogue_key,
    reply_prefix,
)
from nrm import admin
from runtime import clock
from runtime.backoff import Backoff
from runtime.jetstream import read_bucket

from .support import TEST_LIMITS, Mechanism, eventually, query, running_mechanism
from .test_catalogue import T0, directory_of, service
from .test_signed_history import publish, rotate

SERVICE = {
    "service_id": "5e1f0a2b3c4d5e6f",
    "type": "shelter",
    "languages": ["en", "ro"],
    "suitable_for": ["children", "women"],
    "accessibility": ["step_free"],
    "regions": ["XX-NO"],
    "capacity_unit": "places",
}
CAPACITY = f"/v1/services/{SERVICE['service_id']}/capacity"


def police_following(
    keys: AgencyKeys, directory: Callable[[], Directory], limits: Limits = DEFAULT_LIMITS
) -> Services:
    """The police's follower, with nothing to publish, trusting `directory()`."""
    return Services(
        agency="police",
        keys=lambda: keys,
        directory=directory,
        limits=limits,
        on_published=lambda catalogue: None,
    )


async def listed(m: Mechanism, agency: str, query: str) -> list[dict[str, Any]]:
    status, body, _ = await m.api(agency).call("GET", f"/v1/services{query}")
    assert status == 200, body
    items: list[dict[str, Any]] = body["items"]
    return items


async def test_a_provider_s_services_and_capacity_reach_every_agent(
    mechanism: Mechanism, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only a provider publishes, 422 naming the member for a bad service; the police lists
    the shelter's service with its capacity and sees an update; the bus refuses the police
    putting a catalogue under the shelter's key; once the shelter's agent stops, its capacity
    is unknown after the record expires (the clock moved, not waited for)."""
    m = mechanism
    shelter, police = m.api("shelter"), m.api("police")
    status, body, ctype = await police.call("PUT", "/v1/catalogue", json={"services": [SERVICE]})
    assert (status, ctype) == (422, "application/problem+json")  # the police provides none
    bad = {**SERVICE, "languages": ["ro", "en"]}
    status, body, _ = await shelter.call("PUT", "/v1/catalogue", json={"services": [bad]})
    assert status == 422 and body["member"] == "services[0]", body

    status, body, _ = await shelter.call("PUT", "/v1/catalogue", json={"services": [SERVICE]})
    assert status == 200 and body["version"] == 1, body
    status, body, _ = await shelter.call("PUT", CAPACITY, json={"free": 3, "total": 10})
    assert status == 200 and body["free"] == 3, body

    async def police_sees(free: int | None) -> bool:
        items = await listed(m, "police", "?type=shelter&language=ro&region=XX")
        shelters = [i for i in items if i["agency"] == "shelter"]
        return [i["capacity"] and i["capacity"]["free"] for i in shelters] == [free]

    await eventually(lambda: police_sees(3), what="the shelter's capacity at the police")
    [item] = await listed(m, "police", "?type=shelter&available=true&suitable_for=women")
    assert item["agency"] == "shelter" and item["catalogue_version"] == 1
    assert await listed(m, "police", "?type=legal") == []
    status, body, _ = await police.call("GET", "/v1/services?type=castle")
    assert status == 400, body

    # The bus lets no agency put under another's key (§5.1).
    nc = await nats.connect(
        m.bus.url,
        nkeys_seed_str=m.agents["police"].keys.nats_seed.decode(),  # type: ignore[union-attr]
        inbox_prefix=reply_prefix("police"),
        allow_reconnect=False,
    )
    try:
        kv = await nc.jetstream(timeout=2).key_value(SERVICES_BUCKET)
        with pytest.raises((nats.errors.Error, TimeoutError)):
            await kv.put(catalogue_key("shelter"), b"forged")
        entry = await kv.get(catalogue_key("shelter"))
        assert claimed_number(entry.value, capacity=False) == 1
        # Under its own key the police may put the shelter's signed catalogue: refused by
        # every agent (`unexpected`), which the update below, read after it, shows.
        await kv.put(catalogue_key("police"), entry.value)
    finally:
        await nc.close()

    status, body, _ = await shelter.call("PUT", CAPACITY, json={"free": 0, "total": 10})
    assert status == 200 and body["seq"] >= 2, body
    await eventually(lambda: police_sees(0), what="the capacity update at the police")
    assert await listed(m, "police", "?available=true") == []
    assert [i["agency"] for i in await listed(m, "police", "")] == ["shelter"]
    rows = query(m.database("shelter"), "SELECT event FROM audit_outbox ORDER BY seq")
    kinds = [decode_signed_event(bytes(r[0]))[0].kind for r in rows]
    assert kinds.count("catalogue.published") == 1  # one version; capacity is not audited

    async def coordinator_sees_update() -> bool:
        items = await listed(m, "coordinator", "?available=false")
        return any(i["agency"] == "shelter" and i["capacity"]["free"] == 0 for i in items)

    await eventually(coordinator_sees_update, what="the capacity update at the coordinator")
    assert [i["agency"] for i in await listed(m, "coordinator", "")] == ["shelter"]

    # Past half its life the running shelter agent signs the same counts again: the police
    # sees the renewal, never unknown.
    lifetime = DEFAULT_LIMITS.capacity_lifetime_seconds
    first_expiry = body["expires"]
    offset = tmp_path / "clock-offset"
    clock.set_offset(offset, lifetime // 2 + 60)
    monkeypatch.setenv(clock.ENV, str(offset))

    async def renewed() -> bool:
        [item] = await listed(m, "police", "?type=shelter")
        return bool(item["capacity"] and item["capacity"]["expires"] > first_expiry)

    await eventually(renewed, what="the renewed capacity at the police")
    [item] = await listed(m, "police", "?type=shelter")
    assert item["capacity"]["free"] == 0

    # The shelter's agent stops: once its last record expires the capacity is unknown.
    await m.stop("shelter")
    clock.set_offset(offset, lifetime // 2 + 60 + lifetime + 1)
    await eventually(lambda: police_sees(None), what="the expired capacity to show unknown")


def test_the_follower_judges_in_order_and_again_when_the_directory_changes() -> None:
    """A capacity read before its catalogue waits for it; an older catalogue is refused
    (the newer one stands); once the directory takes the provider's role away, its services
    are listed no more."""
    shelter = AgencyKeys.generate(agency="shelter", name="Shelter")
    trusted = [directory_of(shelter)]
    follower = police_following(shelter, lambda: trusted[0], DEFAULT_LIMITS)
    now, offered = clock.now(), service()
    v1, v2 = (Catalogue("shelter", v, now + 3600, (offered,)) for v in (1, 2))
    record = Capacity("shelter", offered.service_id, 1, 2, 5, now, now + 600)
    follower.offer(
        [(capacity_key("shelter", offered.service_id), sign_capacity(record, shelter.signing_key))]
    )
    assert follower.listing() == []  # waiting for its catalogue
    follower.offer([(catalogue_key("shelter"), sign_catalogue(v2, shelter.signing_key))])
    [item] = follower.listing(available=True)
    assert (item["catalogue_version"], item["capacity"]["free"]) == (2, 2)
    follower.offer([(catalogue_key("shelter"), sign_catalogue(v1, shelter.signing_key))])
    assert [i["catalogue_version"] for i in follower.listing()] == [2]  # rolled back: refused
    trusted[0] = directory_of(shelter, roles=("police",))
    follower.directory_changed()
    assert follower.listing() == []


OTHER = {**SERVICE, "service_id": "0a1b2c3d4e5f6071", "type": "legal"}


@contextlib.asynccontextmanager
async def bus_as(m: Mechanism, agency: str) -> AsyncIterator[Any]:
    """A JetStream context on a bus connection of `agency`'s own (its NATS key)."""
    nc = await nats.connect(
        m.bus.url,
        nkeys_seed_str=m.agents[agency].keys.nats_seed.decode(),  # type: ignore[union-attr]
        inbox_prefix=reply_prefix(agency),
        allow_reconnect=False,
    )
    try:
        yield nc.jetstream(timeout=2)
    finally:
        await nc.close()


def shelter_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if i["agency"] == "shelter"]


async def test_publishes_and_renewals_at_once_never_sign_one_number_twice(
    mechanism: Mechanism, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two catalogues published at once get two versions, and every agent takes the later;
    a capacity published while the renewal is due is not signed again at its `seq` with the
    old counts: the shelter and the police agree on the newest record. A bounded read of
    the bucket's stream reads on where it stopped."""
    m = mechanism
    services, shelter = m.agents["shelter"].services, m.api("shelter")
    status, body, _ = await shelter.call("PUT", "/v1/catalogue", json={"services": [SERVICE]})
    assert status == 200 and body["version"] == 1, body
    first, second = await asyncio.gather(
        services.publish_catalogue([SERVICE]), services.publish_catalogue([SERVICE, OTHER])
    )
    assert (first["version"], second["version"]) == (2, 3)
    status, body, _ = await shelter.call("PUT", CAPACITY, json={"free": 3, "total": 10})
    assert status == 200, body

    async def police_sees(version: int, free: int, seq: int | None = None) -> bool:
        items = shelter_items(await listed(m, "police", ""))
        capacity = [i["capacity"] for i in items if i["service_id"] == SERVICE["service_id"]]
        return (
            len(items) == 2
            and {i["catalogue_version"] for i in items} == {version}
            and bool(capacity and capacity[0])
            and capacity[0]["free"] == free
            and seq in (None, capacity[0]["seq"])
        )

    await eventually(lambda: police_sees(3, 3), what="catalogue version 3 at the police")

    # Past half the record's life: a publish and the renewal at once (the agent's own loop
    # may renew too). Each takes its number under the one lock.
    offset = tmp_path / "clock-offset"
    clock.set_offset(offset, DEFAULT_LIMITS.capacity_lifetime_seconds // 2 + 60)
    monkeypatch.setenv(clock.ENV, str(offset))
    assert services._js is not None
    published, _ = await asyncio.gather(
        services.publish_capacity(str(SERVICE["service_id"]), 1, 10),
        services._renew(services._js),
    )
    own = services.capacity[("shelter", str(SERVICE["service_id"]))]
    assert (own.seq, own.free) == (published["seq"], 1)
    await eventually(
        lambda: police_sees(3, 1, own.seq), what="the shelter's newest capacity at the police"
    )

    # A service that leaves the catalogue: its capacity is no longer this agency's to renew.
    other = str(OTHER["service_id"])
    await services.publish_capacity(other, 2, 4)
    assert ("shelter", other) in services.capacity
    assert (await services.publish_catalogue([SERVICE]))["version"] == 4
    assert ("shelter", other) not in services.capacity

    async with bus_as(m, "police") as js:
        whole, end = await read_bucket(js, SERVICES_BUCKET, 1, newest_only=False)
        head, after = await read_bucket(js, SERVICES_BUCKET, 1, newest_only=False, most=1)
        rest, end_too = await read_bucket(js, SERVICES_BUCKET, after, newest_only=False)
    assert len(head) == 1 and head + rest == whole and end_too == end


async def test_a_provider_s_services_outlive_the_key_that_first_signed_them(
    mechanism: Mechanism,
) -> None:
    """The shelter rotates its keys and its old key is revoked: its agent signs its
    catalogue and capacity again under the new key, so the police still lists them (and the
    shelter itself keeps its own), at a new version and the same counts."""
    m = mechanism
    shelter = m.api("shelter")
    status, body, _ = await shelter.call("PUT", "/v1/catalogue", json={"services": [SERVICE]})
    assert status == 200, body
    status, body, _ = await shelter.call("PUT", CAPACITY, json={"free": 3, "total": 10})
    assert status == 200, body
    old = m.agents["shelter"].keys.public.signing_kid
    await rotate(m, "shelter")
    admin.revoke_key(m.sandbox.admin, "shelter", old, reason="key compromised")
    version = await publish(m)

    async def listed_after_revocation(agency: str) -> bool:
        directory = m.agents[agency].trust.directory
        if directory is None or directory.version < version:
            return False
        items = shelter_items(await listed(m, agency, ""))
        seen = [
            (i["catalogue_version"] >= 2, i["capacity"] and i["capacity"]["free"]) for i in items
        ]
        return seen == [(True, 3)]

    await eventually(
        lambda: listed_after_revocation("police"), what="the shelter re-signed at the police"
    )
    await eventually(lambda: listed_after_revocation("shelter"), what="the shelter's own")


def test_a_capacity_record_whose_key_is_taken_away_is_listed_no_more() -> None:
    """The catalogue (signed by the key that stays) stands; the capacity record signed by
    the key the new directory no longer lists is dropped: the capacity shows unknown."""
    first = AgencyKeys.generate(agency="shelter", name="Shelter")
    second = AgencyKeys.generate(agency="shelter", name="Shelter")
    entry = directory_of(first).agency("shelter")
    [kept] = directory_of(second).agency("shelter").signing_keys
    both = dataclasses.replace(entry, signing_keys=(*entry.signing_keys, kept))
    trusted = [Directory(version=1, expires=T0 + 10**7, agencies=(both,))]
    follower = police_following(first, lambda: trusted[0], DEFAULT_LIMITS)
    now, offered = clock.now(), service()
    catalogue = Catalogue("shelter", 1, now + 3600, (offered,))
    record = Capacity("shelter", offered.service_id, 1, 2, 5, now, now + 600)
    follower.offer(
        [
            (catalogue_key("shelter"), sign_catalogue(catalogue, second.signing_key)),
            (
                capacity_key("shelter", offered.service_id),
                sign_capacity(record, first.signing_key),
            ),
        ]
    )
    [item] = follower.listing()
    assert item["capacity"]["free"] == 2
    trusted[0] = Directory(version=2, expires=T0 + 10**7, agencies=(entry_of(second),))
    with capture_logs() as logs:
        follower.directory_changed()
    [item] = follower.listing()
    assert item["capacity"] is None
    assert [(e["event"], e["service_id"], e["reason"]) for e in logs] == [
        ("service_entry_withdrawn", offered.service_id, "unknown-key")
    ]


def entry_of(keys: AgencyKeys) -> Any:
    return directory_of(keys).agency(keys.agency)


def test_the_follower_holds_a_bounded_number_of_values_unjudged() -> None:
    """Capacity records read before their catalogue wait, the newest
    `services_max_waiting` of them: the oldest are dropped, logged by ids only. A catalogue
    listing more services than `max_catalogue_services` is refused (`out-of-range`)."""
    shelter = AgencyKeys.generate(agency="shelter", name="Shelter")
    limits = dataclasses.replace(DEFAULT_LIMITS, services_max_waiting=3, max_catalogue_services=5)
    follower = police_following(shelter, lambda: directory_of(shelter), limits)
    now, offered = clock.now(), [service() for _ in range(6)]
    with capture_logs() as logs:
        follower.offer(
            [
                (
                    capacity_key("shelter", s.service_id),
                    sign_capacity(
                        Capacity("shelter", s.service_id, 1, 1, 5, now, now + 600),
                        shelter.signing_key,
                    ),
                )
                for s in offered[:5]
            ]
        )
    assert logs == [
        {
            "event": "service_entry_dropped",
            "log_level": "warning",
            "agency": "police",
            "provider": "shelter",
            "service_id": s.service_id,
            "reason": "too-many-waiting",
        }
        for s in offered[:2]
    ]
    too_many = Catalogue("shelter", 2, now + 3600, tuple(offered))
    with capture_logs() as logs:
        follower.offer([(catalogue_key("shelter"), sign_catalogue(too_many, shelter.signing_key))])
    assert [(e["event"], e["reason"]) for e in logs] == [("service_entry_refused", "out-of-range")]
    assert follower.listing() == []
    five = Catalogue("shelter", 1, now + 3600, tuple(offered[:5]))
    follower.offer([(catalogue_key("shelter"), sign_catalogue(five, shelter.signing_key))])
    known = {i["service_id"]: i["capacity"] is not None for i in follower.listing()}
    assert known == {s.service_id: i >= 2 for i, s in enumerate(offered[:5])}


@pytest.fixture
async def bounded(tmp_path: Path) -> AsyncIterator[Mechanism]:
    """The mechanism with agents that take catalogues of one service at most."""
    async with running_mechanism(
        tmp_path, limits={**TEST_LIMITS, "max_catalogue_services": 1}
    ) as m:
        yield m


async def test_a_catalogue_is_put_only_once_its_audit_event_is_written(
    bounded: Mechanism,
) -> None:
    """More services than the agent's bound: 422 naming `services`. While another
    connection holds the shelter's database, its audit event cannot be written: the answer
    is the 500 of any route whose write fails, and nothing is in the bucket; then the same
    request publishes version 1."""
    m = bounded
    shelter = m.api("shelter")
    status, body, ctype = await shelter.call(
        "PUT", "/v1/catalogue", json={"services": [OTHER, SERVICE]}
    )
    assert (status, ctype, body["member"]) == (422, "application/problem+json", "services")

    holder = sqlite3.connect(m.database("shelter"), isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        status, body, ctype = await shelter.call(
            "PUT", "/v1/catalogue", json={"services": [SERVICE]}
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (status, ctype) == (500, "application/problem+json"), body
    async with bus_as(m, "police") as js:
        kv = await js.key_value(SERVICES_BUCKET)
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get(catalogue_key("shelter"))
    status, body, _ = await shelter.call("PUT", "/v1/catalogue", json={"services": [SERVICE]})
    assert (status, body["version"]) == (200, 1), body
    rows = query(m.database("shelter"), "SELECT event FROM audit_outbox ORDER BY seq")
    kinds = [decode_signed_event(bytes(r[0]))[0].kind for r in rows]
    assert kinds.count("catalogue.published") == 1


@contextlib.asynccontextmanager
async def following(
    server: NatsServer, services: Services, each: Callable[[], object] = lambda: None
) -> AsyncIterator[tuple[Any, list[int]]]:
    """`services` following the bucket of `server` in a task (one connection, no auth):
    its JetStream context and how many passes the loop began (`each` called at each)."""
    nc = await nats.connect(server.url, allow_reconnect=False)
    js, passes, stop = nc.jetstream(timeout=2), [0], [False]

    def running() -> bool:
        passes[0] += 1
        each()
        return not stop[0]

    task = asyncio.create_task(services.run(js, running))
    try:
        yield js, passes
    finally:
        stop[0] = True
        services.wake()
        await task
        await nc.close()


def shelter_services(
    keys: AgencyKeys,
    directory: Callable[[], Directory | None],
    limits: Limits = DEFAULT_LIMITS,
    **kwargs: Any,
) -> tuple[Services, list[Catalogue]]:
    """The shelter's own Services, and the catalogues it audited (`catalogue.published`)."""
    published: list[Catalogue] = []
    services = Services(
        agency="shelter",
        keys=lambda: keys,
        directory=directory,
        limits=limits,
        on_published=published.append,
        **kwargs,
    )
    return services, published


async def test_the_publisher_is_ready_only_once_the_whole_bucket_is_read(
    nats_server: NatsServer,
) -> None:
    """Read one message at a time, the shelter's own catalogue (version 5) behind other
    agencies' values: a publish tried at every pass is refused (503) until the whole bucket
    was read, and the first taken signs version 6, never a number the bucket held."""
    shelter = AgencyKeys.generate(agency="shelter", name="Shelter")
    limits = dataclasses.replace(DEFAULT_LIMITS, services_read_batch=1)
    services, _ = shelter_services(shelter, lambda: directory_of(shelter), limits)
    nc = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        kv = await nc.jetstream(timeout=2).key_value(SERVICES_BUCKET)
        for n in range(3):
            await kv.put(capacity_key("police", f"{n:016x}"), b"not a record")
        await kv.put(catalogue_key("coordinator"), b"not a catalogue")
        lifetime = DEFAULT_LIMITS.catalogue_lifetime_seconds  # not due for renewal
        v5 = Catalogue("shelter", 5, clock.now() + lifetime, (service(),))
        await kv.put(catalogue_key("shelter"), sign_catalogue(v5, shelter.signing_key))
    finally:
        await nc.close()

    attempts: list[asyncio.Task[dict[str, Any]]] = []

    def publish_once_ready() -> None:
        if all(t.done() and t.exception() is not None for t in attempts):
            attempts.append(asyncio.ensure_future(services.publish_catalogue([SERVICE])))

    async def taken() -> bool:
        return any(t.done() and t.exception() is None for t in attempts)

    async with following(nats_server, services, publish_once_ready) as (js, _):
        await eventually(taken, what="a publish taken")
        *refused, first = attempts
        assert all(isinstance(t.exception(), Unavailable) for t in refused)
        assert first.result()["version"] == 6 and len(refused) >= 5  # a pass per message
        kv = await js.key_value(SERVICES_BUCKET)
        entry = await kv.get(catalogue_key("shelter"))
        assert entry.value is not None and claimed_number(entry.value, capacity=False) == 6


async def test_a_renewal_the_bucket_refuses_is_tried_again_only_after_the_back_off(
    nats_server: NatsServer,
) -> None:
    """The shelter's catalogue (version 9) is due for renewal and the bucket is full: the
    renewal (version 10, a byte longer) is refused by the bus. Over many passes it is
    signed and audited once (the next try waits for the back-off, here a day: far longer
    than any run of the test, however loaded the machine), logged
    by ids with a reason."""
    shelter = AgencyKeys.generate(agency="shelter", name="Shelter")
    services, published = shelter_services(
        shelter,
        lambda: directory_of(shelter),
        renewal_backoff=Backoff(86_400.0, 86_400.0, uniform=lambda: 1.0),
    )
    nc = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=2)
        due = Catalogue("shelter", 9, clock.now() + 600, (service(),))  # past half its life
        await js.publish(
            f"$KV.{SERVICES_BUCKET}.{catalogue_key('shelter')}",
            sign_catalogue(due, shelter.signing_key),
        )
        info = await js.stream_info(SERVICES_STREAM)
        assert info.state.bytes > 0
        await js.update_stream(info.config.evolve(max_bytes=info.state.bytes))
    finally:
        await nc.close()

    with capture_logs() as logs:
        async with following(nats_server, services) as (_, passes):

            async def polled(n: int) -> bool:
                services.wake()
                return passes[0] >= n

            await eventually(lambda: polled(1), what="the first pass")
            target = passes[0] + 30
            await eventually(lambda: polled(target), what="thirty passes more")
    assert [c.version for c in published] == [10]
    failed = [e for e in logs if e["event"] == "service_renewal_failed"]
    assert [(e["provider"], e["service_id"], e["reason"], e["error"]) for e in failed] == [
        ("shelter", None, "put-failed", "ServiceUnavailableError")
    ]
    assert services.catalogues["shelter"].version == 9  # the bucket's stands


def test_a_flood_of_capacity_records_evicts_only_the_flooder_s_own() -> None:
    """Waiting capacity records are bounded per provider (`max_catalogue_services`) and in
    all (`services_max_waiting`, the largest holder's oldest dropped): another provider's
    flood, and before any directory a non-provider's, evicts only its own. Once a directory
    is trusted, records of agencies holding no provider role are refused by ids and reason,
    and the shelter's record, waiting all along, is accepted with its catalogue."""
    shelter, hostel, police = (
        AgencyKeys.generate(agency=a, name=a.title()) for a in ("shelter", "hostel", "police")
    )
    entries = (
        entry_of(shelter),
        entry_of(hostel),
        directory_of(police, roles=("police",)).agency("police"),
    )
    trusted: list[Directory | None] = [None]
    limits = dataclasses.replace(DEFAULT_LIMITS, services_max_waiting=3, max_catalogue_services=2)
    follower = police_following(police, lambda: trusted[0], limits)
    now, offered = clock.now(), service()
    record = Capacity("shelter", offered.service_id, 1, 2, 5, now, now + 600)
    shelter_record = (
        capacity_key("shelter", offered.service_id),
        sign_capacity(record, shelter.signing_key),
    )

    def flood(agency: str, n: int) -> list[tuple[str, bytes]]:
        return [(capacity_key(agency, os.urandom(8).hex()), b"junk") for _ in range(n)]

    with capture_logs() as logs:
        follower.offer([shelter_record, *flood("police", 4), *flood("coordinator", 4)])
    assert {(e["event"], e["reason"]) for e in logs} == {
        ("service_entry_dropped", "too-many-waiting")
    }
    assert "shelter" not in {e["provider"] for e in logs}

    trusted[0] = Directory(version=1, expires=T0 + 10**7, agencies=entries)
    with capture_logs() as logs:
        follower.directory_changed()
        follower.offer(flood("hostel", 5))
        follower.offer(flood("police", 2))
    assert {e["provider"] for e in logs if e["event"] == "service_entry_dropped"} == {"hostel"}
    refused = {(e["provider"], e["reason"]) for e in logs if e["event"] == "service_entry_refused"}
    assert refused == {("police", "not-for-this-role"), ("coordinator", "unknown-key")}
    catalogue = Catalogue("shelter", 1, now + 3600, (offered,))
    follower.offer([(catalogue_key("shelter"), sign_catalogue(catalogue, shelter.signing_key))])
    [item] = follower.listing()
    assert item["capacity"]["free"] == 2


async def test_a_capacity_put_while_the_provider_role_goes_leaves_no_capacity_behind(
    nats_server: NatsServer,
) -> None:
    """The directory takes the shelter's provider role away while its capacity put is in
    flight: the put is not taken as accepted (404: the catalogue was withdrawn), no
    capacity is held without its catalogue, and the next directory change judges again
    without failing."""
    shelter = AgencyKeys.generate(agency="shelter", name="Shelter")
    trusted = [directory_of(shelter)]
    services, _ = shelter_services(shelter, lambda: trusted[0])
    service_id = str(SERVICE["service_id"])
    key = capacity_key("shelter", service_id)

    async def catalogue_published() -> bool:
        try:
            await services.publish_catalogue([SERVICE])
        except Unavailable:
            return False
        return True

    async with following(nats_server, services):
        await eventually(catalogue_published, what="the shelter's catalogue published")
        put = asyncio.create_task(services.publish_capacity(service_id, 1, 5))
        for _ in range(100):  # its first step: up to the put's answer awaited
            if key in services._claimed:
                break
            await asyncio.sleep(0)
        assert key in services._claimed and not put.done()
        trusted[0] = directory_of(shelter, roles=("police",))
        services.directory_changed()
        with pytest.raises(NotFound):
            await put
        assert services.capacity == {} and services.listing() == []
        trusted[0] = dataclasses.replace(trusted[0], version=2)
        services.directory_changed()
        assert services.capacity == {}
