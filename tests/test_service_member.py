"""The referral's `service` member (PROTOCOL §8.2 step 5, §6.4): a referral names the
service it asks for; its sender refuses one whose agency is not a recipient or whose current
verified catalogue does not list it; the receiver refuses one naming a service it does not
offer (`unknown-service`), stores nothing of it, and shows an accepted one to its systems.

The rules as tables first, then against real servers: a real nats-server, real agents, real
HTTP; the hostile referral is sealed with police's own keys past its agent."""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from agents import Agent
from agents import errors as E
from agents import planning as P
from agents import referral as R
from agents.inbound import ServiceView, check
from agents.messages import REFERRAL
from agents.storage import Store
from keys import DEFAULT_LIMITS
from keys.audit import decode_signed_event
from keys.codec import canonical_json
from keys.errors import UnknownServiceError
from runtime import clock

from . import samples
from .support import (
    TEST_LIMITS,
    Mechanism,
    agency_keys,
    eventually,
    running_mechanism,
    sealed,
    webhook_receiver,
)
from .test_sender_scope import held, publish, rejected, rejections
from .test_services import SERVICE

OFFERED = SERVICE["service_id"]
UNLISTED = "0123456789abcdef"


def named(agency: str, service_id: str, **routing: Any) -> dict[str, Any]:
    """The demo referral naming `service_id` of `agency`."""
    return samples.referral(service={"agency": agency, "service_id": service_id}, **routing)


# --- the rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "member",
    [
        pytest.param({"agency": "shelter"}, id="no service_id"),
        pytest.param({"service_id": OFFERED}, id="no agency"),
        pytest.param({"agency": "shelter", "service_id": OFFERED[:15]}, id="15 hex"),
        pytest.param({"agency": "shelter", "service_id": OFFERED.upper()}, id="upper case"),
        pytest.param({"agency": "Shelter", "service_id": OFFERED}, id="not an agency id"),
        pytest.param({"agency": "shelter", "service_id": OFFERED, "free": 1}, id="extra member"),
    ],
)
@pytest.mark.parametrize("version", R.SCHEMA_VERSIONS)
def test_the_member_s_shape(member: dict[str, Any], version: str) -> None:
    """Both schema versions define `service` as exactly an agency id and 16 lowercase hex;
    anything else is refused, naming the member."""
    with pytest.raises(R.ReferralInvalid) as refused:
        R.validate_referral(samples.referral(service=member, schema_version=version))
    assert any(p.startswith("/service") for p in refused.value.problems), refused.value.problems


def test_the_member_travels_in_the_routing() -> None:
    """A valid member is the referral's `service` and goes in its routing part unchanged."""
    referral = R.validate_referral(named("shelter", OFFERED))
    assert referral.service == ("shelter", OFFERED)
    assert referral.routing()["service"] == {"agency": "shelter", "service_id": OFFERED}
    assert "service" not in R.validate_referral(samples.referral()).routing()


def _offered(agency: str, service_id: str) -> bool:
    return (agency, service_id) == ("shelter", OFFERED)


#: The sender's rule (§8.2 step 5): name -> (service named, recipients, what the refusal says
#: or None for sent).
SENDER_RULE: dict[str, tuple[tuple[str, str], tuple[str, ...], str | None]] = {
    "the shelter's listed service, the shelter a recipient: sent": (
        ("shelter", OFFERED),
        ("shelter", "coordinator"),
        None,
    ),
    "the shelter's service, the shelter not a recipient: refused": (
        ("shelter", OFFERED),
        ("coordinator",),
        "not among the recipients",
    ),
    "a service the shelter's catalogue does not list: refused": (
        ("shelter", UNLISTED),
        ("shelter",),
        "offers no service",
    ),
    "an agency with no catalogue, a recipient: refused": (
        ("coordinator", OFFERED),
        ("coordinator",),
        "offers no service",
    ),
}


