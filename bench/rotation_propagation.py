"""Benchmark: how fast a key rotation reaches every agent (issue 3, "Benchmark").

What it measures
    With N agents (default 20) connected to one secured embedded nats-server, it repeats R
    times (default 10): rotate one agency's keys, then measure the time from just before
    the administrators' `publish` of the new signed directory starts until EVERY other
    agent would seal to the rotated agency's new encryption key, i.e.
    `agent.trust.directory.recipient(rotated, at=now).kid == new encryption kid` holds for
    all N-1 others. It also measures when the rotated agent itself switches to its new
    signing key, and how long the `publish` call itself took.

How
    `nrm.sandbox.prepare_mechanism` sets up a 2-of-3 administrator root and N agencies
    (keys at the INTERACTIVE key-file cost, roles cycled over the non-auditor roles) and
    `Sandbox.start_bus` starts nats-server with authorization generated from the
    directory. The agents run in this process (`Agent.from_config_file`, `start`).
    Each rotation, off the clock: `rotate_key_dir` on one agency's key folder (the agency
    rotated changes round-robin), `admin.add_agency` with its new identity (which rotates
    its keys in the draft) and `Sandbox.sign_draft`. On the clock: `Sandbox.publish`
    (it opens the operator key, connects, puts the roots and the directory in the KV
    bucket). Timing is event-driven, not polled: each agent's transport callback
    `on_directory` is wrapped so that, right after the agent has verified and applied an
    update, the wrapper checks the condition above and records `time.perf_counter()` the
    first time it holds. A rotation that does not fully propagate within 30 s aborts the
    run.

Caveats
    All agents share one event loop, so the directory updates are verified (and written
    to each agent's trust cache with fsync) one agent after another, and the rotated
    agent's key-file reload (a KDF) blocks the others while it runs: the maximum is an
    upper bound for N separate agent processes on the same machine.

Run
    .venv/bin/python bench/rotation_propagation.py [--agents 20] [--rotations 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents import Agent
from keys import PublicIdentity
from keys.keyfile import INTERACTIVE
from nrm import admin
from nrm.logs import configure as configure_logs
from nrm.sandbox import Sandbox, prepare_mechanism
from runtime.keydir import rotate_key_dir

ROLES = (
    "ngo",
    "police",
    "social-services",
    "labour-inspection",
    "prosecutor",
    "health",
    "coordinator",
    "border-guard",
)
TIMEOUT_SECONDS = 30.0


@dataclass
class Rotation:
    """What one rotation waits for, and when each agent got there (perf_counter)."""

    agency: str
    encryption_kid: str
    signing_kid: str
    seen: dict[str, float] = field(default_factory=dict)
    self_switched: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Result:
    agency: str
    publish_call_ms: float
    all_others_ms: float
    first_other_ms: float
    self_signing_ms: float


class Probe:
    """Wraps each agent's `on_directory` callback to record when a rotation has arrived."""

    def __init__(self, agents: dict[str, Agent]) -> None:
        self.agents = agents
        self.current: Rotation | None = None
        for name, agent in agents.items():
            agent.transport.on_directory = self._wrap(name, agent, agent.transport.on_directory)

    def _wrap(
        self, name: str, agent: Agent, inner: Callable[[str, bytes], Awaitable[None]]
    ) -> Callable[[str, bytes], Awaitable[None]]:
        async def on_directory(key: str, value: bytes) -> None:
            await inner(key, value)
            self.check(name, agent)

        return on_directory

    def check(self, name: str, agent: Agent) -> None:
        r = self.current
        if r is None:
            return
        now = time.perf_counter()
        if name == r.agency:
            if r.self_switched is None and agent.keys.public.signing_kid == r.signing_kid:
                r.self_switched = now
        elif name not in r.seen:
            directory = agent.trust.directory
            if directory is not None and r.agency in directory:
                kid = directory.recipient(r.agency, at=int(time.time())).kid
                if kid == r.encryption_kid:
                    r.seen[name] = now
        if r.self_switched is not None and len(r.seen) == len(self.agents) - 1:
            r.done.set()


def agency_list(n: int) -> list[tuple[str, str, str]]:
    return [(f"agency-{i:02d}", f"Agency {i}", ROLES[i % len(ROLES)]) for i in range(n)]


