"""The same check on a three-node NATS cluster: streams and the directory bucket with three
replicas, agents and the ledger given all three URLs, one node killed with SIGKILL at a time
(the message stream's leader among them) while referrals flow."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from keys.subjects import MESSAGE_STREAM
from nrm import admin
from nrm.sandbox import Sandbox, prepare_mechanism
from runtime.keydir import load_key_dir

from ..support import AGENCIES
from .harness import (
    Counts,
    Proc,
    Webhooks,
    assert_nothing_lost,
    deploy,
    free_port,
    report,
    run_under_chaos,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

TOTAL = 900
RATE = 40.0
#: Which node to kill each time: the message stream's leader, or a follower.
KILLS = ("leader", "follower", "leader", "follower")
SETTLE_SECONDS = 60.0


async def operator_js(sandbox: Sandbox) -> tuple[Any, Any]:
    operator = sandbox.admin.path / admin.OPERATOR_DIR
    keys = load_key_dir(operator, passphrase=sandbox.admin_passphrase)
    assert keys.nats_seed is not None
    nc = await nats.connect(
        servers=sandbox.bus_urls,
        nkeys_seed_str=keys.nats_seed.decode(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
    )
    return nc, nc.jetstream(timeout=2)


async def stream_leader(js: Any, *, not_: str | None = None, timeout: float = 30.0) -> str:
    """The server name leading the message stream (other than `not_`), once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            info = await js.stream_info(MESSAGE_STREAM)
            leader = info.cluster.leader if info.cluster else None
            if leader and leader != not_:
                return str(leader)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no leader for {MESSAGE_STREAM} after {timeout}s")


async def replicas_current(js: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            info = await js.stream_info(MESSAGE_STREAM)
            replicas = info.cluster.replicas or []
            if len(replicas) == 2 and all(r.current and not r.offline for r in replicas):
                return
        await asyncio.sleep(0.1)
    raise AssertionError("the message stream's replicas did not catch up")


async def test_cluster_loses_nothing_when_nodes_die(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random()  # noqa: S311 - chaos timing, not cryptography
    sandbox = prepare_mechanism(tmp_path / "m", AGENCIES, admins=1, threshold=1)
    webhooks = Webhooks()
    procs: dict[str, Proc] = {}
    nc: Any = None
    async with aiohttp.ClientSession() as http:
        hook_url = await webhooks.start()
        nodes = await sandbox.start_cluster(
            client_ports=[free_port() for _ in range(3)],
            cluster_ports=[free_port() for _ in range(3)],
        )
        by_name = {f"nrm-{n + 1}": node for n, node in enumerate(nodes)}
        try:
            nc, js = await operator_js(sandbox)
            info = await js.stream_info(MESSAGE_STREAM)
            assert info.config.num_replicas == 3
            d = await deploy(http, sandbox, tmp_path, hook_url=hook_url, procs=procs)
            assert sandbox.agencies["police"].config_path.read_text().count("nats://") == 3

            async def chaos(counts: Counts, t0: float) -> None:
                for which in KILLS:
                    await asyncio.sleep(rng.uniform(1.0, 3.0))
                    leader = await stream_leader(js)
                    if which == "leader":
                        victim = leader
                    else:
                        victim = rng.choice(sorted(set(by_name) - {leader}))
                    killed = time.monotonic()
                    by_name[victim].kill()
                    new_leader = await stream_leader(js, not_=victim if victim == leader else None)
                    failover = time.monotonic() - killed
                    down = rng.uniform(0.5, 2.0)
                    await asyncio.sleep(down)
                    await asyncio.to_thread(by_name[victim].restart)
                    await replicas_current(js)
                    counts.recoveries.append(
                        {
                            "target": f"{victim}({which})",
                            "at": killed - t0,
                            "down": down,
                            "recovery": time.monotonic() - killed,
                            "failover": failover,
                            "new_leader": new_leader,
                        }
                    )

            counts, _ = await run_under_chaos(
                http,
                sandbox,
                d,
                webhooks,
                chaos,
                total=TOTAL,
                rate=RATE,
                settle_seconds=SETTLE_SECONDS,
            )
            text = report(counts, tmp_path / "cluster-counts.json", "three-node cluster")
            failovers = ", ".join(
                f"{r['target']} -> leader {r['new_leader']} in {r['failover']:.2f}s"
                for r in counts.recoveries
            )
            with capsys.disabled():
                print(text + f"\nstream leader failover: {failovers}", flush=True)
        finally:
            if nc is not None:
                await nc.close()
            for proc in procs.values():
                proc.stop()
            await sandbox.stop_all()
            await webhooks.stop()

    assert counts.accepted >= TOTAL * 0.9, counts
    assert_nothing_lost(counts)
    assert sum(1 for r in counts.recoveries if "(leader)" in r["target"]) == 2
