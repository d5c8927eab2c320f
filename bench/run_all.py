"""Benchmark driver: every figure of issue 16 from one run, as one Markdown table.

What it runs, one after the other (each script's own docstring says what it measures)
    bench/throughput.py       the full floor, the project's crypto path, all four
                              processes' CPU per referral at saturation, saturation, POST ->
                              inbox at half of it, the backlog drain, raw JetStream, and a
                              py-spy profile of each process at saturation (with py-spy)
    bench/mechanism_scale.py  a directory of 300 agencies with 50 agents live: a new
                              directory and a rotation applied at every live agent, one
                              agent's verify and apply, the bus authority's reload
    bench/audit_verify.py     `nrm audit verify --db` of a 5-million-event ledger: events/s,
                              peak RSS, and the time its generation took
Each writes its JSON into a temporary folder; this script prints the table (measure, value,
the issue's target, met or not) and, with --json, writes the table and every script's
figures to one file. Only ratios within one run are meant to be compared across machines.

Run
    .venv/bin/python bench/run_all.py [--json out.json] [--quick] [--no-profile]
        [--backlog 20000] [--agencies 300] [--live 50] [--events 5000000]
    --quick: a smoke run of a few minutes at small sizes (500 queued referrals, 30 agencies
    with 5 live, 50,000 audit events, short phases, no profile); its figures mean little.
    The full run takes about 25 minutes on 2 cores, estimated from smoke runs: throughput.py
    about 7, mechanism_scale.py about 2, audit_verify.py about 15 (5M events: generation about
    3 minutes, verification about 8; the verification's memory stays flat, about 80 MB, as
    `nrm audit verify --db` streams its rows; the table reports its peak).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import machine

HERE = Path(__file__).resolve().parent
Row = tuple[str, str, str, str]
COLUMNS = ("measure", "value", "target", "met")


def run_script(name: str, args: list[str], out: Path) -> dict[str, Any]:
    """Run bench/<name>.py with `args` and --json `out`; its figures."""
    print(f"== {name} {' '.join(args)}", file=sys.stderr, flush=True)
    subprocess.run(  # noqa: S603 - our own interpreter and scripts
        [sys.executable, str(HERE / f"{name}.py"), *args, "--json", str(out)], check=True
    )
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def throughput_rows(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    floor, e = r["full_floor"], r["end_to_end"]
    sat, lat, backlog, raw = e["saturation"], e["latency"], e["backlog"], r["raw_jetstream"]
    per = {k: v / sat["accepted"] * 1000 for k, v in sat["cpu_seconds"].items()}
    cpu = sum(per.values())
    ratio = cpu / floor["ms_per_referral"]
    rate = sat["inbox_commits_per_second_in_window"]
    p50, p99 = lat["post_to_inbox_ms"]["p50"], lat["post_to_inbox_ms"]["p99"]
    rows: list[Row] = [
        (
            "full floor: libsodium minimum for one referral + 4 raw JetStream messages"
            " (client CPU)",
            f"{floor['ms_per_referral']:.2f} ms ({floor['libsodium_ms']:.2f} +"
            f" {floor['jetstream_4_messages_ms']:.2f})",
            "",
            "",
        ),
        (
            "the project's own crypto path (throughput.py part c)",
            f"{r['crypto']['cpu_ms_per_referral']:.2f} ms",
            "",
            "",
        ),
        (
            "all four processes' CPU per referral at saturation (police + shelter + ledger +"
            " nats-server)",
            f"{cpu:.2f} ms ({per['police']:.2f} + {per['shelter']:.2f} + {per['ledger']:.2f}"
            f" + {per['nats-server']:.2f}) = {ratio:.1f}x the full floor",
            "<= 3x the full floor",
            met(ratio <= 3),
        ),
        (
            f"saturation, referrals committed to the recipient's inbox ({sat['clients']}"
            f" clients, {sat['seconds']:.0f} s)",
            f"{rate:.0f}/s",
            "",
            "",
        ),
        (
            f"POST -> inbox p50 / p99 at half saturation ({lat['rate']:.0f}/s,"
            f" {lat['accepted']} referrals)",
            f"{p50:.1f} / {p99:.1f} ms",
            "p99 <= 20 ms",
            met(p99 <= 20),
        ),
    ]
    if "drain_seconds" in backlog:
        drain = backlog["referrals_per_second"]
        rows.append(
            (
                f"backlog drain: {backlog['queued']:,} referrals queued for a stopped recipient,"
                " from its start until all are committed and receipted",
                f"{drain:.0f}/s ({backlog['drain_seconds']:.1f} s, started in"
                f" {backlog['start_to_healthy_seconds']:.1f} s) = {drain / rate:.2f}x"
                " saturation",
                ">= 1.5x saturation",
                met(drain >= 1.5 * rate),
            )
        )
    rows.append(
        (
            "raw JetStream sequential / 256 in flight",
            f"{raw['sequential_publish']['messages_per_second']:.0f} /"
            f" {raw['pipelined_256']['messages_per_second']:.0f} msg/s",
            "",
            "",
        )
    )
    return rows


def mechanism_rows(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    scale = f"{r['agencies']} agencies, {r['live_agents']} agents live"
    new, rot = r["new_directory_all_live_agents_ms"], r["rotation_all_live_agents_ms"]
    reload, applied = r["authority_reload_ms"], r["authority_applied_ms"]
    return [
        (
            f"new directory applied at every live agent ({scale}; from the put, median / max"
            f" of {2 * r['rounds']})",
            f"{new['median']:.0f} / {new['max']:.0f} ms",
            "<= 1 s",
            met(new["max"] <= 1000),
        ),
        (
            f"one agent verifies and applies the directory ({r['directory_bytes']:,} bytes)",
            f"{r['one_agent_verify_apply_ms']:.1f} ms",
            "",
            "",
        ),
        (
            "bus authority: reload (authorization made + nats-server confirmed) / put ->"
            " running, median",
            f"{reload['median']:.0f} / {applied['median']:.0f} ms",
            "",
            "",
        ),
        (
            f"rotation propagated to all live agents (max over agents; median / max of"
            f" {r['rounds']})",
            f"{rot['median']:.0f} / {rot['max']:.0f} ms",
            "",
            "",
        ),
    ]


def audit_rows(doc: dict[str, Any]) -> list[Row]:
    v, g = doc["verify"], doc["generation"]
    rate = v["events_per_s_wall"]
    return [
        (
            f"audit verify of a {doc['events']:,}-event ledger (`nrm audit verify --db` path)",
            f"{rate:,.0f} events/s ({v['wall_s']:.0f} s), peak RSS {v['peak_rss_mb']:,.0f} MB",
            ">= 50,000 events/s",
            met(rate >= 50_000),
        ),
        (
            "  its Ed25519 floor (verify only, one core) / the ledger's generation",
            f"{doc['ed25519_floor']['verifies_per_s_wall']:,.0f} /s;"
            f" generated in {g['wall_s']:.0f} s",
            "",
            "",
        ),
    ]


def markdown(rows: list[Row]) -> str:
    lines = ["| measure | value | target | |", "|---|---|---|---|"]
    lines += [f"| {m} | {v} | {t} | {ok} |" for m, v, t, ok in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="write the table and every figure here")
    parser.add_argument("--quick", action="store_true", help="a smoke run at small sizes")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--backlog", type=int, default=None, help="default 20,000 (quick 500)")
    parser.add_argument("--agencies", type=int, default=None, help="default 300 (quick 30)")
    parser.add_argument("--live", type=int, default=None, help="default 50 (quick 5)")
    parser.add_argument("--events", type=int, default=None, help="default 5M (quick 50,000)")
    args = parser.parse_args()
    quick = args.quick
    tp = ["--backlog", str(args.backlog or (500 if quick else 20_000))]
    if quick:
        tp += ["--saturation-seconds", "4", "--latency-seconds", "4"]
        tp += ["--crypto-iterations", "300", "--raw-messages", "500"]
    if quick or args.no_profile:
        tp.append("--no-profile")
    ms = ["--agencies", str(args.agencies or (30 if quick else 300))]
    ms += ["--live", str(args.live or (5 if quick else 50))]
    ms += ["--rounds", "2" if quick else "3"]
    av = ["--events", str(args.events or (50_000 if quick else 5_000_000))]
    av += ["--profile-rows", "0" if quick else "50000"]

    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="nrm-bench-all-") as tmp:
        docs = {
            "throughput": run_script("throughput", tp, Path(tmp) / "throughput.json"),
            "mechanism_scale": run_script("mechanism_scale", ms, Path(tmp) / "scale.json"),
            "audit_verify": run_script("audit_verify", av, Path(tmp) / "audit.json"),
        }
    rows = throughput_rows(docs["throughput"])
    rows += mechanism_rows(docs["mechanism_scale"])
    rows += audit_rows(docs["audit_verify"])
    command = " ".join(["bench/run_all.py", *sys.argv[1:]])
    table = markdown(rows)
    m = machine()
    print(f"\n{command}  ({m['nproc']} cores, Python {m['python']}, {started:%Y-%m-%d})\n")
    print(table)
    if args.json is not None:
        doc = {
            "benchmark": "run_all",
            "date": started.isoformat(timespec="seconds"),
            "command": command,
            "quick": quick,
            "table": [dict(zip(COLUMNS, r, strict=True)) for r in rows],
            "markdown": table,
            "runs": docs,
            "machine": m,
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
