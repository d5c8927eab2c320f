"""Benchmark: referral throughput, latency, CPU and memory against their floors (issues 6, 16).

What it measures, in one run
    (a) End to end: referrals POSTed to the police agent's HTTP API (`/v1/referrals`,
        recipient `shelter`, `nrm.examples.referral()` with legal basis public_task), sealed,
        committed to the outbox, published to JetStream, consumed, opened and committed to
        the shelter's inbox, which seals a delivery receipt back; every action signs its audit
        event, published to the ledger, whose inclusion the agents check. The two agents and
        the ledger run as separate processes (`python -m nrm agent run --config`,
        `python -m nrm ledger run --config`) on a secured nats-server (NKey authorization
        from the signed directory, `nrm.sandbox`), so each one's CPU and RSS can be read from
        /proc (psutil if it is installed). No webhooks are configured.
        - saturation: `--clients` (16) closed-loop HTTP clients POST for `--saturation-seconds`
          (15 s). Reported: POSTs accepted (202) per second, and referrals committed to the
          shelter's inbox per second within the same window (the sustained end-to-end rate).
        - latency, after saturation: open loop at half the saturation just measured (so
          that the figure means the same on any machine; `--rate` fixes one instead) for
          `--latency-seconds` (20 s); each POST is
          scheduled at t0 + i/rate and its latency is counted from that scheduled time (no
          coordinated omission; at most 512 requests in flight, any beyond are counted as
          dropped). The inbox commit time is observed by a thread of this process polling the
          shelter's SQLite (`agent.db`, read-only, WAL) every 1 ms for new `inbox` rows of kind
          `referral` (the referral id is written in the same transaction as the row, so a row
          is only visible once committed); resolution is about 1-2 ms. Webhook timestamps were
          not used: webhooks are delivered after the commit by a separate loop with its own
          HTTP round trip, and carry whole-second timestamps.
        - CPU per referral: user+sys seconds of both agent processes (utime+stime from
          /proc/<pid>/stat) from the start of a phase until it has drained (every referral in
          the shelter's inbox, every receipt back at the police, no audit event still queued)
          plus 2 s for the ledger inclusion checks, divided by the referrals of that phase.
          This includes the agents' idle background work (timers, ledger polling), which is
          also measured on its own while idle.
        - backlog (`--backlog`, 20,000; 0 skips it): the shelter's agent stopped, that many
          referrals POSTed (`--clients` closed-loop clients) and all published by the police
          (no delivery left `queued`), then the shelter started: referrals per second from
          its start until every one is in its inbox and every receipt is back at the
          police, beside the time it took to become healthy and to commit the first.
        - RSS: VmRSS of each agent after start-up and warm-up while idle, and the maximum
          sampled every 0.25 s during the load phases.
    (b) Raw nats-py JetStream on a separate plain nats-server (no authorization) with the
        same stream configuration (`broker.streams.provision_streams`): payloads the size of
        a real sealed referral envelope, published to the shelter's inbox subject and consumed
        by a pull consumer on its inbox stream (fetch 64, ack each; not erased as the agent
        does), in three ways: sequential publish awaiting each ack (as
        the agent's publisher does), publishes pipelined 256 deep, and an open loop at
        `--raw-rate` (200/s) for 5 s reporting publish-to-consume latency.
    (c) The cryptography floor: per referral, exactly the seals, opens and signatures the
        agents perform (`keys.envelope.seal` of the referral and `open_envelope` of it,
        the at-rest SecretBox of the data key and body, `seal` + `open_envelope` of the
        delivery receipt, and `sign_event` for referral.sent, referral.received,
        receipt.sent, receipt.received), with the real referral body, in a loop on one core.
        Beside it the libsodium minimum (`libsodium_floor`): the same libsodium calls through
        `nacl.bindings`, inputs prepared off the clock, no encoding or checks.
    The full floor, against which the CPU of all four processes (police, shelter, ledger,
    nats-server, each read from /proc) per referral at saturation is given as a ratio: the
    libsodium minimum plus four raw JetStream messages (the count issue 16 takes; each one
    published, consumed and acked), at the client CPU per message of the cheaper of (b)'s
    sequential and pipelined ways.
    Then, unless `--no-profile`, a short extra saturation phase with py-spy attached to both
    agents and the ledger (`py-spy record --nonblocking`; its figures are not reported) and
    the functions that dominate, by own time and by inclusive time.

Run
    .venv/bin/python bench/throughput.py [--json out.json] [--clients 16] [--rate R]
        [--raw-rate 200] [--backlog 20000]
        [--saturation-seconds 15] [--latency-seconds 20] [--no-profile]
    Everything lives in a temporary directory removed at the end, and every process started
    is stopped. A run takes about seven minutes (the backlog of 20,000 about three).
    bench/run_all.py runs it with the other benchmarks and prints the issue's table.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import logging
import os
import platform
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import nacl.bindings as sodium
import nats
from nacl.secret import SecretBox
from nacl.signing import VerifyKey

from agents.messages import DeliveryReceipt
from broker import NatsServer
from broker.streams import provision_streams
from keys.audit import AuditEvent, new_event_id, sign_event
from keys.codec import canonical_json
from keys.envelope import Opened, Recipient, Sealed, open_envelope, seal
from keys.identity import AgencyKeys, signing_kid
from keys.subjects import inbox_consumer, inbox_stream, inbox_subject
from nrm import examples
from nrm.logs import configure as configure_logs
from nrm.sandbox import Sandbox, prepare_mechanism

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
AGENCIES = [
    ("police", "Police anti-trafficking unit", "police"),
    ("shelter", "Safe House NGO shelter", "ngo"),
]
TTL = 14 * 24 * 3600
MAX_IN_FLIGHT = 512
DRAIN_TIMEOUT = 120.0
SETTLE_SECONDS = 2.0

try:
    import psutil  # type: ignore[import-untyped]
except ImportError:
    psutil = None


# --------------------------------------------------------------------------- process figures

_CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process."""
    if psutil is not None:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def rss_mb(pid: int) -> float:
    if psutil is not None:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def machine() -> dict[str, Any]:
    """What a figure was measured on."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- (c) crypto floor

T = TypeVar("T")


class _Signers:
    def __init__(self, keys: dict[tuple[str, str], VerifyKey]) -> None:
        self.keys = keys

    def signing_key(self, agency: str, kid: str, *, at: int) -> VerifyKey:
        return self.keys[(agency, kid)]


def referral_message() -> bytes:
    """The body the police seals: routing fields, the id, the body minimised for an NGO
    (here the whole example body, which carries only categories an NGO may receive)."""
    doc = examples.referral()
    routing = {k: v for k, v in doc.items() if k != "body"}
    return canonical_json(
        {"referral": {**routing, "referral_id": secrets.token_hex(16), "body": doc["body"]}}
    )


def crypto_floor(iterations: int) -> dict[str, Any]:
    police = AgencyKeys.generate(agency="police", name="Police")
    shelter = AgencyKeys.generate(agency="shelter", name="Shelter")
    signers = _Signers(
        {
            (k.agency, signing_kid(k.signing_key.verify_key)): k.signing_key.verify_key
            for k in (police, shelter)
        }
    )
    storage = SecretBox(shelter.storage_key or bytes(32))
    body = referral_message()
    parts: dict[str, float] = collections.defaultdict(float)
    sizes: dict[str, int] = {}
    signing = "sign 4 audit events"

    def event(agency: str, kind: str, other: str, h: str, rid: str) -> AuditEvent:
        return AuditEvent(
            event_id=new_event_id(),
            agency=agency,
            kind=kind,
            time=int(time.time()),
            referral_id=rid,
            counterpart=other,
            envelope_hash=h,
            key_ids=(),
            labels=(("referral_type", "nrm_full"), ("urgency", "routine")),
        )

    def timed(part: str, step: Callable[[], T]) -> T:
        start = time.process_time()
        result = step()
        parts[part] += time.process_time() - start
        return result

    def at_rest(opened: Opened) -> None:
        """What the shelter's desk does with a referral: a fresh data key, sealed with the
        storage key, encrypts the body."""
        data_key = secrets.token_bytes(SecretBox.KEY_SIZE)
        storage.encrypt(data_key)
        SecretBox(data_key).encrypt(opened.body)

    def deliver(
        sender: AgencyKeys, recipient: AgencyKeys, kind: str, body: bytes, *, rid: str, now: int
    ) -> tuple[Sealed, Opened]:
        """One message from `sender` to `recipient` as the agents handle it, timed by part:
        sealed, `<event>.sent` signed, opened, (a referral kept at rest), `.received` signed."""
        name = "referral" if kind == "referral" else "receipt"
        to = [Recipient(recipient.agency, recipient.encryption_key.public_key)]
        sealed = timed(
            f"seal {name}",
            lambda: seal(
                sender=sender, recipients=to, kind=kind, body=body, created=now, expires=now + TTL
            ),
        )
        sent = f"{name}.sent"
        timed(
            signing,
            lambda: sign_event(
                event(sender.agency, sent, recipient.agency, sealed.hash, rid), sender.signing_key
            ),
        )
        opened = timed(
            f"open {name}",
            lambda: open_envelope(
                sealed.data,
                me=recipient.agency,
                decryption_keys=recipient.decryption_keys,
                signers=signers,
                now=now,
            ),
        )
        if kind == "referral":
            timed("at-rest SecretBox (key + body)", lambda: at_rest(opened))
        received = f"{name}.received"
        timed(
            signing,
            lambda: sign_event(
                event(recipient.agency, received, sender.agency, opened.envelope_hash, rid),
                recipient.signing_key,
            ),
        )
        return sealed, opened

    def one() -> None:
        now = int(time.time())
        rid = secrets.token_hex(16)
        sealed, opened = deliver(police, shelter, "referral", body, rid=rid, now=now)
        receipt_body = DeliveryReceipt(opened.header.message_id, opened.envelope_hash, now)
        receipt, _ = deliver(
            shelter, police, "delivery-receipt", receipt_body.encode(), rid=rid, now=now
        )
        sizes["referral_envelope_bytes"] = len(sealed.data)
        sizes["receipt_envelope_bytes"] = len(receipt.data)
        sizes["referral_body_bytes"] = len(body)
        sizes["receipt_body_bytes"] = len(receipt_body.encode())

    for _ in range(min(50, iterations)):  # warm-up
        one()
    parts.clear()
    wall = time.perf_counter()
    cpu = time.process_time()
    for _ in range(iterations):
        one()
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    return {
        "iterations": iterations,
        "cpu_ms_per_referral": cpu / iterations * 1000,
        "wall_ms_per_referral": wall / iterations * 1000,
        "referrals_per_second_one_core": iterations / cpu,
        "parts_ms": {k: v / iterations * 1000 for k, v in parts.items()},
        **sizes,
    }


def libsodium_floor(iterations: int, *, body_bytes: int, receipt_bytes: int) -> dict[str, Any]:
    """The libsodium calls part (c) makes per referral, called directly through
    `nacl.bindings` with inputs prepared off the clock, no encoding: per message (the
    referral, then its receipt) an ephemeral X25519 key, one agreement, a keyed BLAKE2b,
    the ChaCha20-Poly1305 wrap of the content key, an inner and an outer Ed25519 signature,
    XChaCha20-Poly1305 of the body; opening it: both verifications, the agreement, the
    BLAKE2b, the unwrap, the decryption; the referral's two at-rest SecretBoxes (key, body)
    at the recipient; four audit-event signatures (of about 300 bytes)."""
    sign_sk = [sodium.crypto_sign_keypair() for _ in range(2)]
    box = [sodium.crypto_box_keypair() for _ in range(2)]
    header, event = secrets.token_bytes(200), secrets.token_bytes(300)
    bodies = [secrets.token_bytes(body_bytes), secrets.token_bytes(receipt_bytes)]
    storage_key = secrets.token_bytes(32)

    def message(body: bytes, sender: int, recipient: int) -> None:
        (spk, ssk), (rpk, rsk) = sign_sk[sender], box[recipient]
        key, nonce = secrets.token_bytes(32), secrets.token_bytes(24)
        epk, esk = sodium.crypto_box_keypair()
        shared = sodium.crypto_scalarmult(esk, rpk)
        stanza = sodium.crypto_generichash_blake2b_salt_personal(epk + rpk, key=shared)
        wrapped = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(key, header, bytes(12), stanza)
        inner = sodium.crypto_sign(header + body, ssk)[:64]
        ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(inner + body, header, nonce, key)
        outer = sodium.crypto_sign(header + ct, ssk)
        sodium.crypto_sign_open(outer, spk)
        shared = sodium.crypto_scalarmult(rsk, epk)
        stanza = sodium.crypto_generichash_blake2b_salt_personal(epk + rpk, key=shared)
        key = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(wrapped, header, bytes(12), stanza)
        plain = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ct, header, nonce, key)
        sodium.crypto_sign_open(plain[:64] + header + plain[64:], spk)

    def one() -> None:
        message(bodies[0], 0, 1)
        data_key = secrets.token_bytes(32)
        sodium.crypto_secretbox(data_key, secrets.token_bytes(24), storage_key)
        sodium.crypto_secretbox(bodies[0], secrets.token_bytes(24), data_key)
        message(bodies[1], 1, 0)
        for i in range(4):
            sodium.crypto_sign(event, sign_sk[i % 2][1])

    for _ in range(min(50, iterations)):
        one()
    cpu = time.process_time()
    for _ in range(iterations):
        one()
    cpu = time.process_time() - cpu
    return {"iterations": iterations, "cpu_ms_per_referral": cpu / iterations * 1000}


# --------------------------------------------------------------------------- (b) raw JetStream


async def raw_jetstream(root: Path, size: int, rate: float, messages: int) -> dict[str, Any]:
    server = NatsServer(store_dir=root / "rawbus")
    server.start()
    nc = None
    try:
        assert server.pid is not None
        nc = await nats.connect(server.url)
        js = nc.jetstream(timeout=5)
        await provision_streams(js, agencies=["shelter"])
        subject = inbox_subject("shelter")
        payload = secrets.token_bytes(size)
        # the inbox stream is a work queue with the agency's one consumer (provisioned): bind to it
        sub = await js.pull_subscribe(
            subject, durable=inbox_consumer("shelter"), stream=inbox_stream("shelter")
        )
        received: dict[int, float] = {}
        stop = asyncio.Event()

        async def consume() -> None:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(64, timeout=0.5)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                now = time.perf_counter()
                for m in msgs:
                    received[int(m.headers["i"]) if m.headers else -1] = now
                    await m.ack()
                if len(received) >= want[0]:
                    got_all.set()

        want = [0]
        got_all = asyncio.Event()

        async def wait_all(n: int) -> None:
            want[0] = n
            if len(received) < n:
                got_all.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(got_all.wait(), 60)

        consumer = asyncio.create_task(consume())
        out: dict[str, Any] = {"payload_bytes": size}

        async def run(name: str, depth: int) -> None:
            received.clear()
            sem = asyncio.Semaphore(depth)
            t_cpu, s_cpu, t0 = (
                time.process_time(),
                cpu_seconds(server.pid or 0),
                time.perf_counter(),
            )

            async def pub(i: int) -> None:
                async with sem:
                    await js.publish(subject, payload, headers={"i": str(i)})

            if depth == 1:
                for i in range(messages):
                    await js.publish(subject, payload, headers={"i": str(i)})
            else:
                await asyncio.gather(*(pub(i) for i in range(messages)))
            await wait_all(messages)
            wall = time.perf_counter() - t0
            out[name] = {
                "messages": messages,
                "consumed": len(received),
                "messages_per_second": len(received) / wall,
                "client_cpu_us_per_message": (time.process_time() - t_cpu) / messages * 1e6,
                "server_cpu_us_per_message": (cpu_seconds(server.pid or 0) - s_cpu)
                / messages
                * 1e6,
            }

        await run("sequential_publish", 1)
        await run("pipelined_256", 256)
        # open loop at `rate` for 5 s: publish-to-consume latency
        received.clear()
        sent: dict[int, float] = {}
        n = int(rate * 5)
        t0 = time.perf_counter()
        tasks = []
        for i in range(n):
            at = t0 + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[i] = at
            tasks.append(asyncio.create_task(js.publish(subject, payload, headers={"i": str(i)})))
        await asyncio.gather(*tasks)
        await wait_all(n)
        lat = [(received[i] - sent[i]) * 1000 for i in sent if i in received]
        out["open_loop"] = {
            "rate": rate,
            "messages": n,
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
        }
        stop.set()
        await consumer
        await sub.unsubscribe()
        return out
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        server.stop()


# --------------------------------------------------------------------------- (a) end to end


class InboxWatch(threading.Thread):
    """Polls the shelter's inbox every 1 ms; records when each referral id first appears."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.seen: dict[str, float] = {}
        self.times: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, check_same_thread=False)
        last = 0
        try:
            while not self._halt.is_set():
                rows = conn.execute(
                    "SELECT seq, referral_id FROM inbox WHERE seq > ? AND kind = 'referral'"
                    " ORDER BY seq",
                    (last,),
                ).fetchall()
                now = time.perf_counter()
                for seq, rid in rows:
                    last = seq
                    self.seen.setdefault(rid, now)
                    self.times.append(now)
                time.sleep(0.001)
        finally:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    argv: list[str]
    peak_rss: float = 0.0

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Mechanism:
    sandbox: Sandbox
    procs: dict[str, Proc] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    dbs: dict[str, Path] = field(default_factory=dict)
    sampling: bool = False

    def cpu(self) -> dict[str, float]:
        out = {n: cpu_seconds(p.pid) for n, p in self.procs.items()}
        assert self.sandbox.bus is not None and self.sandbox.bus.pid is not None
        out["nats-server"] = cpu_seconds(self.sandbox.bus.pid)
        return out

    async def sample_rss(self) -> None:
        while True:
            if self.sampling:
                for p in self.procs.values():
                    p.peak_rss = max(p.peak_rss, rss_mb(p.pid))
            await asyncio.sleep(0.25)

    def count(self, agency: str, sql: str) -> int:
        conn = sqlite3.connect(f"file:{self.dbs[agency]}?mode=ro", uri=True)
        try:
            return int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()

    async def drain(self, expected_inbox: int, within: float = DRAIN_TIMEOUT) -> float:
        """Wait until every referral is in the shelter's inbox, every receipt is back and no
        audit event is queued; returns the perf_counter time it was reached."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            inbox = self.count("shelter", "SELECT count(*) FROM inbox WHERE kind = 'referral'")
            undelivered = self.count(
                "police", "SELECT count(*) FROM deliveries WHERE state != 'delivered'"
            )
            queued = sum(
                self.count(a, "SELECT count(*) FROM audit_outbox WHERE state = 'queued'")
                for a in ("police", "shelter")
            )
            if inbox >= expected_inbox and undelivered == 0 and queued == 0:
                return time.perf_counter()
            await asyncio.sleep(0.02)
        raise RuntimeError(f"not drained after {within}s")


def spawn(name: str, args: list[str], log: Path) -> Proc:
    with log.open("ab") as f:
        popen = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [PYTHON, "-m", "nrm", *args], cwd=REPO, stdout=f, stderr=f
        )
    return Proc(name, popen, log, args)


def set_bind(config: Path, section_hint: str, port: int) -> None:
    text = config.read_text()
    new = text.replace('bind = "127.0.0.1:0"', f'bind = "127.0.0.1:{port}"', 1)
    if new == text:
        raise RuntimeError(f"no {section_hint} bind line in {config}")
    config.write_text(new)


async def wait_http(session: aiohttp.ClientSession, url: str, proc: Proc, ok: bool) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited; see {proc.log}:\n{proc.log.read_text()[-2000:]}"
            )
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(url) as r:
                if not ok or r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready at {url}")


class _LedgerAt:
    """Stands in for the in-process Ledger so the sandbox writes the agents' [ledger] URL."""

    def __init__(self, url: str) -> None:
        self.url = url


