"""The ledger says on /healthz and /metrics when the bus refuses its NKey (RUNBOOK "Upgrade":
the operator has not admitted its identity yet), and recovers once the bus admits it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import aiohttp
import nats
from structlog.testing import capture_logs

from broker.authority import authorization_for
from broker.ledger import Ledger
from keys.audit import AuditEvent, new_event_id, sign_event
from keys.subjects import audit_subject, reply_prefix
from nrm import admin
from nrm.sandbox import Sandbox
from runtime import clock
from runtime.keydir import load_key_dir

from .support import eventually, prepared_mechanism
from .test_metrics import samples, value


async def healthz(http: aiohttp.ClientSession, ledger: Ledger) -> tuple[int, dict[str, object]]:
    async with http.get(ledger.url + "/healthz") as r:
        return r.status, json.loads(await r.read())


async def publish_police_event(sandbox: Sandbox) -> str:
    """A signed audit event of police on its audit subject; its event id."""
    police = sandbox.agencies["police"]
    keys = load_key_dir(police.key_dir, passphrase=police.passphrase())
    assert keys.nats_seed is not None
    event = AuditEvent(
        event_id=new_event_id(), agency="police", kind="referral.sent", time=clock.now()
    )
    nc = await nats.connect(
        **sandbox.bus_endpoint.connect_options(),
        nkeys_seed_str=keys.nats_seed.decode(),
        inbox_prefix=reply_prefix("police"),
    )
    try:
        await nc.jetstream().publish(
            audit_subject("police"),
            sign_event(event, keys.signing_key),
            headers={"Nats-Msg-Id": event.event_id},
        )
    finally:
        await nc.close()
    return event.event_id


async def test_ledger_healthz_is_degraded_while_the_bus_refuses_it(tmp_path: Path) -> None:
    """A bus whose authorization does not list the ledger's NKey (`nrm bus up` without
    `--ledger-identity`): /healthz 503 degraded, `bus: refused`, `bus-refused`; the gauge
    says refused; `ledger_bus_refused` is logged once, however often the ledger retries.
    Once the bus admits it (a reload with its identity) it is ok and appends what waited."""
    sandbox = prepared_mechanism(tmp_path, admins=1, threshold=1)
    await sandbox.start_bus()
    assert sandbox.bus is not None and sandbox.authority is not None
    try:
        await sandbox.authority.stop()  # nothing else rewrites the bus's authorization
        sandbox.authority = None
        directory = admin.verified_draft(sandbox.admin)
        operator = load_key_dir(
            sandbox.admin.path / admin.OPERATOR_DIR, passphrase=sandbox.admin_passphrase
        )
        admitted = sandbox.services(operator)
        without_ledger = dataclasses.replace(admitted, ledgers=())
        sandbox.bus.reload(authorization_for(directory, services=without_ledger))
        waiting = await publish_police_event(sandbox)
        with capture_logs() as logs:
            ledger = await sandbox.start_ledger()
            ledger.bus_grace_seconds = 0.0  # the grace is for a reconnection, not this wait
            async with aiohttp.ClientSession() as http:
                seen: list[dict[str, object]] = []

                async def refused() -> bool:
                    status, health = await healthz(http, ledger)
                    seen[:] = [health]
                    return (
                        status == 503
                        and health["status"] == "degraded"
                        and health["bus"] == "refused"
                        and "bus-refused" in health["reasons"]  # type: ignore[operator]
                        and ledger.follower.link.state == "refused"
                        and ledger.bus_link.attempts >= 2  # retried, logged once (below)
                    )

                await eventually(refused, what=f"a refused bus on /healthz ({seen})")
                # Within the grace the state is said, not a reason (no directory yet is one).
                ledger.bus_grace_seconds = 3600.0
                _, health = await healthz(http, ledger)
                assert (health["bus"], health["reasons"]) == ("refused", ["no-directory"])
                ledger.bus_grace_seconds = 0.0
                async with http.get(
                    ledger.url + "/metrics",
                    headers={"Authorization": f"Bearer {sandbox.auditor_token}"},
                ) as r:
                    scraped = samples(await r.text())
                assert value(scraped, "nrm_ledger_bus_state", state="refused") == 1
                assert value(scraped, "nrm_ledger_bus_state", state="connected") == 0
                assert not ledger.store.has_event(waiting)

                sandbox.bus.reload(authorization_for(directory, services=admitted))

                async def admitted_and_appended() -> bool:
                    status, health = await healthz(http, ledger)
                    seen[:] = [health]
                    return (
                        status == 200
                        and health["status"] == "ok"
                        and health["bus"] == "connected"
                        and ledger.store.has_event(waiting)
                    )

                await eventually(admitted_and_appended, what=f"the ledger admitted ({seen})")
        changes = [
            (e["connection"], e["event"], e.get("error"))
            for e in logs
            if str(e["event"]).startswith("ledger_bus_") and e.get("service") == "ledger"
        ]
        for connection in ("audit", "directory"):
            assert [ev for c, ev, _ in changes if c == connection] == [
                "ledger_bus_refused",
                "ledger_bus_connected",
            ], changes
        assert not [e for e in logs if e["event"] == "bus_error"]
        assert all(set(e) <= {"event", "log_level", "service", "connection", "state",
                              "previous", "attempts", "error", "detail"}
                   for e in logs if str(e["event"]).startswith("ledger_bus_"))  # fmt: skip
        refused = [e for e in logs if e["event"] == "ledger_bus_refused"]
        assert all("Authorization Violation" in e["detail"] for e in refused), refused
    finally:
        await sandbox.stop_all()
