"""Benchmark: `nrm audit verify --db` on a generated ledger of N events (issue 5, "Benchmark").

What it measures
    (a) the full offline verification path of `nrm audit verify --db FILE`, as events
        verified per second, wall and CPU time of this process: `nrm.audit.from_database`
        (read every row), `checkpoint_of`, `trusted_directories` and
        `nrm.audit.verify_with_progress` (as the CLI: `keys.ledger_verify.verify_source`,
        chunks of rows read and verified by one worker process per core, with a `rich`
        progress bar). The time of `from_database` (which now reads the checkpoint and
        counts the rows; the rows are read by the workers) is also shown on its own, and
        the peak resident memory of the verification (VmHWM of this process, reset before it
        starts, and the largest VmHWM of a worker, sampled from /proc while it runs).
        With `--cli` the real CLI is also run once in a subprocess and timed (wall).
    (b) the floor: a SHA-256-only RFC 6962 recomputation over the same leaves (leaves
        already in memory): `keys.merkle.leaf_hash` of every leaf, then `keys.merkle.root_of`,
        as leaves per second; also the incremental `MerkleTree(MemoryNodeStore())` that
        the former `verify_rows` used, over the same leaf hashes (the `Frontier` it uses
        now keeps O(log n) of them).
    (c) a second floor: Ed25519 verification alone (`VerifyKey.verify` of
        "nrm/v1/audit-event" || 0x00 || event, messages and keys prepared off the clock).
    Both floors must reproduce the checkpoint's root / every signature, or the run aborts.

How the ledger is generated (timed separately; not the figure asked for)
    A root with one administrator Ed25519 key (`keys.directory.Root`, `encode_root`,
    `sign`), a directory version 1 of 8 agencies with real keys (`AgencyKeys.generate`,
    `AgencyEntry`, `KeyEntry`), signed by that root and stored in the `directories` table
    with an `accepted_at` just before the first event. Events are built with the real
    `AuditEvent` (kinds, counterparts, referral ids, envelope hashes, key ids, reasons and
    labels drawn from referral "stories": sent/received/receipts/transitions/rejections/
    consent/erasure) and signed with `sign_event` in a `multiprocessing` pool (one worker
    per core); the leaf is `LedgerEntry(index, appended_at, signed_event).encode()`. The
    main process appends every leaf hash through a real `MerkleTree` over the
    `broker.ledger_store.LedgerStore` node store and inserts the entry row (the same SQL
    and column values as `LedgerStore.insert_entry`, batched with executemany), committing
    every 50,000 events. Finally a checkpoint is signed with the ledger's key
    (`sign_checkpoint`, origin `national/nrm-ledger`) and stored.

    It also profiles `verify_source` in this one process (workers=1, what each worker
    runs) with cProfile over the first `--profile-rows` rows, rounded up to whole chunks
    (default 49,152; a checkpoint for that prefix is computed, unsigned) and prints the top
    functions by own time and cumulative time.

Run
    .venv/bin/python bench/audit_verify.py [--events 1000000] [--json out.json] [--keep DIR]
        [--cli] [--profile-rows 50000] [--ed25519-events N (default: all, at most 1M)]
    With --keep DIR the database, root.1.json and ledger identity.json stay in DIR, so
        nrm audit verify --db DIR/ledger.db --root DIR/root.1.json \
            --ledger-identity DIR/ledger-identity.json --name national
    can be run by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import io
import itertools
import json
import multiprocessing
import os
import platform
import pstats
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nacl.signing import SigningKey, VerifyKey

from broker.ledger_store import INSERT_ENTRY, LedgerStore, entry_values
from keys.audit import LABEL, AuditEvent, decode_signed_event, sign_event
from keys.checkpoint import Checkpoint, ledger_origin, sign_checkpoint
from keys.directory import (
    AgencyEntry,
    Directory,
    Root,
    encode_directory,
    encode_root,
    sign,
)
from keys.identity import AgencyKeys
from keys.ledger_entry import LedgerEntry
from keys.ledger_verify import verify_source
from keys.merkle import MemoryNodeStore, MerkleTree, leaf_hash, root_of
from nrm.audit import (
    checkpoint_of,
    from_database,
    trusted_directories,
    verify_with_progress,
)

LEDGER_NAME = "national"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, first event
FAR = T0 + 20 * 365 * 86400
CHUNK = 10_000
COMMIT_EVERY = 50_000
#: The Ed25519 floor's default sample: its prepared messages stay in memory beside the copy.
ED25519_DEFAULT_EVENTS = 1_000_000
AGENCIES = [
    ("police-north", "police"),
    ("police-south", "police"),
    ("border-guard", "border-guard"),
    ("ngo-safehouse", "ngo"),
    ("ngo-legal", "ngo"),
    ("social-services", "social-services"),
    ("labour-inspection", "labour-inspection"),
    ("nrm-coordinator", "coordinator"),
]
REFERRAL_TYPES = [
    "nrm_full",
    "nrm_full",
    "anonymous_notification",
    "transnational",
    "service_request",
]
URGENCIES = ["routine", "routine", "routine", "urgent", "emergency"]
REASONS = ["bad-signature", "unknown-key", "expired", "not-a-recipient", "duplicate", "malformed"]


# --------------------------------------------------------------------------- generation

_W: dict[str, Any] = {}


def _init_worker(agencies: list[tuple[str, bytes, str]]) -> None:
    """Per worker: the agencies' signing keys (from seeds) and encryption key ids."""
    _W["keys"] = {a: SigningKey(seed) for a, seed, _ in agencies}
    _W["enc"] = {a: enc for a, _, enc in agencies}
    _W["names"] = [a for a, _, _ in agencies]