async def start_mechanism(root: Path, session: aiohttp.ClientSession) -> Mechanism:
    sandbox = prepare_mechanism(root, AGENCIES)
    m = Mechanism(sandbox)
    await sandbox.start_bus()
    # The sandbox writes ledger.toml as it starts an in-process ledger; run it as its own
    # process instead, on a fixed port.
    await sandbox.start_ledger(checkpoint_interval=1.0)
    await sandbox.stop_ledger()
    ledger_port = free_port()
    set_bind(sandbox.ledger_home / "ledger.toml", "ledger", ledger_port)
    m.procs["ledger"] = spawn(
        "ledger",
        ["ledger", "run", "--config", str(sandbox.ledger_home / "ledger.toml")],
        root / "ledger.log",
    )
    ledger_url = f"http://127.0.0.1:{ledger_port}"
    await wait_http(session, ledger_url + "/v1/checkpoint", m.procs["ledger"], ok=False)
    sandbox.ledger = _LedgerAt(ledger_url)  # type: ignore[assignment]
    sandbox.write_agent_configs()
    sandbox.ledger = None
    for agency, setup in sandbox.agencies.items():
        port = free_port()
        set_bind(setup.config_path, "api", port)
        m.urls[agency] = f"http://127.0.0.1:{port}"
        m.tokens[agency] = setup.token
        m.dbs[agency] = setup.home / "agent.db"
        m.procs[agency] = spawn(
            agency, ["agent", "run", "--config", str(setup.config_path)], root / f"{agency}.log"
        )
    for agency in sandbox.agencies:
        await wait_http(session, m.urls[agency] + "/healthz", m.procs[agency], ok=True)
    return m


