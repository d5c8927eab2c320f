"""The same check on a three-node NATS cluster: streams and the directory bucket with three
replicas, agents and the ledger given all three URLs, one node killed with SIGKILL at a time
(the leader of the shelter's inbox stream, where the referrals go, among them) while
referrals flow police -> shelter and receipts shelter -> police."""

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

from keys.subjects import inbox_stream
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
#: Which node to kill each time: the leader of the shelter's inbox stream, or a follower.
KILLS = ("leader", "follower", "leader", "follower")
#: The inbox stream whose leader is killed: the referrals' (the receipts go to the police's).
TARGET = inbox_stream("shelter")
#: The inbox streams the traffic goes through, each with its own leader.
INBOXES = (TARGET, inbox_stream("police"))
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
    """The server name leading TARGET (other than `not_`), once there is one and every
    other inbox stream of INBOXES has a leader too."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            leaders = {}
            for stream in INBOXES:
                info = await js.stream_info(stream)
                leaders[stream] = info.cluster.leader if info.cluster else None
            leader = leaders[TARGET]
            if all(leaders.values()) and leader != not_:
                return str(leader)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no leader for every one of {INBOXES} after {timeout}s")


async def replicas_current(js: Any, timeout: float = 30.0) -> None:
    """Wait until both replicas of every inbox stream of INBOXES are current."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            current = True
            for stream in INBOXES:
                replicas = (await js.stream_info(stream)).cluster.replicas or []
                current = current and len(replicas) == 2
                current = current and all(r.current and not r.offline for r in replicas)
            if current:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the replicas of {INBOXES} did not catch up")


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
            for stream in INBOXES:
                assert (await js.stream_info(stream)).config.num_replicas == 3
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
                print(text + f"\n{TARGET} leader failover: {failovers}", flush=True)
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