@pytest.mark.parametrize("service,recipients,refusal", SENDER_RULE.values(), ids=SENDER_RULE)
def test_the_sender_s_rule(
    service: tuple[str, str], recipients: tuple[str, ...], refusal: str | None
) -> None:
    """The plan refuses a `service` whose agency is no recipient or whose current catalogue
    does not list it (ServiceNotOffered, member `service`), before anything else."""
    referral = R.validate_referral(named(*service))
    roles = {"shelter": ("ngo",), "coordinator": ("coordinator",)}

    def plan() -> P.Plan:
        return P.plan(
            referral, recipients=recipients, roles=roles, consent=None, now=0, offered=_offered
        )

    if refusal is None:
        assert [d.recipient for d in plan().deliveries] == list(recipients)
        return
    with pytest.raises(E.ServiceNotOffered, match=refusal) as refused:
        plan()
    assert refused.value.extra == {"member": "service"}


def test_by_default_no_service_is_offered() -> None:
    """A plan given no catalogue lookup refuses every `service` (fail closed)."""
    referral = R.validate_referral(named("shelter", OFFERED))
    with pytest.raises(E.ServiceNotOffered):
        P.plan(referral, recipients=["shelter"], roles={"shelter": ("ngo",)}, consent=None, now=0)


def _message(doc: dict[str, Any], roles: tuple[str, ...]) -> bytes:
    """`doc` as its sender's agent sends it to an agency holding `roles`."""
    referral = R.validate_referral(doc)
    body = R.minimise(referral.body, R.categories_for_roles(roles))
    return canonical_json(
        {"referral": {**referral.routing(), "referral_id": secrets.token_hex(16), "body": body}}
    )


def _view(own: frozenset[str]) -> ServiceView:
    return ServiceView(
        me="shelter", own=own.__contains__, is_provider=lambda a: a in ("shelter", "health")
    )


#: The receiver's rule (§6.4), at the shelter: name -> (service named, the shelter's view of
#: services, the refusal class or None for accepted).
RECEIVER_RULE: dict[str, tuple[tuple[str, str], ServiceView | None, type[Exception] | None]] = {
    "its own listed service: accepted": (("shelter", OFFERED), _view(frozenset({OFFERED})), None),
    "its own service it does not list: unknown-service": (
        ("shelter", UNLISTED),
        _view(frozenset({OFFERED})),
        UnknownServiceError,
    ),
    "its own service, no catalogue of its own: unknown-service": (
        ("shelter", OFFERED),
        _view(frozenset()),
        UnknownServiceError,
    ),
    "another provider's service: accepted (its catalogue is the sender's check)": (
        ("health", UNLISTED),
        _view(frozenset()),
        None,
    ),
    "a service of an agency with no provider role: unknown-service": (
        ("coordinator", OFFERED),
        _view(frozenset({OFFERED})),
        UnknownServiceError,
    ),
    "a service, with no services known: unknown-service": (
        ("shelter", OFFERED),
        None,
        UnknownServiceError,
    ),
}


@pytest.mark.parametrize("service,view,refusal", RECEIVER_RULE.values(), ids=RECEIVER_RULE)
def test_the_receiver_s_rule(
    service: tuple[str, str], view: ServiceView | None, refusal: type[Exception] | None
) -> None:
    """The shelter judges the `service` of a referral it receives as §6.4 says."""
    data = _message(named(*service), ("ngo",))
    kwargs: dict[str, Any] = {"roles": ("ngo",), "limits": DEFAULT_LIMITS, "services": view}
    if refusal is None:
        check(REFERRAL, data, **kwargs)
        return
    with pytest.raises(refusal) as refused:
        check(REFERRAL, data, **kwargs)
    assert type(refused.value) is refusal


