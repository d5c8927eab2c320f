"""Shared fixtures: real servers, started and stopped around each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.storage import Store
from broker import NatsServer, provision
from keys.subjects import inbox_subject

from . import samples
from .support import Mechanism, eventually, running_mechanism
from .test_agent import connect_as, delivered


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A running nats-server with its own store under `tmp_path` and the streams provisioned."""
    server = NatsServer(store_dir=tmp_path / "nats")
    server.start()
    try:
        await provision(server.url)
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An empty agent database in the test's folder, closed afterwards."""
    s = Store(tmp_path / "agent.db")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
async def mechanism(tmp_path: Path) -> AsyncIterator[Mechanism]:
    """Three agencies (police, shelter, coordinator) admitted to a signed directory, a bus
    secured from it, and their agents running and trusting the directory."""
    async with running_mechanism(tmp_path) as m:
        yield m


@dataclass(frozen=True)
class LedgerAccess:
    url: str
    token: str


@pytest.fixture
async def ledger_with_data(mechanism: Mechanism) -> AsyncIterator[LedgerAccess]:
    """A ledger holding the events of a real exchange (`fill_ledger`)."""
    yield await fill_ledger(mechanism)


async def fill_ledger(m: Mechanism) -> LedgerAccess:
    """Fill the ledger of `m` with the events of a real exchange: six referrals (two urgent)
    from police to the shelter, one to the co-ordinator, and one envelope the shelter
    rejected; every agent has proved its events are included. Returns how to reach it."""
    ids = []
    for n in range(6):
        referral = samples.referral(urgency="urgent" if n < 2 else "routine")
        ids.append(await m.api("police").refer(["shelter"], referral))
    service = samples.referral(referral_type="service_request")
    ids.append(await m.api("police").refer(["coordinator"], service))
    for rid in ids:
        await delivered(m, "police", rid)
    async with connect_as(m, "police") as nc:
        await nc.jetstream().publish(
            inbox_subject("shelter"), b"\x96not an envelope", headers={"Nats-Msg-Id": "bad-1"}
        )

    async def confirmed() -> bool:
        agents = m.agents.values()
        rejected = any(
            r.kind == "message.rejected"
            for r in m.sandbox.ledger.store.iter_rows()  # type: ignore[union-attr]
        )
        return rejected and all(
            a.store.unconfirmed_audit(1) == [] and a.store.pending_audit(1) == [] for a in agents
        )

    await eventually(confirmed, what="every event in the ledger and confirmed")
    assert m.sandbox.ledger is not None
    m.sandbox.ledger.checkpoint()
    return LedgerAccess(m.sandbox.ledger.url, m.sandbox.auditor_token)
