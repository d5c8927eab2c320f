"""Shared machinery of the fault suites: agents and the ledger as real subprocesses, a load
generator over HTTP, a webhook receiver, and the end-of-run checks (nothing lost, nothing
stored twice, every receipt, every audit event proved)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from keys import PublicIdentity
from keys.checkpoint import verify_checkpoint
from keys.ledger_entry import LedgerEntry
from keys.merkle import leaf_hash, root_of, verify_inclusion
from nrm.examples import referral
from nrm.sandbox import Sandbox

from ..support import free_port

#: Short redelivery and retry so recovery after a kill is quick.
FAULT_LIMITS: dict[str, int | float] = {
    "ack_wait_seconds": 2,
    "retry_max_seconds": 0.5,
    "timer_interval_seconds": 0.5,
}
#: The four audit events every delivered referral leaves in the ledger.
READY_TIMEOUT = aiohttp.ClientTimeout(total=2)
ANSWER_TIMEOUT = aiohttp.ClientTimeout(total=10)
CHECK_TIMEOUT = aiohttp.ClientTimeout(total=30)
REFERRAL_EVENTS = ("referral.sent", "referral.received", "receipt.sent", "receipt.received")


def ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


class Proc:
    """One `python -m nrm ... run --config` child process that can be killed and restarted."""

    def __init__(self, name: str, args: list[str], log: Path, ready_url: str, token: str) -> None:
        self.name, self.args, self.log_path = name, args, log
        self.ready_url, self.token = ready_url, token
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nrm", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={k: v for k, v in os.environ.items() if k != "NRM_FAILPOINT"},
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def ready(self, http: aiohttp.ClientSession) -> bool:
        """The agent is on the bus (its /healthz says so) or the ledger answers."""
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            async with http.get(self.ready_url, headers=headers, timeout=READY_TIMEOUT) as r:
                if self.name == "ledger":
                    return r.status == 200
                body = await r.json(content_type=None)
                return bool(body.get("bus") == "connected" and body["trust"]["directory_trusted"])
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await self.ready(http):
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready after {timeout}s")
            await asyncio.sleep(0.05)


async def launch(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    tmp_path: Path,
    *,
    ports: dict[str, int],
    ledger_config: Path,
) -> dict[str, Proc]:
    """Start the ledger and the police and shelter agents as processes; wait until ready."""
    ledger_url = f"http://127.0.0.1:{ports['ledger']}"
    procs = {
        "ledger": Proc(
            "ledger",
            ["ledger", "run", "--config", str(ledger_config)],
            tmp_path / "ledger.log",
            f"{ledger_url}/v1/checkpoint",
            sandbox.auditor_token,
        )
    }
    for agency in ("police", "shelter"):
        setup = sandbox.agencies[agency]
        procs[agency] = Proc(
            agency,
            ["agent", "run", "--config", str(setup.config_path)],
            tmp_path / f"{agency}.log",
            f"http://127.0.0.1:{ports[agency]}/healthz",
            setup.token,
        )
    for proc in procs.values():
        proc.start()
    await asyncio.gather(*(p.wait_ready(http) for p in procs.values()))
    return procs


@dataclass
class Deployment:
    """The ledger and the police and shelter agents run as processes on ports of their own."""

    ports: dict[str, int]

    def url(self, part: str) -> str:
        return f"http://127.0.0.1:{self.ports[part]}"


async def deploy(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    tmp_path: Path,
    *,
    hook_url: str,
    procs: dict[str, Proc],
) -> Deployment:
    """Write the ledger's and the agents' configurations (FAULT_LIMITS, the shelter's
    webhook to `hook_url`) on free ports and `launch` them into `procs` (the caller stops
    them)."""
    d = Deployment({"police": free_port(), "shelter": free_port(), "ledger": free_port()})
    ledger_config = sandbox.write_ledger_config(
        checkpoint_interval=0.5, bind=f"127.0.0.1:{d.ports['ledger']}"
    )
    sandbox.write_agent_configs(
        limits=FAULT_LIMITS,
        ledger_missing_after=600,
        webhooks={"shelter": hook_url},
        ledger_url=d.url("ledger"),
        api_ports={a: d.ports[a] for a in ("police", "shelter")},
    )
    procs.update(await launch(http, sandbox, tmp_path, ports=d.ports, ledger_config=ledger_config))
    return d


#: Injects faults while the load runs: given the counts (to record recoveries) and the
#: monotonic start time.
Chaos = Callable[["Counts", float], Awaitable[None]]


async def run_under_chaos(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    d: Deployment,
    webhooks: Webhooks,
    chaos: Chaos,
    *,
    total: int,
    rate: float,
    settle_seconds: float,
) -> tuple[Counts, float]:
    """Offer `total` referrals police -> shelter at `rate` while `chaos` runs, wait for
    everything to settle, then `check`. Returns the counts and the load phase's length."""
    load = Load(http, d.url("police"), sandbox.agencies["police"].token, total, rate)
    counts = Counts()
    t0 = time.monotonic()
    chaos_task = asyncio.create_task(chaos(counts, t0))
    await load.run(duration=total / rate)
    await chaos_task
    load_seconds = time.monotonic() - t0
    counts.settle_seconds = await settle(
        sandbox, set(load.accepted), webhooks, settle_seconds, counts.settled
    )
    await check(
        sandbox,
        http,
        police_url=d.url("police"),
        shelter_url=d.url("shelter"),
        ledger_url=d.url("ledger"),
        load=load,
        webhooks=webhooks,
        counts=counts,
    )
    return counts, load_seconds