def test_own_services_are_remembered_for_a_message_s_life(tmp_path: Path) -> None:
    """The provider's record of its own service ids (SQLite, across a restart): a service
    its newest catalogue left out stands for referrals created since it was left out, not
    before; one left out before `forget` is dropped; one listed again stands again."""
    path = tmp_path / "agent.db"
    store = Store(path, agency="shelter")
    store.list_own_services([OFFERED, UNLISTED], now=100, forget=0)
    store.list_own_services([UNLISTED], now=200, forget=0)  # OFFERED left out at 200
    store.close()
    again = Store(path, agency="shelter")
    assert again.own_service_listed(OFFERED, since=200)
    assert not again.own_service_listed(OFFERED, since=201)
    assert again.own_service_listed(UNLISTED, since=10**9)  # listed now
    assert not again.own_service_listed("fedcba9876543210", since=0)  # never listed
    again.list_own_services([], now=300, forget=250)  # OFFERED (left out at 200) dropped
    assert not again.own_service_listed(OFFERED, since=0)
    assert again.own_service_listed(UNLISTED, since=300)
    again.list_own_services([OFFERED], now=400, forget=0)
    assert again.own_service_listed(OFFERED, since=10**9)
    again.close()


# --- against real servers -------------------------------------------------------------------

#: The shelter's webhook events as its agent sent them.
EVENTS: list[dict[str, Any]] = []


async def _collect(request: web.Request) -> web.Response:
    EVENTS.append(json.loads(await request.read()))
    return web.Response(status=200)


@contextlib.asynccontextmanager
async def publishing(
    tmp_path: Path, limits: dict[str, int | float] | None = None
) -> AsyncIterator[Mechanism]:
    """The mechanism (the agents under `limits`), the shelter's webhooks collected in
    EVENTS, the shelter's catalogue (SERVICE) published and verified at the police."""
    EVENTS.clear()
    async with (
        webhook_receiver(_collect) as url,
        running_mechanism(tmp_path, webhooks={"shelter": url}, limits=limits) as m,
    ):
        status, body, _ = await m.api("shelter").call(
            "PUT", "/v1/catalogue", json={"services": [SERVICE]}
        )
        assert status == 200, body

        async def police_knows_it() -> bool:
            return m.agents["police"].services.offers("shelter", OFFERED)

        await eventually(police_knows_it, what="the shelter's catalogue at the police")
        yield m


@pytest.fixture
async def published(tmp_path: Path) -> AsyncIterator[Mechanism]:
    async with publishing(tmp_path) as m:
        yield m


async def _submit(m: Mechanism, recipients: list[str], doc: dict[str, Any]) -> tuple[int, Any]:
    status, body, _ = await m.api("police").call(
        "POST", "/v1/referrals", json={"recipients": recipients, "referral": doc}
    )
    return status, body


async def _received(m: Mechanism, agency: str, rid: str) -> dict[str, Any]:
    async def there() -> bool:
        return any(i["id"] == rid for i in await m.api(agency).inbox())

    await eventually(there, what=f"the referral at {agency}")
    status, body, _ = await m.api(agency).call("GET", f"/v1/referrals/{rid}?sender=police")
    assert status == 200, body
    return dict(body)


async def test_a_referral_asks_for_a_service(published: Mechanism) -> None:
    """Police's referral naming a service is refused 422 (member `service`, nothing sent)
    when the shelter is not a recipient, when its catalogue lists no such service, and when
    the agency named publishes none; naming the shelter's service, it reaches the shelter and
    the co-ordinator, whose API shows it, and the shelter's referral.received webhook names
    it; the shelter may still decline it `no-capacity`."""
    m = published
    member = {"agency": "shelter", "service_id": OFFERED}
    for recipients, doc, said in (
        (["coordinator"], named("shelter", OFFERED), "not among the recipients"),
        (["shelter"], named("shelter", UNLISTED), "offers no service"),
        (["coordinator"], named("coordinator", OFFERED), "offers no service"),
    ):
        status, problem = await _submit(m, recipients, doc)
        assert status == 422 and problem["member"] == "service", problem
        assert said in problem["detail"], problem
    status, listing, _ = await m.api("police").call("GET", "/v1/referrals")
    assert (status, listing["items"]) == (200, [])  # nothing was sent, nothing kept

    rid = await m.api("police").refer(["shelter", "coordinator"], named("shelter", OFFERED))
    for agency in ("shelter", "coordinator"):
        got = await _received(m, agency, rid)
        assert got["service"] == member and got["referral"]["service"] == member, got
    plain = await m.api("police").refer(["shelter"], samples.referral())
    assert (await _received(m, "shelter", plain))["service"] is None

    def hooks() -> list[dict[str, Any]]:
        return [e for e in EVENTS if e["type"] == "referral.received"]

    async def told() -> bool:
        return {e["data"]["referral_id"] for e in hooks()} >= {rid, plain}

    await eventually(told, what="the shelter's referral.received webhooks")
    by_id = {e["data"]["referral_id"]: e["data"] for e in hooks()}  # at least once: by id
    assert by_id[rid]["service"] == member
    assert "service" not in by_id[plain]

    # Asked for a service, the shelter may still decline for want of a place.
    shelter = m.api("shelter")
    for step in ({"to": "acknowledged"}, {"to": "declined", "reason": "no-capacity"}):
        status, body, _ = await shelter.call("POST", f"/v1/referrals/{rid}/transitions", json=step)
        assert status == 202, body

    async def declined_at_police() -> bool:
        status, body, _ = await m.api("police").call("GET", f"/v1/referrals/{rid}")
        states = {r["agency"]: r["state"] for r in body["recipients"]}
        return status == 200 and states["shelter"] == "declined"

    await eventually(declined_at_police, what="police to see the shelter's no-capacity")