async def stop_mechanism(m: Mechanism) -> None:
    for p in m.procs.values():
        if p.popen.poll() is None:
            p.popen.terminate()
    for p in m.procs.values():
        try:
            p.popen.wait(10)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()
    await m.sandbox.stop_bus()


class Client:
    def __init__(self, m: Mechanism, session: aiohttp.ClientSession) -> None:
        self.url = m.urls["police"] + "/v1/referrals"
        self.session = session
        self.headers = {
            "Authorization": f"Bearer {m.tokens['police']}",
            "Content-Type": "application/json",
        }
        self.body = json.dumps({"recipients": ["shelter"], "referral": examples.referral()})
        self.errors: collections.Counter[int] = collections.Counter()

    async def post(self) -> str | None:
        async with self.session.post(self.url, data=self.body, headers=self.headers) as r:
            doc = await r.json()
            if r.status != 202:
                self.errors[r.status] += 1
                return None
            return str(doc["id"])


async def phase_saturation(
    m: Mechanism, client: Client, watch: InboxWatch, clients: int, seconds: float
) -> dict[str, Any]:
    before = m.cpu()
    accepted: list[str] = []
    t0 = time.perf_counter()
    end = t0 + seconds
    seen_before = len(watch.times)

    async def worker() -> None:
        while time.perf_counter() < end:
            rid = await client.post()
            if rid is not None:
                accepted.append(rid)

    m.sampling = True
    await asyncio.gather(*(worker() for _ in range(clients)))
    t_end = time.perf_counter()
    in_window = sum(1 for t in watch.times[seen_before:] if t <= t_end)
    drained = await m.drain(len(watch.seen) + len([r for r in accepted if r not in watch.seen]))
    await asyncio.sleep(SETTLE_SECONDS)
    m.sampling = False
    after = m.cpu()
    n = len(accepted)
    agents_cpu = sum(after[a] - before[a] for a in ("police", "shelter"))
    return {
        "clients": clients,
        "seconds": t_end - t0,
        "accepted": n,
        "accepted_per_second": n / (t_end - t0),
        "inbox_commits_per_second_in_window": in_window / (t_end - t0),
        "drain_seconds_after_window": drained - t_end,
        "cpu_seconds": {k: after[k] - before[k] for k in after},
        "agents_cpu_ms_per_referral": agents_cpu / n * 1000,
    }