def assert_nothing_lost(counts: Counts) -> None:
    """Every accepted referral stored once, delivered with its receipt, announced by one
    stable webhook and in the ledger."""
    assert counts.lost == 0, counts
    assert counts.duplicates_stored == 0, counts
    assert counts.delivered == counts.receipts == counts.accepted, counts
    assert counts.webhook_missing == 0 and counts.webhook_unstable == 0, counts
    assert counts.ledger_missing == 0, counts


@dataclass
class Webhooks:
    """The shelter's case-management system: records every webhook event it is sent."""

    events: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> str:
        async def receive(request: web.Request) -> web.Response:
            self.events.append(await request.json())
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", receive)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def received(self) -> dict[str, set[str]]:
        """Event ids of referral.received, by referral id."""
        ids: dict[str, set[str]] = defaultdict(set)
        for e in self.events:
            if e.get("type") == "referral.received":
                ids[e["data"]["referral_id"]].add(e["id"])
        return ids


@dataclass
class Load:
    """Posts referrals police -> shelter, each with its own Idempotency-Key; a request that
    got no answer (connection refused or cut) is retried with the same key, nothing else."""

    http: aiohttp.ClientSession
    url: str
    token: str
    total: int
    rate: float
    workers: int = 6
    accepted: dict[str, str] = field(default_factory=dict)  # referral id -> idempotency key
    refused: Counter[int] = field(default_factory=Counter)
    retries: int = 0
    unanswered: int = 0
    stop_at: float = 0.0

    async def run(self, duration: float) -> None:
        start = time.monotonic()
        self.stop_at = start + duration
        counter = itertools.count()

        async def worker() -> None:
            while time.monotonic() < self.stop_at:
                n = next(counter)
                if n >= self.total:
                    return
                due = start + n / self.rate
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                await self._post(str(uuid.uuid4()))

        await asyncio.gather(*(worker() for _ in range(self.workers)))

    async def _post(self, key: str) -> None:
        body = {"recipients": ["shelter"], "referral": referral()}
        headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": key}
        give_up = self.stop_at + 30
        first = True
        while time.monotonic() < give_up:
            if not first:
                self.retries += 1
            first = False
            try:
                async with self.http.post(
                    self.url + "/v1/referrals", json=body, headers=headers, timeout=ANSWER_TIMEOUT
                ) as r:
                    answer = await r.json(content_type=None)
                    status = r.status
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.1)  # no answer: the agent is down or was killed
                continue
            if status == 202:
                self.accepted[str(answer["id"])] = key
            else:
                self.refused[status] += 1
            return
        self.unanswered += 1


@dataclass
class Counts:
    accepted: int = 0
    delivered: int = 0
    stored: int = 0
    duplicates_stored: int = 0
    lost: int = 0
    extra_stored: int = 0
    receipts: int = 0
    webhook_missing: int = 0
    webhook_unstable: int = 0
    ledger_size: int = 0
    ledger_missing: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    retries: int = 0
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    settle_seconds: float = 0.0
    settled: dict[str, float] = field(default_factory=dict)