#: Values of the sample referral's body that are personal data: none may reach a log line or
#: an audit event.
PERSONAL = (
    samples.BODY["names"]["given_names"],
    samples.BODY["names"]["family_name"],
    samples.BODY["safe_contact"]["details"],
    samples.BODY["health_needs"]["notes"],
    samples.BODY["narrative"],
)


def _audited(db: Path, kind: str) -> list[Any]:
    """The events of `kind` the agent audited, and fails unless no personal value of the
    sample body is in any event it audited (as signed, bytes)."""
    conn = sqlite3.connect(db)
    try:
        events = [bytes(r[0]) for r in conn.execute("SELECT event FROM audit_outbox")]
    finally:
        conn.close()
    leaked = [v for v in PERSONAL for e in events if v.encode() in e]
    assert leaked == [], leaked
    return [e for e in (decode_signed_event(e)[0] for e in events) if e.kind == kind]


async def test_a_service_the_receiver_does_not_offer_is_refused(published: Mechanism) -> None:
    """Sealed with police's own keys past its agent, a referral naming a service the
    shelter's catalogue does not list, or a service of the co-ordinator (no provider role),
    is refused by the shelter as `unknown-service`, nothing of it stored, no personal value in
    its logs or audit events; naming the shelter's listed service the same way, it is
    accepted. Police's agent with its own check switched off (an agency's agent that does not
    check, say) sends one naming a service the shelter does not list: the shelter refuses it
    and tells police, whose copy fails with the reason (`delivery.failed` audited)."""
    m = published
    police = agency_keys(m, "police")

    def hostile(service: tuple[str, str]) -> tuple[str, bytes]:
        rid = uuid.uuid4().hex
        doc = {**json.loads(_message(named(*service), ("ngo",)))}
        doc["referral"]["referral_id"] = rid
        return rid, sealed(m, police, "shelter", REFERRAL, canonical_json(doc))

    with capture_logs() as logs:
        for service in (("shelter", UNLISTED), ("coordinator", OFFERED)):
            rid, data = hostile(service)
            await publish(m, "police", "shelter", data)
            await rejected(m, "shelter", data, "unknown-service")
            assert all(rows == [] for rows in held(m.database("shelter"), "police", rid).values())
    said = [json.dumps(e, default=str) for e in logs]
    assert [v for v in PERSONAL for line in said if v in line] == []
    assert len(_audited(m.database("shelter"), "message.rejected")) >= 2
    rid, data = hostile(("shelter", OFFERED))
    await publish(m, "police", "shelter", data)
    assert (await _received(m, "shelter", rid))["service"]["service_id"] == OFFERED

    m.agents["police"].desk.offers = lambda agency, service_id: True  # checks nothing
    sent = await m.api("police").refer(["shelter"], named("shelter", UNLISTED))

    async def police_told() -> bool:
        status, body, _ = await m.api("police").call("GET", f"/v1/referrals/{sent}")
        (copy,) = body["recipients"]
        return status == 200 and (copy["status"], copy.get("failure")) == (
            "failed",
            "unknown-service",
        )

    await eventually(police_told, what="police to learn the shelter refused its copy")
    failed = _audited(m.database("police"), "delivery.failed")
    assert [(e.referral_id, e.counterpart, e.reason) for e in failed] == [
        (sent, "shelter", "unknown-service")
    ]