async def phase_open_loop(
    m: Mechanism, client: Client, watch: InboxWatch, rate: float, seconds: float
) -> dict[str, Any]:
    before = m.cpu()
    sent: dict[str, float] = {}
    response_ms: list[float] = []
    in_flight: set[asyncio.Task[None]] = set()
    dropped = 0

    async def one(at: float) -> None:
        rid = await client.post()
        response_ms.append((time.perf_counter() - at) * 1000)
        if rid is not None:
            sent[rid] = at

    m.sampling = True
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(n):
        at = t0 + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= MAX_IN_FLIGHT:
            dropped += 1
            continue
        task = asyncio.create_task(one(at))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    t_end = time.perf_counter()
    await m.drain(len(watch.seen) + len([r for r in sent if r not in watch.seen]))
    await asyncio.sleep(SETTLE_SECONDS)
    m.sampling = False
    after = m.cpu()
    lat = [(watch.seen[r] - at) * 1000 for r, at in sent.items() if r in watch.seen]
    agents_cpu = sum(after[a] - before[a] for a in ("police", "shelter"))
    return {
        "rate": rate,
        "seconds": seconds,
        "offered": n,
        "accepted": len(sent),
        "dropped_in_flight_cap": dropped,
        "achieved_rate": len(sent) / (t_end - t0),
        "post_to_inbox_ms": {
            "p50": pct(lat, 50),
            "p90": pct(lat, 90),
            "p99": pct(lat, 99),
            "max": max(lat) if lat else float("nan"),
        },
        "post_response_ms": {"p50": pct(response_ms, 50), "p99": pct(response_ms, 99)},
        "cpu_seconds": {k: after[k] - before[k] for k in after},
        "agents_cpu_ms_per_referral": agents_cpu / max(1, len(sent)) * 1000,
    }


