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
from .harness import Proc, Webhooks, assert_nothing_lost, deploy, report, run_under_chaos

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
            d = await deploy(http, sandbox, tmp_path, hook_url=hook_url, procs=procs)
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
            counts, load_seconds = await run_under_chaos(
                http,
                sandbox,
                d,
                webhooks,
                lambda counts, t0: chaos(rng, targets, ready, t0, counts.recoveries),
                total=TOTAL,
                rate=RATE,
                settle_seconds=SETTLE_SECONDS,
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
    assert_nothing_lost(counts)
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