def inbox_rows(db: Path) -> Counter[str]:
    with ro(db) as c:
        rows = c.execute("SELECT referral_id FROM inbox WHERE kind = 'referral'").fetchall()
    return Counter(str(r[0]) for r in rows)


def delivered_ids(db: Path) -> set[str]:
    with ro(db) as c:
        rows = c.execute(
            "SELECT o.referral_id FROM outbox o JOIN deliveries d USING (message_id)"
            " WHERE o.kind = 'referral' AND d.state = 'delivered'"
        ).fetchall()
    return {str(r[0]) for r in rows}


def audit_queued(db: Path) -> int:
    """Audit events not yet on the bus. (Agents confirm inclusion only 256 events a second;
    the checks below verify inclusion themselves instead of waiting for them.)"""
    with ro(db) as c:
        (n,) = c.execute("SELECT count(*) FROM audit_outbox WHERE state = 'queued'").fetchone()
    return int(n)


def checkpointed(db: Path) -> int:
    """The size of the ledger's latest signed checkpoint."""
    if not db.exists():
        return 0
    with ro(db) as c:
        (n,) = c.execute("SELECT coalesce(max(size), 0) FROM checkpoints").fetchone()
    return int(n)


def audit_ids(db: Path) -> list[str]:
    with ro(db) as c:
        return [str(r[0]) for r in c.execute("SELECT event_id FROM audit_outbox")]


async def settle(
    sandbox: Sandbox,
    accepted: set[str],
    webhooks: Webhooks,
    timeout: float,
    parts: dict[str, float],
) -> float:
    """Wait until every accepted referral is stored and delivered, every audit event of both
    agents is under a signed checkpoint, and every webhook received — all in one pass, since
    each can stop holding while the others catch up (a delivery adds audit events, so
    "in_ledger" held early is no longer true once it lands). Return how long that took (or
    the timeout); `parts` records when each condition last started to hold."""
    police = sandbox.agencies["police"].home / "agent.db"
    shelter = sandbox.agencies["shelter"].home / "agent.db"
    start = time.monotonic()
    checks: dict[str, Callable[[], bool]] = {
        "stored": lambda: accepted <= set(inbox_rows(shelter)),
        "delivered": lambda: accepted <= delivered_ids(police),
        "in_ledger": lambda: (
            audit_queued(police) == audit_queued(shelter) == 0
            and checkpointed(sandbox.ledger_home / "ledger.db")
            >= len(audit_ids(police)) + len(audit_ids(shelter))
        ),
        "webhooks": lambda: accepted <= set(webhooks.received()),
    }
    while True:
        for name, holds in checks.items():
            if not holds():
                parts.pop(name, None)
            elif name not in parts:
                parts[name] = round(time.monotonic() - start, 1)
        if len(parts) == len(checks) or time.monotonic() - start >= timeout:
            return time.monotonic() - start
        await asyncio.sleep(0.5)


