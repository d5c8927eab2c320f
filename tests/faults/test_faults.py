"""Fault injection: referrals flow police -> shelter while nats-server, both agents and the
ledger are killed with SIGKILL and restarted at random moments. Every referral accepted with
202 must end up stored once, delivered with its receipt, in the ledger with proofs, and
announced to the shelter's system by webhook under one stable id."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker import NatsServer
from nrm.sandbox import prepare_mechanism

from ..support import AGENCIES
from .harness import (
    FAULT_LIMITS,
    Counts,
    Load,
    Proc,
    Webhooks,
    check,
    free_port,
    launch,
    report,
    settle,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

#: Bounds of the run: how many referrals at most, offered at what rate, for how long.
TOTAL = 2400
RATE = 40.0
KILLS_EACH = 3
SETTLE_SECONDS = 90.0


async def chaos(
    rng: random.Random,
    targets: dict[str, tuple[Callable[[], None], Callable[[], Any]]],
    ready: dict[str, Callable[[], Any]],
    t0: float,
    recoveries: list[dict[str, Any]],
) -> None:
    """Kill -9 each target KILLS_EACH times in random order at random moments; restart it
    after a random pause and measure how long until it serves again."""
    order = [name for name in targets for _ in range(KILLS_EACH)]
    rng.shuffle(order)
    for name in order:
        await asyncio.sleep(rng.uniform(0.5, 2.5))
        kill, restart = targets[name]
        killed = time.monotonic()
        kill()
        down = rng.uniform(0.1, 1.2)
        await asyncio.sleep(down)
        await restart()
        await ready[name]()
        recoveries.append(
            {
                "target": name,
                "at": killed - t0,
                "down": down,
                "recovery": time.monotonic() - killed,
            }
        )


async def test_nothing_lost_or_duplicated_under_kills(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("NRM_FAULT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)  # noqa: S311 - chaos timing, not cryptography
    sandbox = prepare_mechanism(tmp_path / "m", AGENCIES, admins=1, threshold=1)
    webhooks = Webhooks()
    procs: dict[str, Proc] = {}
    async with aiohttp.ClientSession() as http:
        hook_url = await webhooks.start()
        await sandbox.start_bus()
        try:
            ports = {"police": free_port(), "shelter": free_port(), "ledger": free_port()}
            ledger_url = f"http://127.0.0.1:{ports['ledger']}"
            ledger_config = sandbox.write_ledger_config(
                checkpoint_interval=0.5, bind=f"127.0.0.1:{ports['ledger']}"
            )
            sandbox.write_agent_configs(
                limits=FAULT_LIMITS,
                ledger_missing_after=600,
                webhooks={"shelter": hook_url},
                ledger_url=ledger_url,
                api_ports={a: ports[a] for a in ("police", "shelter")},
            )
            procs.update(
                await launch(http, sandbox, tmp_path, ports=ports, ledger_config=ledger_config)
            )

            bus = sandbox.bus
            assert bus is not None
            targets = {name: _proc_actions(proc) for name, proc in procs.items()}
            targets["nats"] = _bus_actions(bus)
            ready: dict[str, Callable[[], Any]] = {
                name: functools.partial(proc.wait_ready, http) for name, proc in procs.items()
            }
            ready["nats"] = lambda: asyncio.gather(
                procs["police"].wait_ready(http), procs["shelter"].wait_ready(http)
            )
            police = sandbox.agencies["police"]
            load = Load(http, f"http://127.0.0.1:{ports['police']}", police.token, TOTAL, RATE)
            counts = Counts()
            t0 = time.monotonic()
            chaos_task = asyncio.create_task(chaos(rng, targets, ready, t0, counts.recoveries))
            await load.run(duration=TOTAL / RATE)
            await chaos_task
            load_seconds = time.monotonic() - t0

            counts.settle_seconds = await settle(
                sandbox, set(load.accepted), webhooks, SETTLE_SECONDS, counts.settled
            )
            await check(
                sandbox,
                http,
                police_url=f"http://127.0.0.1:{ports['police']}",
                shelter_url=f"http://127.0.0.1:{ports['shelter']}",
                ledger_url=ledger_url,
                load=load,
                webhooks=webhooks,
                counts=counts,
            )
            text = report(counts, tmp_path / "fault-counts.json", f"fault injection (seed {seed})")
            with capsys.disabled():
                print(text + f"\nload phase {load_seconds:.1f}s", flush=True)
        finally:
            for proc in procs.values():
                proc.stop()
            await sandbox.stop_all()
            await webhooks.stop()

    assert counts.accepted >= TOTAL // 2, counts
    assert counts.lost == 0, counts
    assert counts.duplicates_stored == 0, counts
    assert counts.delivered == counts.receipts == counts.accepted, counts
    assert counts.webhook_missing == 0 and counts.webhook_unstable == 0, counts
    assert counts.ledger_missing == 0, counts
    assert sorted({r["target"] for r in counts.recoveries}) == [
        "ledger",
        "nats",
        "police",
        "shelter",
    ]


def _proc_actions(proc: Proc) -> tuple[Callable[[], None], Callable[[], Any]]:
    async def restart() -> None:
        proc.start()

    return proc.kill, restart


def _bus_actions(bus: NatsServer) -> tuple[Callable[[], None], Callable[[], Any]]:
    return bus.kill, lambda: asyncio.to_thread(bus.restart)
