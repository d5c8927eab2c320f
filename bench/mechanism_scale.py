"""Benchmark: the trust mechanism at the scale of a country (issue 16, "scale of the mechanism").

What it measures
    A directory of `--agencies` agencies (300) of which `--live` (50) run as agents, each its
    own process (`python -m nrm agent run --config`), on one secured nats-server whose bus
    authority (broker/authority.py `DirectoryAuthority`, as `nrm bus up` runs it) runs in
    this process. Each of `--rounds` rounds (3) publishes two new directory versions:
        - a new agency admitted (the directory grows by one);
        - a live agency's keys rotated (`rotate_key_dir`, as bench/rotation_propagation.py).
    For each: the time from the directory's put into the bucket until EVERY live agent has
    verified and applied it (max over the agents; for a rotation over the other agents, and
    the rotated one's too), and the bus authority's side: from the put until it runs the new
    authorization (`applied_version`), and the reload itself (`DirectoryAuthority.apply`:
    the authorization block made from the directory and nats-server reloaded and confirmed).
    Separately, in this process: the time one agent takes to verify and apply the directory
    (`agents.trust.TrustState.offer`, the chain from the pinned root, the write of its trust
    cache with fsync), over a fresh trust cache each time.

How an agent's apply is seen
    An agent writes the directory it accepted into its trust cache (`trust/directory.json`,
    replaced by rename) right after verifying it and before acting on it. A thread of this
    process stats every live agent's file every millisecond and records when each one
    changes. The put is made on a connection opened beforehand (as the operator), so the
    clock starts at the put, not at a key-file KDF or a connect; `nrm directory publish`
    also checks each admitted agency's stores first (300 stream look-ups), which is not timed.

Caveats
    The bench's nats-server is given `max_file_store` 4T (RoomyNatsServer): with the
    default (75 % of the free disk) and each inbox stream reserving 1 GiB, a 300-agency bus
    on a smaller disk refuses the streams past the free space.
    Agents and the authority read the bucket by polling (agents/transport.py
    DIRECTORY_POLL_SECONDS, broker/follower.py POLL_SECONDS, 0.5 s each), so up to half a
    second of every figure measured from the put is the wait for the next poll.
    All processes share the machine's cores: the maximum over 50 agents includes their
    queueing for a core (50 verifications of the same directory at once, on 2 cores). What an
    agent does after applying (its key history, its services, a directory.accepted audit
    event) is not in the figure.

Run
    .venv/bin/python bench/mechanism_scale.py [--agencies 300] [--live 50] [--rounds 3]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import nats

from agents.trust import TrustState
from bench.rotation_propagation import agency_list
from bench.throughput import Proc, free_port, machine, rss_mb, set_bind, spawn, wait_http
from broker import NatsServer
from broker.authority import DirectoryAuthority
from keys import PublicIdentity
from keys.directory import Directory
from keys.identity import AgencyKeys
from keys.keyfile import INTERACTIVE
from keys.subjects import DIRECTORY_BUCKET, DIRECTORY_KEY
from nrm import admin
from nrm import sandbox as sandbox_module
from nrm.logs import configure as configure_logs
from nrm.sandbox import Sandbox, prepare_mechanism
from runtime.files import replace_file
from runtime.keydir import init_key_dir, load_key_dir, rotate_key_dir

TIMEOUT_SECONDS = 60.0
#: What the bench's nats-server may reserve for streams (`jetstream.max_file_store`).
MAX_FILE_STORE = "4T"


class RoomyNatsServer(NatsServer):
    """nats-server with room reserved for every agency's streams. Each inbox stream reserves
    its `max_bytes` (`Limits.inbox_max_bytes`, 1 GiB) when it is made, and nats-server's
    default `max_file_store` is 75 % of the free disk: on a small disk a few dozen agencies
    fill it ("insufficient storage resources available"). The bench writes only kilobytes."""

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_path.read_text()
        store = "jetstream {\n"
        assert store in text
        replace_file(
            self.config_path,
            text.replace(store, f"{store}  max_file_store: {MAX_FILE_STORE}\n", 1).encode(),
        )


class CacheWatch(threading.Thread):
    """Stats each agent's trust cache every millisecond; records when it next changes."""

    def __init__(self, files: dict[str, Path]) -> None:
        super().__init__(daemon=True)
        self.files = files
        self.changed: dict[str, float] = {}
        self._base: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        try:
            st = path.stat()
        except FileNotFoundError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    def arm(self) -> None:
        """Forget what changed; the next change of each file is recorded."""
        with self._lock:
            self._base = {n: self._stamp(p) for n, p in self.files.items()}
            self.changed = {}

    def run(self) -> None:
        while not self._halt.is_set():
            with self._lock:
                for name, path in self.files.items():
                    if name not in self.changed and self._stamp(path) != self._base.get(name):
                        self.changed[name] = time.perf_counter()
            time.sleep(0.001)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class TimedAuthority:
    """Records how long each `DirectoryAuthority.apply` (block + reload) takes."""

    def __init__(self, authority: DirectoryAuthority) -> None:
        self.authority = authority
        self.applies: list[tuple[int, float, float]] = []  # (version, end, seconds)
        inner: Callable[[Directory], None] = authority.apply

        def apply(directory: Directory) -> None:
            start = time.perf_counter()
            inner(directory)
            end = time.perf_counter()
            self.applies.append((directory.version, end, end - start))

        authority.apply = apply  # type: ignore[method-assign]