async def _get(http: aiohttp.ClientSession, url: str, token: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(url, headers=headers, timeout=CHECK_TIMEOUT) as r:
        assert r.status == 200, (url, r.status, await r.text())
        return await r.json()


async def check(
    sandbox: Sandbox,
    http: aiohttp.ClientSession,
    *,
    police_url: str,
    shelter_url: str,
    ledger_url: str | None,
    load: Load,
    webhooks: Webhooks,
    counts: Counts,
) -> None:
    """Fill `counts` from the agents' databases and APIs and the ledger."""
    police, shelter = (sandbox.agencies[a] for a in ("police", "shelter"))
    accepted = set(load.accepted)
    counts.accepted = len(accepted)
    counts.refused = dict(load.refused)
    counts.retries = load.retries
    rows = inbox_rows(shelter.home / "agent.db")
    counts.stored = sum(rows.values())
    counts.duplicates_stored = sum(n - 1 for n in rows.values() if n > 1)
    counts.lost = len(accepted - set(rows))
    # Committed by the police agent but killed before it answered: stored, never accepted.
    counts.extra_stored = len(set(rows) - accepted)

    # The shelter's API lists each once; the police API says delivered for each.
    inbox: list[str] = []
    cursor = ""
    while True:
        page = await _get(http, f"{shelter_url}/v1/inbox?limit=500{cursor}", shelter.token)
        inbox += [i["id"] for i in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert len(inbox) == len(set(inbox)), "the inbox API lists a referral twice"
    assert accepted <= set(inbox), f"{len(accepted - set(inbox))} accepted not in the inbox API"

    sem = asyncio.Semaphore(16)

    async def status(rid: str) -> str:
        async with sem:
            body = await _get(http, f"{police_url}/v1/referrals/{rid}", police.token)
            return str(body["status"])

    statuses = await asyncio.gather(*(status(r) for r in sorted(accepted)))
    counts.delivered = counts.receipts = sum(1 for s in statuses if s == "delivered")

    hooks = webhooks.received()
    counts.webhook_missing = len(accepted - set(hooks))
    counts.webhook_unstable = sum(1 for r in accepted if len(hooks.get(r, ())) > 1)

    if ledger_url is not None:
        await check_ledger(sandbox, http, ledger_url, accepted, counts)


async def check_ledger(
    sandbox: Sandbox,
    http: aiohttp.ClientSession,
    url: str,
    accepted: set[str],
    counts: Counts,
) -> None:
    """A verified checkpoint whose root is recomputed from every leaf; each event of both
    agents exactly once; the four events of each referral; a sample of inclusion proofs
    fetched from the ledger verifies against the checkpoint."""
    token = sandbox.auditor_token
    identity = PublicIdentity.from_json(
        (sandbox.ledger_home / "keys" / "identity.json").read_bytes()
    )
    # What the agents emitted before the checkpoint is taken must all be under it.
    emitted = [
        *audit_ids(sandbox.agencies["police"].home / "agent.db"),
        *audit_ids(sandbox.agencies["shelter"].home / "agent.db"),
    ]
    body = await _get(http, f"{url}/v1/checkpoint", token)
    cp = verify_checkpoint(body["note"], key=identity.signing_key, origin=body["origin"])
    leaves: list[bytes] = []
    entries: list[dict[str, Any]] = []
    while len(leaves) < cp.size:
        page = await _get(
            http,
            f"{url}/v1/entries?start={len(leaves)}&end={min(cp.size, len(leaves) + 1000)}",
            token,
        )
        for item in page["items"]:
            leaves.append(base64.b64decode(item["leaf"]))
            entries.append(item)
    assert root_of([leaf_hash(leaf) for leaf in leaves]) == cp.root, "ledger root mismatch"
    for i, leaf in enumerate(leaves):
        assert LedgerEntry.decode(leaf).index == i
    counts.ledger_size = cp.size
    in_ledger = Counter(e["event_id"] for e in entries)
    assert max(in_ledger.values(), default=1) == 1, "an event is twice in the ledger"
    missing = [e for e in emitted if e not in in_ledger]
    kinds: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        if e["referral_id"]:
            kinds[e["referral_id"]].add(e["kind"])
    incomplete = [r for r in accepted if not set(REFERRAL_EVENTS) <= kinds[r]]
    counts.ledger_missing = len(missing) + len(incomplete)
    step = max(1, cp.size // 60)
    for index in range(0, cp.size, step):
        proof = await _get(http, f"{url}/v1/entries/{index}/proof?size={cp.size}", token)
        verify_inclusion(
            leaf_hash=leaf_hash(leaves[index]),
            index=index,
            size=cp.size,
            proof=[bytes.fromhex(h) for h in proof["proof"]],
            root=cp.root,
        )


def report(counts: Counts, path: Path, title: str) -> str:
    """The counts as text (the tests print it outside pytest's capture, so it shows with
    or without -s and in CI logs); also kept as JSON in `path` (under tmp_path)."""
    path.write_text(json.dumps(counts.__dict__, indent=2))
    lines = [
        f"\n=== {title} ===",
        f"accepted={counts.accepted} delivered={counts.delivered} stored={counts.stored} "
        f"duplicates_stored={counts.duplicates_stored} lost={counts.lost} "
        f"receipts={counts.receipts} extra_stored={counts.extra_stored}",
        f"webhook_missing={counts.webhook_missing} webhook_unstable={counts.webhook_unstable} "
        f"ledger_size={counts.ledger_size} ledger_missing={counts.ledger_missing} "
        f"refused={counts.refused} retries={counts.retries}",
        f"settle={counts.settle_seconds:.1f}s (each held after: {counts.settled})",
        *(
            f"  kill {r['target']:<8} at {r['at']:6.1f}s  down {r['down']:.2f}s  "
            f"recovered after {r['recovery']:.2f}s"
            for r in counts.recoveries
        ),
        f"(counts in {path})",
    ]
    return "\n".join(lines)