async def phase_backlog(
    m: Mechanism, client: Client, watch: InboxWatch, clients: int, queued: int, root: Path
) -> dict[str, Any]:
    """The shelter's agent stopped while `queued` referrals are POSTed and published to
    JetStream, then started: the time from its start until every one is in its inbox and
    receipted back at the police, and the CPU of every process meanwhile."""
    shelter = m.procs["shelter"]
    shelter.popen.terminate()
    shelter.popen.wait(30)
    inbox_before = len(watch.seen)
    accepted: list[str] = []
    t_post = time.perf_counter()
    left = [queued]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            rid = await client.post()
            if rid is not None:
                accepted.append(rid)
            else:
                left[0] += 1

    await asyncio.gather(*(worker() for _ in range(clients)))
    posted = time.perf_counter() - t_post
    deadline = time.monotonic() + DRAIN_TIMEOUT
    sql = "SELECT count(*) FROM deliveries WHERE state = 'queued'"
    while m.count("police", sql) > 0:  # every referral published to the shelter's inbox stream
        if time.monotonic() > deadline:
            raise RuntimeError(f"police did not publish the backlog in {DRAIN_TIMEOUT}s")
        await asyncio.sleep(0.05)
    published = time.perf_counter() - t_post
    await asyncio.sleep(SETTLE_SECONDS)
    m.sampling = True
    t0 = time.perf_counter()
    m.procs["shelter"] = spawn("shelter", shelter.argv, root / "shelter.log")
    before = m.cpu()  # the shelter's from its start
    await wait_http(client.session, m.urls["shelter"] + "/healthz", m.procs["shelter"], ok=True)
    ready = time.perf_counter()
    done = await m.drain(inbox_before + len(accepted), max(DRAIN_TIMEOUT, queued / 20))
    m.sampling = False
    after = m.cpu()
    first = min((watch.seen[r] for r in accepted if r in watch.seen), default=done)
    seconds = done - t0
    return {
        "queued": len(accepted),
        "post_seconds": posted,
        "published_seconds": published,
        "start_to_healthy_seconds": ready - t0,
        "start_to_first_inbox_seconds": first - t0,
        "drain_seconds": seconds,
        "referrals_per_second": len(accepted) / seconds,
        "referrals_per_second_after_first": len(accepted) / max(1e-9, done - first),
        "cpu_seconds": {k: after[k] - before[k] for k in after},
    }


