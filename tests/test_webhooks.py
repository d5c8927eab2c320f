"""Webhook delivery against a real aiohttp receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from agents.store import Store
from agents.webhooks import (
    StaleWebhookError,
    WebhookEvent,
    WebhookSender,
    WebhookSettings,
    WebhookSignatureError,
    WebhookTarget,
    enqueue,
    new_event_id,
    sign,
    verify_signature,
)

from .support import free_port

SECRET = b"webhook-test-secret-0123456789"
FAST = WebhookSettings(retry_initial_seconds=0.05, retry_max_seconds=0.2, poll_seconds=0.1)


@dataclass
class Receiver:
    """Records every request; answers the queued statuses first, then 200."""

    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)

    def ids(self) -> list[str]:
        return [json.loads(body)["id"] for _, body in self.requests]


async def serve(receiver: Receiver, port: int = 0) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `predicate` until it holds, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver()
    runner, port = await serve(r)
    try:
        yield r, f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


def event(n: int = 0) -> WebhookEvent:
    return WebhookEvent(
        id=new_event_id(),
        type="transition.received",
        created=1_700_000_000 + n,
        data={"referral_id": "0123456789abcdef0123456789abcdef", "n": n},
    )


def queue(store: Store, *events: WebhookEvent) -> None:
    with store.transaction() as db:
        for e in events:
            assert enqueue(db, e)


def outbox_state(store: Store, event_id: str) -> tuple[str, int | None]:
    row = store._db.execute(
        "SELECT state, delivered_at FROM webhook_outbox WHERE event_id = ?", (event_id,)
    ).fetchone()
    return row[0], row[1]


async def test_retried_until_2xx_with_same_id_and_valid_signature(
    store: Store, receiver: tuple[Receiver, str]
) -> None:
    """A receiver answering 500 twice then 200 gets the event three times, each with the same
    id and body and a valid signature, and the event is marked delivered once."""
    r, url = receiver
    r.statuses = [500, 500]
    e = event()
    sender = WebhookSender(store, targets=[WebhookTarget(url, SECRET)], settings=FAST)
    queue(store, e)
    await sender.start()
    try:
        await until(lambda: outbox_state(store, e.id)[0] == "delivered")
        await asyncio.sleep(0.3)  # nothing more arrives once delivered
    finally:
        await sender.stop()
    assert len(r.requests) == 3
    for headers, body in r.requests:
        assert headers["Content-Type"] == "application/json"
        assert headers["X-NRM-Event-Id"] == e.id
        verify_signature(SECRET, headers["X-NRM-Timestamp"], body, headers["X-NRM-Signature"])
        assert json.loads(body) == {
            "id": e.id,
            "type": "transition.received",
            "created": e.created,
            "data": {"referral_id": "0123456789abcdef0123456789abcdef", "n": 0},
        }
    assert len({body for _, body in r.requests}) == 1
    (attempts, last_status, delivered_at) = store._db.execute(
        "SELECT attempts, last_status, delivered_at FROM webhook_deliveries WHERE event_id = ?",
        (e.id,),
    ).fetchone()
    assert (attempts, last_status) == (3, 200)
    assert outbox_state(store, e.id) == ("delivered", delivered_at)


async def test_events_keep_their_order(store: Store, receiver: tuple[Receiver, str]) -> None:
    """Events arrive in the order they were queued, even when some need retries."""
    r, url = receiver
    r.statuses = [200, 503, 200, 500]
    events = [event(n) for n in range(6)]
    sender = WebhookSender(store, targets=[WebhookTarget(url, SECRET)], settings=FAST)
    await sender.start()
    try:
        queue(store, *events[:3])
        sender.wake()
        queue(store, *events[3:])
        sender.wake()
        await until(lambda: all(outbox_state(store, e.id)[0] == "delivered" for e in events))
    finally:
        await sender.stop()
    ids = r.ids()
    expected = [e.id for e in events]
    assert list(dict.fromkeys(ids)) == expected  # first arrivals in order
    assert ids == sorted(ids, key=expected.index)  # a retry never jumps ahead


async def test_receiver_down_then_up_gets_everything(store: Store) -> None:
    """Events queued while the receiver is down all arrive, in order, once it comes up."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    events = [event(n) for n in range(4)]
    sender = WebhookSender(store, targets=[WebhookTarget(url, SECRET)], settings=FAST)
    await sender.start()
    r = Receiver()
    runner: web.AppRunner | None = None
    try:
        queue(store, *events)
        sender.wake()
        await asyncio.sleep(0.5)  # several refused connections
        assert all(outbox_state(store, e.id)[0] == "queued" for e in events)
        (attempts,) = store._db.execute(
            "SELECT attempts FROM webhook_deliveries WHERE event_id = ?", (events[0].id,)
        ).fetchone()
        assert attempts >= 2
        runner, _ = await serve(r, port)
        await until(lambda: all(outbox_state(store, e.id)[0] == "delivered" for e in events))
    finally:
        await sender.stop()
        if runner is not None:
            await runner.cleanup()
    assert r.ids() == [e.id for e in events]