def _story(rng: random.Random, start: int) -> list[dict[str, Any]]:
    """The events of one referral between two agencies, roughly as the agents emit them."""
    names = _W["names"]
    a, b = rng.sample(names, 2)
    rid = f"{rng.getrandbits(128):032x}"
    labels = (("referral_type", rng.choice(REFERRAL_TYPES)), ("urgency", rng.choice(URGENCIES)))
    t = start

    def ev(kind: str, actor: str, other: str, **kw: Any) -> dict[str, Any]:
        nonlocal t
        t += rng.randint(1, 900)
        return {
            "kind": kind,
            "agency": actor,
            "counterpart": other,
            "referral_id": rid,
            "time": t,
            **kw,
        }

    env = f"{rng.getrandbits(256):064x}"
    out = [
        ev("referral.sent", a, b, envelope_hash=env, key_ids=(_W["enc"][b],), labels=labels),
        ev("referral.received", b, a, envelope_hash=env, key_ids=(_W["enc"][b],), labels=labels),
        ev("receipt.sent", b, a, envelope_hash=f"{rng.getrandbits(256):064x}"),
        ev("receipt.received", a, b),
    ]
    if rng.random() < 0.08:
        out.append(ev("message.rejected", b, a, reason=rng.choice(REASONS)))
    if rng.random() < 0.3:
        out.append(ev("consent.recorded", a, b))
    for state in (
        "acknowledged",
        rng.choice(["accepted", "accepted", "declined", "more_info_requested"]),
    ):
        h = f"{rng.getrandbits(256):064x}"
        s = (("state", state),)
        out.append(ev("transition.sent", b, a, envelope_hash=h, labels=s))
        out.append(ev("transition.received", a, b, envelope_hash=h, labels=s))
    if rng.random() < 0.05:
        out.append(ev("consent.withdrawn", a, b))
        out.append(ev("erasure.confirmed", b, a))
    return out