def trust_apply_ms(sandbox: Sandbox, data: bytes, agency: str, root: Path, n: int) -> float:
    """Median time for a fresh `TrustState` of `agency` to verify and apply `data`."""
    pinned = sandbox.agencies[agency].home / "root.json"
    times = []
    for i in range(n):
        state = TrustState(pinned_root=pinned, cache_dir=root / f"trust-{i}", agency=agency)
        start = time.perf_counter()
        changed = state.offer(DIRECTORY_KEY, data)
        times.append((time.perf_counter() - start) * 1000)
        if not changed or state.directory is None:
            raise RuntimeError(f"the directory was not accepted: {state.refused}")
    return statistics.median(times)


async def put_and_wait(
    kv: Any,
    sandbox: Sandbox,
    watch: CacheWatch,
    timed: TimedAuthority,
    expect: set[str],
    rotated: str | None = None,
) -> dict[str, float]:
    """Put the signed draft; wait until each of `expect` applied it and the authority reloaded
    (the `rotated` agency's own agent is given apart: it also reconnects with its new NKey)."""
    data = sandbox.admin.directory_bytes()
    version = admin.verified_draft(sandbox.admin).version
    authority = sandbox.authority
    assert authority is not None
    watch.arm()
    start = time.perf_counter()
    await kv.put(DIRECTORY_KEY, data)
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not (expect <= set(watch.changed) and authority.applied_version == version):
        if time.monotonic() > deadline:
            missing = sorted(expect - set(watch.changed))
            raise RuntimeError(
                f"directory {version} not applied in {TIMEOUT_SECONDS}s; missing {missing},"
                f" authority at {authority.applied_version}"
            )
        await asyncio.sleep(0.005)
    authority_done = time.perf_counter()
    reloads = [(end, secs) for v, end, secs in timed.applies if v == version]
    applied = [watch.changed[a] for a in expect if a != rotated]
    return {
        "version": version,
        "rotated_agent_ms": (watch.changed[rotated] - start) * 1000 if rotated else float("nan"),
        "all_live_agents_ms": (max(applied) - start) * 1000,
        "first_agent_ms": (min(applied) - start) * 1000,
        "median_agent_ms": (statistics.median(applied) - start) * 1000,
        "authority_applied_ms": ((reloads[-1][0] if reloads else authority_done) - start) * 1000,
        "authority_reload_ms": reloads[-1][1] * 1000 if reloads else float("nan"),
    }


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    t_setup = time.perf_counter()
    print(f"  preparing {args.agencies} agencies ...", file=sys.stderr)
    sandbox = prepare_mechanism(root, agency_list(args.agencies), admins=3, threshold=2)
    sandbox_module.NatsServer = RoomyNatsServer  # type: ignore[attr-defined]
    prepared = time.perf_counter() - t_setup
    live = list(sandbox.agencies)[: args.live]
    procs: dict[str, Proc] = {}
    watch: CacheWatch | None = None
    nc = None
    try:
        await sandbox.start_bus()
        assert sandbox.authority is not None
        timed = TimedAuthority(sandbox.authority)
        sandbox.write_agent_configs()
        urls = {}
        print(f"  starting {len(live)} agents ...", file=sys.stderr)
        for agency in live:
            setup = sandbox.agencies[agency]
            port = free_port()
            set_bind(setup.config_path, "api", port)
            urls[agency] = f"http://127.0.0.1:{port}/healthz"
            argv = ["agent", "run", "--config", str(setup.config_path)]
            procs[agency] = spawn(agency, argv, root / f"{agency}.log")
        async with aiohttp.ClientSession() as session:
            for agency in live:
                await wait_http(session, urls[agency], procs[agency], ok=True)
        setup_seconds = time.perf_counter() - t_setup
        rss = [rss_mb(p.pid) for p in procs.values()]
        watch = CacheWatch({a: sandbox.agencies[a].home / "trust" / "directory.json" for a in live})
        watch.start()
        operator = load_key_dir(
            sandbox.admin.path / admin.OPERATOR_DIR, passphrase=sandbox.admin_passphrase
        )
        assert operator.nats_seed is not None
        nc = await nats.connect(
            **sandbox.bus_endpoint.connect_options(), nkeys_seed_str=operator.nats_seed.decode()
        )
        kv = await nc.jetstream().key_value(DIRECTORY_BUCKET)
        added: list[dict[str, float]] = []
        rotated: list[dict[str, float]] = []
        for i in range(args.rounds):
            name = f"new-agency-{i:02d}"
            home = root / name
            home.mkdir(mode=0o700)
            init_key_dir(
                home / "keys", agency=name, name=name, passphrase=b"x" * 16, cost=INTERACTIVE
            )
            identity = PublicIdentity.from_json((home / "keys" / "identity.json").read_bytes())
            admin.add_agency(sandbox.admin, identity, roles=["ngo"])
            sandbox.sign_draft()
            added.append(await put_and_wait(kv, sandbox, watch, timed, set(live)))
            agency = live[i % len(live)]
            setup = sandbox.agencies[agency]
            keys: AgencyKeys = rotate_key_dir(
                setup.key_dir, passphrase=setup.passphrase(), cost=INTERACTIVE
            )
            admin.add_agency(sandbox.admin, keys.public, roles=list(setup.roles))
            sandbox.sign_draft()
            rotated.append(await put_and_wait(kv, sandbox, watch, timed, set(live), agency))
            print(
                f"  round {i + 1}: at all {len(live)} agents, new agency"
                f" {added[-1]['all_live_agents_ms']:.0f} ms, rotation of {agency}"
                f" {rotated[-1]['all_live_agents_ms']:.0f} ms",
                file=sys.stderr,
            )
        data = sandbox.admin.directory_bytes()
        one_agent = trust_apply_ms(sandbox, data, live[0], root / "trust-bench", 5)
        size = len(data)
    finally:
        if watch is not None:
            watch.stop()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        for p in procs.values():
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in procs.values():
            try:
                p.popen.wait(10)
            except Exception:
                p.popen.kill()
                p.popen.wait()
        await sandbox.stop_bus()
    both = added + rotated
    return {
        "agencies": args.agencies,
        "live_agents": len(live),
        "rounds": args.rounds,
        "directory_bytes": size,
        "prepare_seconds": prepared,
        "setup_seconds": setup_seconds,
        "agent_rss_mb": {"median": statistics.median(rss), "max": max(rss)},
        "one_agent_verify_apply_ms": one_agent,
        "new_directory_all_live_agents_ms": summarize([r["all_live_agents_ms"] for r in both]),
        "new_agency_all_live_agents_ms": summarize([r["all_live_agents_ms"] for r in added]),
        "rotation_all_live_agents_ms": summarize([r["all_live_agents_ms"] for r in rotated]),
        "rotated_agent_itself_ms": summarize([r["rotated_agent_ms"] for r in rotated]),
        "median_agent_ms": summarize([r["median_agent_ms"] for r in both]),
        "authority_reload_ms": summarize([r["authority_reload_ms"] for r in both]),
        "authority_applied_ms": summarize([r["authority_applied_ms"] for r in both]),
        "per_directory": {"added": added, "rotated": rotated},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agencies", type=int, default=300)
    parser.add_argument("--live", type=int, default=50, help="agents run as processes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    if not 2 <= args.live <= args.agencies or args.rounds < 1:
        parser.error("need 2 <= --live <= --agencies and at least 1 round")
    configure_logs(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="nrm-bench-") as tmp:
        r = asyncio.run(run(args, Path(tmp) / "m"))
    print(f"\nmechanism scale: {r['agencies']} agencies, {r['live_agents']} live agents")
    print(f"{'measure (ms)':<44}{'min':>9}{'median':>9}{'max':>9}")
    for key in (
        "new_directory_all_live_agents_ms",
        "new_agency_all_live_agents_ms",
        "rotation_all_live_agents_ms",
        "rotated_agent_itself_ms",
        "median_agent_ms",
        "authority_applied_ms",
        "authority_reload_ms",
    ):
        s = r[key]
        print(f"{key:<44}{s['min']:>9.1f}{s['median']:>9.1f}{s['max']:>9.1f}")
    print(f"one agent verifies and applies ({r['directory_bytes']} B): ", end="")
    print(f"{r['one_agent_verify_apply_ms']:.1f} ms")
    if args.json is not None:
        doc = {
            "benchmark": "mechanism_scale",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "results": r,
            "machine": machine(),
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