async def test_survives_restart(store: Store, receiver: tuple[Receiver, str]) -> None:
    """Queued events are kept in SQLite and sent by a later sender; duplicates are ignored."""
    r, url = receiver
    e = event()
    queue(store, e)
    with store.transaction() as db:
        assert not enqueue(db, e)  # the same id is stored once
    sender = WebhookSender(store, targets=[WebhookTarget(url, SECRET)], settings=FAST)
    await sender.start()
    try:
        await until(lambda: outbox_state(store, e.id)[0] == "delivered")
    finally:
        await sender.stop()
    assert r.ids() == [e.id]


async def test_every_url_gets_every_event(store: Store) -> None:
    """With two URLs, an event is marked delivered only when both have taken it."""
    up, down = Receiver(), Receiver()
    runner_up, port_up = await serve(up)
    port_down = free_port()
    targets = [
        WebhookTarget(f"http://127.0.0.1:{port_up}/hook", SECRET),
        WebhookTarget(f"http://127.0.0.1:{port_down}/hook", b"another-secret-0123456789"),
    ]
    e = event()
    queue(store, e)
    sender = WebhookSender(store, targets=targets, settings=FAST)
    await sender.start()
    runner_down: web.AppRunner | None = None
    try:
        await until(lambda: up.ids() == [e.id])
        await asyncio.sleep(0.2)
        assert outbox_state(store, e.id)[0] == "queued"
        runner_down, _ = await serve(down, port_down)
        await until(lambda: outbox_state(store, e.id)[0] == "delivered")
    finally:
        await sender.stop()
        await runner_up.cleanup()
        if runner_down is not None:
            await runner_down.cleanup()
    assert up.ids() == down.ids() == [e.id]
    headers, body = down.requests[0]
    verify_signature(
        b"another-secret-0123456789",
        headers["X-NRM-Timestamp"],
        body,
        headers["X-NRM-Signature"],
    )


BODY = b'{"id":"00","type":"consent.withdrawn","created":1,"data":{}}'


def test_signature_verifies() -> None:
    """A fresh, untouched request verifies; so does one of several rotated signatures."""
    now = int(time.time())
    header = sign(SECRET, now, BODY)
    verify_signature(SECRET, str(now), BODY, header)
    verify_signature(SECRET, str(now), BODY, "v1=" + "0" * 64 + ", " + header)


@pytest.mark.parametrize(
    ("name", "secret", "timestamp_delta", "body", "header_of"),
    [
        ("tampered body", SECRET, 0, BODY.replace(b"1", b"2"), None),
        ("wrong secret", b"not-the-secret-0123456789", 0, BODY, None),
        ("timestamp changed", SECRET, 1, BODY, None),
        ("missing header", SECRET, 0, BODY, ""),
        ("other scheme", SECRET, 0, BODY, "v0={mac}"),
        ("upper-case hex", SECRET, 0, BODY, "v1={MAC}"),
        ("truncated", SECRET, 0, BODY, "v1={short}"),
    ],
)
def test_signature_rejects_tampering(
    name: str, secret: bytes, timestamp_delta: int, body: bytes, header_of: str | None
) -> None:
    """Any change to the body, secret, timestamp or header fails verification."""
    now = int(time.time())
    good = sign(SECRET, now, BODY)
    mac = good.removeprefix("v1=")
    header = (
        good if header_of is None else header_of.format(mac=mac, MAC=mac.upper(), short=mac[:-2])
    )
    with pytest.raises(WebhookSignatureError):
        verify_signature(secret, str(now + timestamp_delta), body, header)