async def _service_catalogue(m: Mechanism, *services: dict[str, Any]) -> None:
    status, body, _ = await m.api("shelter").call(
        "PUT", "/v1/catalogue", json={"services": list(services)}
    )
    assert status == 200, body


async def test_a_service_left_out_since_still_stands_for_a_referral_in_flight(
    published: Mechanism,
) -> None:
    """The shelter publishes its catalogue again without SERVICE: a referral naming it that
    police checked against the version before (sealed past police's agent, as one in flight
    would be) is accepted all the same; a service no catalogue of the shelter ever listed is
    still refused `unknown-service`."""
    m = published
    other = {**SERVICE, "service_id": UNLISTED[::-1]}
    await _service_catalogue(m, other)
    police = agency_keys(m, "police")
    for service_id, refused in ((OFFERED, False), (UNLISTED, True)):
        rid = uuid.uuid4().hex
        doc = json.loads(_message(named("shelter", service_id), ("ngo",)))
        doc["referral"]["referral_id"] = rid
        data = sealed(m, police, "shelter", REFERRAL, canonical_json(doc))
        await publish(m, "police", "shelter", data)
        if refused:
            await rejected(m, "shelter", data, "unknown-service")
        else:
            assert (await _received(m, "shelter", rid))["service"]["service_id"] == service_id


async def test_a_referral_waits_for_the_provider_s_own_catalogue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A referral naming the shelter's service is sent while the shelter's agent is stopped
    and stays on its inbox longer than the grace a message is held back within (one second
    here); the agent starts again eight days later on its clock, past its own catalogue's
    life too (the bucket's copy, expired, is refused when read back). The agent judges
    nothing of its inbox before it read the services bucket through (`services_read` logged
    before the referral is received) and accepts the referral: its own catalogue listed the
    service within a message's life."""
    offset = tmp_path / "clock-offset"
    monkeypatch.setenv(clock.ENV, str(offset))
    later = DEFAULT_LIMITS.catalogue_lifetime_seconds + 24 * 3600
    assert later < DEFAULT_LIMITS.message_ttl_seconds  # the referral has not expired
    limits = {**TEST_LIMITS, "unknown_key_grace_seconds": 1}
    async with publishing(tmp_path, limits) as m:
        await m.stop("shelter")
        rid = await m.api("police").refer(["shelter"], named("shelter", OFFERED))

        async def queued() -> bool:
            status, body, _ = await m.api("police").call("GET", f"/v1/referrals/{rid}")
            return status == 200 and body["recipients"][0]["status"] == "sent"

        await eventually(queued, what="the copy on the shelter's inbox stream")
        stored = time.time()  # the bus stored it before; the grace is real time on the bus

        async def past_the_grace() -> bool:
            return time.time() - stored > limits["unknown_key_grace_seconds"]

        await eventually(past_the_grace, what="the copy to wait longer than the grace")
        clock.set_offset(offset, later)
        unstarted = Agent.from_config_file(m.setups["shelter"].config_path)
        try:  # what an operator sees while the inbox waits for the services bucket
            health = unstarted.health()
            assert health["status"] == "degraded" and "services-unread" in health["reasons"]
        finally:
            await unstarted.stop()
        with capture_logs() as logs:
            await m.start("shelter")
            got = await _received(m, "shelter", rid)
            events = [e["event"] for e in logs if e.get("agency") == "shelter"]
        assert got["service"] == {"agency": "shelter", "service_id": OFFERED}
        assert "services-unread" not in m.agents["shelter"].health()["reasons"]
        assert events.index("services_read") < events.index("referral_received"), events
        assert not m.agents["shelter"].services.offers("shelter", OFFERED)  # expired
        assert [r for r, _ in rejections(m.database("shelter")) if r == "unknown-service"] == []