async def wait_ready(agents: dict[str, Agent]) -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not all(a.health()["status"] == "ok" for a in agents.values()):
        if time.monotonic() > deadline:
            bad = [n for n, a in agents.items() if a.health()["status"] != "ok"]
            raise RuntimeError(f"agents not ready after {TIMEOUT_SECONDS}s: {bad}")
        await asyncio.sleep(0.05)


async def rotate_once(sandbox: Sandbox, probe: Probe, agency: str) -> Result:
    setup = sandbox.agencies[agency]
    keys = rotate_key_dir(setup.key_dir, passphrase=setup.passphrase(), cost=INTERACTIVE)
    identity = PublicIdentity.from_json(setup.identity_path.read_bytes())
    admin.add_agency(sandbox.admin, identity, roles=list(setup.roles))
    sandbox.sign_draft()
    rotation = Rotation(agency, keys.public.encryption_kid, keys.public.signing_kid)
    probe.current = rotation
    start = time.perf_counter()
    await sandbox.publish()
    published = time.perf_counter()
    try:
        await asyncio.wait_for(rotation.done.wait(), TIMEOUT_SECONDS)
    except TimeoutError:
        missing = sorted(set(probe.agents) - set(rotation.seen) - {agency})
        raise RuntimeError(
            f"rotation of {agency} not propagated in {TIMEOUT_SECONDS}s; missing {missing},"
            f" self switched: {rotation.self_switched is not None}"
        ) from None
    probe.current = None
    assert rotation.self_switched is not None

    def ms(t: float) -> float:
        return (t - start) * 1000

    return Result(
        agency=agency,
        publish_call_ms=ms(published),
        all_others_ms=ms(max(rotation.seen.values())),
        first_other_ms=ms(min(rotation.seen.values())),
        self_signing_ms=ms(rotation.self_switched),
    )


async def run(n_agents: int, n_rotations: int, root: Path) -> tuple[list[Result], float]:
    setup_start = time.perf_counter()
    sandbox = prepare_mechanism(root, agency_list(n_agents), admins=3, threshold=2)
    agents: dict[str, Agent] = {}
    try:
        await sandbox.start_bus()
        sandbox.write_agent_configs()
        for agency in sandbox.agencies:
            agents[agency] = Agent.from_config_file(sandbox.agencies[agency].config_path)
            await agents[agency].start()
        await wait_ready(agents)
        setup_seconds = time.perf_counter() - setup_start
        probe = Probe(agents)
        names = list(sandbox.agencies)
        results = []
        for i in range(n_rotations):
            result = await rotate_once(sandbox, probe, names[i % len(names)])
            print(
                f"  rotation {i + 1:2d} {result.agency}: all others {result.all_others_ms:7.1f} ms",
                file=sys.stderr,
            )
            results.append(result)
        return results, setup_seconds
    finally:
        await asyncio.gather(*(a.stop() for a in agents.values()), return_exceptions=True)
        await sandbox.stop_bus()


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--rotations", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    if args.agents < 2 or args.rotations < 1:
        parser.error("need at least 2 agents and 1 rotation")
    configure_logs(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="nrm-bench-") as tmp:
        results, setup_seconds = asyncio.run(run(args.agents, args.rotations, Path(tmp) / "m"))

    figures = {
        "all_others_seal_to_new_key_ms": summarize([r.all_others_ms for r in results]),
        "first_other_ms": summarize([r.first_other_ms for r in results]),
        "rotated_agent_new_signing_key_ms": summarize([r.self_signing_ms for r in results]),
        "publish_call_ms": summarize([r.publish_call_ms for r in results]),
    }
    print(f"\nrotation propagation: {args.agents} agents, {args.rotations} rotations")
    print("(ms from just before publish starts)")
    print(f"{'measure':<36}{'min':>9}{'median':>9}{'max':>9}")
    for name, s in figures.items():
        print(f"{name:<36}{s['min']:>9.1f}{s['median']:>9.1f}{s['max']:>9.1f}")

    if args.json is not None:
        report: dict[str, Any] = {
            "benchmark": "rotation_propagation",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "agents": args.agents,
            "rotations": args.rotations,
            "key_cost": "INTERACTIVE",
            "setup_seconds": round(setup_seconds, 2),
            "figures": figures,
            "per_rotation": [vars(r) for r in results],
            "machine": {
                "nproc": len(os.sched_getaffinity(0)),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