@pytest.mark.parametrize("age", [301, -301, 86400])
def test_signature_rejects_stale_timestamps(age: int) -> None:
    """A valid signature outside the tolerance window is refused as stale."""
    now = int(time.time())
    then = now - age
    header = sign(SECRET, then, BODY)
    with pytest.raises(StaleWebhookError):
        verify_signature(SECRET, str(then), BODY, header)
    verify_signature(SECRET, str(then), BODY, header, tolerance_seconds=abs(age) + 5)


@pytest.mark.parametrize("timestamp", ["", "12a", "-5", "1.5", "9" * 16])
def test_signature_rejects_malformed_timestamps(timestamp: str) -> None:
    """A timestamp that is not a plain decimal integer is refused."""
    with pytest.raises(WebhookSignatureError):
        verify_signature(SECRET, timestamp, BODY, "v1=" + "0" * 64)


def test_misuse_is_refused(store: Store) -> None:
    """Short secrets, bad URLs, no targets, unknown event types and bad ids are caller errors."""
    with pytest.raises(ValueError):
        WebhookSender(store, targets=[])
    with pytest.raises(ValueError):
        WebhookTarget("http://127.0.0.1/hook", b"short")
    with pytest.raises(ValueError):
        WebhookTarget("ftp://127.0.0.1/hook", SECRET)
    with pytest.raises(TypeError):
        verify_signature("text secret", "1", BODY, "v1=")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        WebhookEvent(id="x", type="referral.received", created=1, data={})
    with pytest.raises(ValueError):
        WebhookEvent(id=new_event_id(), type="referral.sent", created=1, data={})
    with pytest.raises(ValueError):
        WebhookEvent(id=new_event_id(), type="referral.received", created=1, data={"x": {1}}).body()


async def test_https_receivers_are_verified_against_the_ca_file(
    store: Store, tmp_path: Path
) -> None:
    """An https URL with `ca_file` (the receiver's CA) is delivered to; the same receiver
    named without it is not trusted by the system's CAs and gets nothing."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = ca.issue_cert("127.0.0.1").configure_cert  # (trustme) loads cert and key
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    app.router.add_post("/untrusted", r.handle)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server(context)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    port = runner.addresses[0][1]
    trusted = WebhookTarget(f"https://127.0.0.1:{port}/hook", SECRET, ca_file=tmp_path / "ca.pem")
    # another host name (one loop per host and port), the same receiver
    untrusted = WebhookTarget(f"https://localhost:{port}/untrusted", SECRET)
    sender = WebhookSender(store, targets=[trusted, untrusted], settings=FAST)
    e = event()
    queue(store, e)
    await sender.start()

    def attempts(url: str) -> tuple[int, int | None]:
        row = store._db.execute(
            "SELECT attempts, last_status FROM webhook_deliveries WHERE event_id = ? AND url = ?",
            (e.id, url),
        ).fetchone()
        return (0, None) if row is None else (row[0], row[1])

    try:
        await until(lambda: attempts(trusted.url)[1] == 200 and attempts(untrusted.url)[0] >= 2)
    finally:
        await sender.stop()
        await runner.cleanup()
    assert r.ids() == [e.id]  # from the trusted target only
    assert attempts(untrusted.url)[1] is None  # no answer: the certificate was refused
    with pytest.raises(ValueError, match="ca_file goes with an https URL"):
        WebhookTarget("http://127.0.0.1:1/hook", SECRET, ca_file=tmp_path / "ca.pem")