def _sign_chunk(job: tuple[int, int, int]) -> list[tuple[Any, ...]]:
    """Rows (as inserted into `entries`) for indexes [start, end), signed with sign_event."""
    start, end, seed = job
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not secrets
    rows: list[tuple[Any, ...]] = []
    pending: list[dict[str, Any]] = []
    for idx in range(start, end):
        if not pending:
            pending = _story(rng, T0 + idx // 4)
        e = pending.pop(0)
        labels = tuple(sorted(e.get("labels", ())))
        event = AuditEvent(
            event_id=f"{rng.getrandbits(128):032x}",
            agency=e["agency"],
            kind=e["kind"],
            time=e["time"],
            referral_id=e["referral_id"],
            counterpart=e["counterpart"],
            envelope_hash=e.get("envelope_hash"),
            key_ids=e.get("key_ids", ()),
            reason=e.get("reason"),
            labels=labels,
        )
        signed = sign_event(event, _W["keys"][event.agency])
        leaf = LedgerEntry(index=idx, appended_at=event.time + 1, signed_event=signed).encode()
        rows.append(entry_values(idx, leaf, event, 1))
    return rows


def generate(folder: Path, n: int, workers: int) -> dict[str, Any]:
    """Write ledger.db, root.1.json and ledger-identity.json into `folder`."""
    admin = SigningKey.generate()
    root = Root.of(version=1, expires=FAR, threshold=1, keys=[admin.verify_key])
    (folder / "root.1.json").write_bytes(sign(encode_root(root), admin))
    agencies = []
    entries = []
    for agency, role in AGENCIES:
        k = AgencyKeys.generate(agency=agency, name=agency.replace("-", " ").title())
        pub = k.public
        entries.append(AgencyEntry.of(pub, (role,), valid_from=0))
        agencies.append((agency, bytes(k.signing_key), pub.encryption_kid))
    directory = Directory(version=1, expires=FAR, agencies=tuple(entries))
    directory_bytes = sign(encode_directory(directory), admin)
    ledger = AgencyKeys.generate(agency="ledger-national", name="National audit ledger")
    (folder / "ledger-identity.json").write_text(ledger.public.to_json(), encoding="utf-8")

    db = folder / "ledger.db"
    store = LedgerStore(db)
    tree = MerkleTree(store, size=0)
    with store.transaction():
        store.add_directory(1, directory_bytes, T0 - 60)
    jobs = [(s, min(s + CHUNK, n), 7919 * (s // CHUNK) + 1) for s in range(0, n, CHUNK)]
    wall, cpu = time.perf_counter(), time.process_time()
    ctx = multiprocessing.get_context("fork")
    done = 0
    conn = store._db  # the store's own connection: same SQL as insert_entry, batched
    with ctx.Pool(workers, initializer=_init_worker, initargs=(agencies,)) as pool:
        conn.execute("BEGIN IMMEDIATE")
        for rows in pool.imap(_sign_chunk, jobs):
            for r in rows:
                tree.append(leaf_hash(r[2]))
            conn.executemany(INSERT_ENTRY, rows)
            done += len(rows)
            if done % COMMIT_EVERY == 0 or done == n:
                conn.execute("COMMIT")
                if done < n:
                    conn.execute("BEGIN IMMEDIATE")
                print(f"  generated {done:,}/{n:,}", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    size = tree.size
    root_hash = tree.root()
    cp = Checkpoint(origin=ledger_origin(LEDGER_NAME), size=size, root=root_hash, timestamp=T0 + n)
    note = sign_checkpoint(cp, key=ledger.signing_key)
    with store.transaction():
        store.add_checkpoint(size, root_hash, cp.timestamp, note)
    store.close()
    return {
        "wall_s": time.perf_counter() - wall,
        "main_cpu_s": time.process_time() - cpu,
        "workers": workers,
        "db_bytes": db.stat().st_size,
        "root": root_hash.hex(),
    }


# --------------------------------------------------------------------------- measurements


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _children() -> list[int]:
    """The pids of this process's children (the verification's workers)."""
    found: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


class _WorkerPeak:
    """The largest VmHWM of any child process, sampled every 0.2 s while it runs."""

    def __init__(self) -> None:
        self.mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for pid in _children():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.mb = max(self.mb, int(line.split()[1]) / 1024)


def measure_verify(folder: Path) -> dict[str, Any]:
    """What `nrm audit verify --db` does, in this process, with its progress bar; its peak
    resident memory (the peak is reset first, so generation does not count) and its
    workers'."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    rss_before = _status_mb("VmRSS")
    with _WorkerPeak() as workers:
        result = _verify(folder, rss_before)
    result["worker_peak_rss_mb"] = workers.mb
    return result


def _verify(folder: Path, rss_before: float) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    copy = from_database(folder / "ledger.db")
    load_wall, load_cpu = time.perf_counter() - wall, time.process_time() - cpu
    checkpoint = checkpoint_of(copy, identity=folder / "ledger-identity.json", name=LEDGER_NAME)
    directories = trusted_directories(copy, [folder / "root.1.json"])
    count = verify_with_progress(copy, directories=directories, checkpoint=checkpoint)
    total_wall, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
    done = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, reaped by now
    workers_cpu = (done.ru_utime + done.ru_stime) - (children.ru_utime + children.ru_stime)
    peak = _status_mb("VmHWM")
    return {
        "events": count,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "bytes_per_event": (peak - rss_before) * 2**20 / max(1, count),
        "wall_s": total_wall,
        "cpu_s": total_cpu,
        "events_per_s_wall": count / total_wall,
        "events_per_s_cpu": count / total_cpu,
        "workers_cpu_s": workers_cpu,
        "events_per_cpu_s_all": count / (total_cpu + workers_cpu),
        "load_wall_s": load_wall,
        "load_cpu_s": load_cpu,
        "verify_only_events_per_s_wall": count / (total_wall - load_wall),
        "_copy": copy,
        "_checkpoint": checkpoint,
        "_directories": directories,
    }


def measure_cli(folder: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "nrm.cli",
        "audit",
        "verify",
        "--db",
        str(folder / "ledger.db"),
        "--root",
        str(folder / "root.1.json"),
        "--ledger-identity",
        str(folder / "ledger-identity.json"),
        "--name",
        LEDGER_NAME,
    ]
    nrm = Path(sys.executable).with_name("nrm")
    if nrm.exists():
        cmd = [str(nrm), *cmd[3:]]
    wall = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
    elapsed = time.perf_counter() - wall
    if r.returncode != 0:
        raise SystemExit(f"nrm audit verify failed: {r.stdout}{r.stderr}")
    return {"wall_s": elapsed, "output": r.stdout.strip()}


def measure_sha_floor(leaves: list[bytes], expected_root: bytes) -> dict[str, Any]:
    n = len(leaves)
    wall, cpu = time.perf_counter(), time.process_time()
    hashes = [leaf_hash(leaf) for leaf in leaves]
    got = root_of(hashes)
    w, c = time.perf_counter() - wall, time.process_time() - cpu
    if got != expected_root:
        raise SystemExit("SHA-256 floor: recomputed root differs from the checkpoint")
    wall2 = time.perf_counter()
    tree = MerkleTree(MemoryNodeStore())
    for h in hashes:
        tree.append(h)
    got2 = tree.root()
    w2 = time.perf_counter() - wall2
    if got2 != expected_root:
        raise SystemExit("MerkleTree floor: recomputed root differs from the checkpoint")
    return {
        "wall_s": w,
        "cpu_s": c,
        "leaves_per_s_wall": n / w,
        "leaves_per_s_cpu": n / c,
        "merkletree_append_wall_s": w2,
        "merkletree_append_per_s": n / w2,
    }


def measure_ed25519_floor(
    copy: Any, directories: dict[int, Directory], limit: int
) -> dict[str, Any]:
    keys: dict[tuple[str, str], VerifyKey] = {}
    for d in directories.values():
        for a in d.agencies:
            for k in a.signing_keys:
                keys[(a.agency, k.kid)] = VerifyKey(k.public)
    work = []
    for row in itertools.islice(copy.rows, limit):
        signed = LedgerEntry.decode(row.leaf).signed_event
        event, kid, body, sig = decode_signed_event(signed)
        work.append((keys[(event.agency, kid)], LABEL + b"\x00" + body, sig))
    wall, cpu = time.perf_counter(), time.process_time()
    for key, message, sig in work:
        key.verify(message, sig)
    w, c = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "events": len(work),
        "wall_s": w,
        "cpu_s": c,
        "verifies_per_s_wall": len(work) / w,
        "verifies_per_s_cpu": len(work) / c,
    }


def profile_verify(copy: Any, directories: dict[int, Directory], rows: int) -> str:
    prefix = list(itertools.islice(copy.rows, rows))
    cp = Checkpoint(
        origin=ledger_origin(LEDGER_NAME),
        size=len(prefix),
        root=root_of([leaf_hash(r.leaf) for r in prefix]),
        timestamp=T0,
    )
    del prefix
    prof = cProfile.Profile()
    prof.enable()
    verify_source(copy.rows, count=rows, directories=directories, checkpoint=cp, workers=1)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(18)
    stats.sort_stats("cumulative").print_stats(22)
    return out.getvalue()


# --------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--keep", type=Path, default=None, help="keep the ledger files in DIR")
    p.add_argument("--cli", action="store_true", help="also time the real CLI (subprocess)")
    p.add_argument("--profile-rows", type=int, default=49_152, help="0 to skip the profile")
    p.add_argument(
        "--ed25519-events",
        type=int,
        default=None,
        help=f"default: all events, at most {ED25519_DEFAULT_EVENTS:,}",
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        if (args.keep / "ledger.db").exists():
            raise SystemExit(f"{args.keep}/ledger.db exists; give an empty folder")
        folder = args.keep
    else:
        folder = Path(tempfile.mkdtemp(prefix="nrm-bench-audit-"))
    try:
        print(f"generating {args.events:,} events in {folder} ...", file=sys.stderr)
        gen = generate(folder, args.events, args.workers)
        print(f"  {gen['wall_s']:.1f} s", file=sys.stderr)

        print("(a) nrm audit verify --db path ...", file=sys.stderr)
        ver = measure_verify(folder)
        copy, checkpoint, directories = (
            ver.pop("_copy"),
            ver.pop("_checkpoint"),
            ver.pop("_directories"),
        )
        cli = measure_cli(folder) if args.cli else None

        print("(b) SHA-256 floor ...", file=sys.stderr)
        sha = measure_sha_floor([r.leaf for r in copy.rows], checkpoint.root)
        print("(c) Ed25519 floor ...", file=sys.stderr)
        ed_events = args.ed25519_events or min(len(copy.rows), ED25519_DEFAULT_EVENTS)
        ed = measure_ed25519_floor(copy, directories, ed_events)
        profile = profile_verify(copy, directories, args.profile_rows) if args.profile_rows else ""
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)

    n = ver["events"]
    print()
    print(
        f"NRM audit ledger verification, N = {n:,} events "
        f"({os.cpu_count()} cpus, Python {platform.python_version()})"
    )
    print(f"{'measure':58} {'rate /s':>12} {'wall s':>8} {'cpu s':>8}")
    table = [
        (
            "generation (sign + tree + sqlite; not the figure)",
            n / gen["wall_s"],
            gen["wall_s"],
            gen["main_cpu_s"],
        ),
        (
            "(a) nrm audit verify --db, events/s (in-process)",
            ver["events_per_s_wall"],
            ver["wall_s"],
            ver["cpu_s"],
        ),
        (
            "    per CPU-second of all processes (workers' CPU in cpu s)",
            ver["events_per_cpu_s_all"],
            ver["wall_s"],
            ver["workers_cpu_s"],
        ),
        (
            "    of which from_database (checkpoint, count rows)",
            n / ver["load_wall_s"],
            ver["load_wall_s"],
            ver["load_cpu_s"],
        ),
        (
            "    verify only (excluding the read)",
            ver["verify_only_events_per_s_wall"],
            ver["wall_s"] - ver["load_wall_s"],
            None,
        ),
    ]
    if cli is not None:
        table.append(
            (
                "(a') nrm audit verify --db, real CLI subprocess",
                n / cli["wall_s"],
                cli["wall_s"],
                None,
            )
        )
    table += [
        (
            "(b) floor: SHA-256 leaf_hash + root_of, leaves/s",
            sha["leaves_per_s_wall"],
            sha["wall_s"],
            sha["cpu_s"],
        ),
        (
            "    MerkleTree(MemoryNodeStore).append, leaves/s",
            sha["merkletree_append_per_s"],
            sha["merkletree_append_wall_s"],
            None,
        ),
        (
            f"(c) floor: Ed25519 verify only ({ed['events']:,} events)",
            ed["verifies_per_s_wall"],
            ed["wall_s"],
            ed["cpu_s"],
        ),
    ]
    for name, rate, w, c in table:
        cs = "" if c is None else f"{c:8.2f}"
        print(f"{name:58} {rate:12,.0f} {w:8.2f} {cs:>8}")
    print(
        f"verify peak RSS {ver['peak_rss_mb']:,.0f} MB (from {ver['rss_before_mb']:,.0f} MB:"
        f" {ver['bytes_per_event']:,.0f} B per event); largest worker peak RSS"
        f" {ver['worker_peak_rss_mb']:,.0f} MB;"
        f" generation {gen['wall_s']:,.0f} s, database {gen['db_bytes'] / 2**20:,.0f} MB"
    )
    if profile:
        print(f"\ncProfile of verify_source (workers=1) over {args.profile_rows:,} rows:")
        print(profile)

    if args.json is not None:
        doc = {
            "benchmark": "audit_verify",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "events": n,
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "generation": gen,
            "verify": ver,
            "cli": cli,
            "sha256_floor": sha,
            "ed25519_floor": ed,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
