"""Services with capacity end to end (PROTOCOL.md §8.8): the shelter's agent signs and puts
its catalogue and capacity in the services bucket, the police agent follows the bucket,
verifies and lists them; a capacity that is not renewed turns unknown; the bus refuses a
put under another agency's key. Real nats-server, real agents, real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from agents.services import Services
from keys import DEFAULT_LIMITS
from keys.audit import decode_signed_event
from keys.catalogue import Capacity, Catalogue, claimed_number, sign_capacity, sign_catalogue
from keys.identity import AgencyKeys
from keys.subjects import SERVICES_BUCKET, capacity_key, catalogue_key, reply_prefix
from runtime import clock

from .support import Mechanism, eventually, query
from .test_catalogue import directory_of, service

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
    follower = Services(
        agency="police",
        keys=lambda: shelter,
        directory=lambda: trusted[0],
        limits=DEFAULT_LIMITS,
        on_published=lambda catalogue: None,
    )
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