# --------------------------------------------------------------------------- profile


def py_spy() -> str | None:
    found = shutil.which("py-spy", path=str(Path(PYTHON).parent))
    return found or shutil.which("py-spy")


def summarise_profile(raw: Path, top: int = 14) -> dict[str, Any]:
    """Own and inclusive sample shares by function, from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    frame_re = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        names = []
        for frame in stack.split(";"):
            match = frame_re.match(frame)
            fn, path = (match.group(1), match.group(2)) if match else (frame, "")
            short = "/".join(Path(path).parts[-2:]) if path else ""
            names.append(f"{fn} ({short})")
        if names:
            own[names[-1]] += n
            for name in set(names):
                incl[name] += n
    return {
        "samples": total,
        "own": [(k, round(100 * v / total, 1)) for k, v in own.most_common(top)] if total else [],
        # inclusive: the project's own functions only (the frameworks' frames wrap everything)
        "inclusive": [
            (k, round(100 * v / total, 1))
            for k, v in incl.most_common()
            if "(agents/" in k or "(keys/" in k
        ][: top + 6]
        if total
        else [],
    }


async def phase_profile(
    m: Mechanism, client: Client, watch: InboxWatch, clients: int, seconds: float, root: Path
) -> dict[str, Any]:
    exe = py_spy()
    if exe is None:
        return {"skipped": "py-spy not found (pip install py-spy into .venv)"}
    spies = {}
    for agency in ("police", "shelter", "ledger"):
        out = root / f"profile-{agency}.txt"
        argv = ["record", "--pid", str(m.procs[agency].pid), "--duration", str(int(seconds))]
        argv += ["--rate", "250", "--nonblocking", "--format", "raw", "--output", str(out)]
        proc = await asyncio.create_subprocess_exec(
            exe, *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        spies[agency] = (proc, out)
    await asyncio.sleep(0.5)
    await phase_saturation(m, client, watch, clients, seconds)
    result: dict[str, Any] = {}
    for agency, (proc, out) in spies.items():
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        except TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
        if out.exists():
            result[agency] = summarise_profile(out)
        else:
            result[agency] = {"error": err.decode(errors="replace")[-500:]}
    return result


# --------------------------------------------------------------------------- main


async def end_to_end(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        t_setup = time.perf_counter()
        m = await start_mechanism(root, session)
        sampler = asyncio.create_task(m.sample_rss())
        watch = InboxWatch(m.dbs["shelter"])
        watch.start()
        try:
            setup_seconds = time.perf_counter() - t_setup
            client = Client(m, session)
            # warm-up: a few referrals through every path, then let it settle
            for _ in range(30):
                await client.post()
            await m.drain(30)
            await asyncio.sleep(3)
            idle_rss = {a: rss_mb(m.procs[a].pid) for a in ("police", "shelter", "ledger")}
            before = m.cpu()
            await asyncio.sleep(5)
            after = m.cpu()
            idle_cpu = {k: (after[k] - before[k]) / 5 for k in after}
            for p in m.procs.values():
                p.peak_rss = 0.0
            print("  end to end: saturation ...", file=sys.stderr)
            saturation = await phase_saturation(
                m, client, watch, args.clients, args.saturation_seconds
            )
            # half the saturation measured here, so the latency means the same on any machine
            rate = args.rate or saturation["inbox_commits_per_second_in_window"] / 2
            print(f"  end to end: open loop at {rate:.0f}/s ...", file=sys.stderr)
            latency = await phase_open_loop(m, client, watch, rate, args.latency_seconds)
            backlog: dict[str, Any] = {"skipped": "--backlog 0"}
            if args.backlog:
                print(f"  end to end: backlog of {args.backlog} ...", file=sys.stderr)
                backlog = await phase_backlog(m, client, watch, args.clients, args.backlog, root)
            load_rss = {a: m.procs[a].peak_rss for a in ("police", "shelter", "ledger")}
            after_rss = {a: rss_mb(m.procs[a].pid) for a in ("police", "shelter", "ledger")}
            envelope = m.count(
                "police", "SELECT max(length(envelope)) FROM outbox WHERE kind = 'referral'"
            )
            profile: dict[str, Any] = {"skipped": "--no-profile"}
            if not args.no_profile:
                print("  end to end: profiling ...", file=sys.stderr)
                profile = await phase_profile(m, client, watch, args.clients, 10, root)
            return {
                "setup_seconds": setup_seconds,
                "referral_envelope_bytes": envelope,
                "idle_rss_mb": idle_rss,
                "peak_rss_under_load_mb": load_rss,
                "rss_after_load_mb": after_rss,
                "idle_cpu_seconds_per_second": idle_cpu,
                "latency": latency,
                "saturation": saturation,
                "backlog": backlog,
                "http_errors": dict(client.errors),
                "profile": profile,
            }
        finally:
            watch.stop()
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await stop_mechanism(m)


async def run_all(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    print("  (c) cryptography floor ...", file=sys.stderr)
    crypto = crypto_floor(args.crypto_iterations)
    sodium_floor = libsodium_floor(
        args.crypto_iterations,
        body_bytes=crypto["referral_body_bytes"],
        receipt_bytes=crypto["receipt_body_bytes"],
    )
    print("  (b) raw JetStream ...", file=sys.stderr)
    raw = await raw_jetstream(
        root, crypto["referral_envelope_bytes"], args.raw_rate, args.raw_messages
    )
    # The full floor (issue 16): the libsodium calls of one referral and four raw JetStream
    # messages (each published, consumed and acked), at the cheaper of the two raw ways.
    jetstream_us = min(
        raw[k]["client_cpu_us_per_message"] for k in ("sequential_publish", "pipelined_256")
    )
    floor = {
        "libsodium_ms": sodium_floor["cpu_ms_per_referral"],
        "jetstream_4_messages_ms": 4 * jetstream_us / 1000,
        "ms_per_referral": sodium_floor["cpu_ms_per_referral"] + 4 * jetstream_us / 1000,
    }
    print("  (a) end to end ...", file=sys.stderr)
    e2e = await end_to_end(args, root / "m")
    return {
        "crypto": crypto,
        "libsodium_floor": sodium_floor,
        "full_floor": floor,
        "raw_jetstream": raw,
        "end_to_end": e2e,
    }


def report(r: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, str, str]]:
    c, b, e = r["crypto"], r["raw_jetstream"], r["end_to_end"]
    sat, lat, backlog = e["saturation"], e["latency"], e["backlog"]
    floor = c["cpu_ms_per_referral"]
    full = r["full_floor"]
    cpu_sat = sat["agents_cpu_ms_per_referral"]
    cpu_lat = lat["agents_cpu_ms_per_referral"]
    p99 = lat["post_to_inbox_ms"]["p99"]
    idle = max(e["idle_rss_mb"]["police"], e["idle_rss_mb"]["shelter"])
    per = {k: v / sat["accepted"] * 1000 for k, v in sat["cpu_seconds"].items()}
    peak, after = e["peak_rss_under_load_mb"], e["rss_after_load_mb"]

    def ok(cond: bool) -> str:
        return "met" if cond else "NOT met"

    all_cpu = sum(per.values())
    sat_rate = sat["inbox_commits_per_second_in_window"]
    rows = [
        (
            "full floor, CPU ms/referral",
            f"{full['ms_per_referral']:.2f}",
            f"libsodium {full['libsodium_ms']:.2f} + 4 raw JetStream msgs"
            f" {full['jetstream_4_messages_ms']:.2f} (client CPU)",
        ),
        (
            "(a) all four processes' CPU ms/referral, sat.",
            f"{all_cpu:.2f}",
            f"{all_cpu / full['ms_per_referral']:.1f}x full floor;"
            f" target <= 3x: {ok(all_cpu <= 3 * full['ms_per_referral'])}",
        ),
        (
            "(a) throughput at saturation, inbox commits/s",
            f"{sat['inbox_commits_per_second_in_window']:.0f}",
            f"{sat['clients']} clients, {sat['seconds']:.0f} s",
        ),
        (
            "(a) POSTs accepted (202)/s at saturation",
            f"{sat['accepted_per_second']:.0f}",
            f"drained {sat['drain_seconds_after_window']:.1f} s after",
        ),
        (
            f"(a) POST -> inbox p50 at {lat['rate']:.0f}/s, ms",
            f"{lat['post_to_inbox_ms']['p50']:.1f}",
            f"{lat['accepted']} referrals, {lat['seconds']:.0f} s",
        ),
        (
            f"(a) POST -> inbox p99 at {lat['rate']:.0f}/s, ms",
            f"{p99:.1f}",
            f"half saturation; target <= 20: {ok(p99 <= 20)}",
        ),
        (
            "(a) POST response (202) p50 / p99, ms",
            f"{lat['post_response_ms']['p50']:.1f} / {lat['post_response_ms']['p99']:.1f}",
            "",
        ),
        (
            "(a) agents' CPU ms/referral, saturation",
            f"{cpu_sat:.2f}",
            f"{cpu_sat / floor:.1f}x (c)",
        ),
        (
            f"(a) agents' CPU ms/referral, {lat['rate']:.0f}/s",
            f"{cpu_lat:.2f}",
            f"{cpu_lat / floor:.1f}x (c)",
        ),
        (
            "(a) police / shelter CPU ms/referral, sat.",
            f"{per['police']:.2f} / {per['shelter']:.2f}",
            f"ledger {per['ledger']:.2f}, nats-server {per['nats-server']:.2f}",
        ),
        (
            "(a) RSS idle police / shelter, MB",
            f"{e['idle_rss_mb']['police']:.0f} / {e['idle_rss_mb']['shelter']:.0f}",
            f"target < 60: {ok(idle < 60)}",
        ),
        (
            "(a) RSS peak under load police / shelter, MB",
            f"{peak['police']:.0f} / {peak['shelter']:.0f}",
            f"after load {after['police']:.0f} / {after['shelter']:.0f}",
        ),
        (
            "(b) raw JetStream, sequential publish, msg/s",
            f"{b['sequential_publish']['messages_per_second']:.0f}",
            f"{b['payload_bytes']} B payloads, publish+consume+ack",
        ),
        (
            "(b) raw JetStream, 256 in flight, msg/s",
            f"{b['pipelined_256']['messages_per_second']:.0f}",
            "",
        ),
        (
            f"(b) raw publish -> consume p50 / p99 at {args.raw_rate:.0f}/s, ms",
            f"{b['open_loop']['p50_ms']:.1f} / {b['open_loop']['p99_ms']:.1f}",
            "",
        ),
        (
            "(c) crypto floor, CPU ms/referral",
            f"{floor:.2f}",
            f"= {c['referrals_per_second_one_core']:.0f} referrals/s per core",
        ),
    ]
    if "drain_seconds" in backlog:
        drain = backlog["referrals_per_second"]
        rows[6:6] = [
            (
                f"(a) backlog drain of {backlog['queued']}, referrals/s",
                f"{drain:.0f}",
                f"{drain / sat_rate:.2f}x saturation;"
                f" target >= 1.5x: {ok(drain >= 1.5 * sat_rate)}",
            ),
            (
                "(a) backlog: start -> healthy / first inbox, s",
                f"{backlog['start_to_healthy_seconds']:.1f} / "
                f"{backlog['start_to_first_inbox_seconds']:.1f}",
                f"{backlog['referrals_per_second_after_first']:.0f}/s after the first",
            ),
        ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--rate", type=float, default=None, help="open-loop rate (default: half the saturation)"
    )
    parser.add_argument("--raw-rate", type=float, default=200.0, help="(b) open-loop rate")
    parser.add_argument(
        "--backlog", type=int, default=20_000, help="referrals queued while the shelter is down"
    )
    parser.add_argument("--saturation-seconds", type=float, default=15.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--crypto-iterations", type=int, default=2000)
    parser.add_argument("--raw-messages", type=int, default=5000)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    configure_logs(level=logging.WARNING)
    # The inbox watcher is a thread of this process: let it take the GIL from the load
    # generator within a millisecond, so its timestamps are not late by a switch interval.
    sys.setswitchinterval(0.001)
    with tempfile.TemporaryDirectory(prefix="nrm-bench-") as tmp:
        results = asyncio.run(run_all(args, Path(tmp)))

    rows = report(results, args)
    print(f"\nNRM Exchange throughput benchmark ({len(os.sched_getaffinity(0))} cores)")
    print(f"{'measure':<50}{'value':>16}  notes")
    for name, value, note in rows:
        print(f"{name:<50}{value:>16}  {note}")
    c = results["crypto"]
    print(
        "\ncrypto floor by part (ms/referral): "
        + ", ".join(f"{k} {v:.3f}" for k, v in c["parts_ms"].items())
    )
    prof = results["end_to_end"]["profile"]
    for agency in ("police", "shelter", "ledger"):
        p = prof.get(agency)
        if not isinstance(p, dict) or "own" not in p:
            continue
        print(f"\nprofile {agency} ({p['samples']} samples), own time:")
        for name, share in p["own"]:
            print(f"  {share:5.1f}%  {name}")
        print(f"profile {agency}, inclusive (first {len(p['inclusive'])}):")
        for name, share in p["inclusive"]:
            print(f"  {share:5.1f}%  {name}")
    if args.json is not None:
        doc = {
            "benchmark": "throughput",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "table": [{"measure": a, "value": b, "notes": n} for a, b, n in rows],
            "results": results,
            "machine": machine(),
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
