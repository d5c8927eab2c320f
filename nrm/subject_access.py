"""`nrm subject-access`: the agent's subject access report (POST /v1/subject-access) as
text, CSV or JSON (docs/RUNBOOK.md "Answer a subject access request")."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from agents import AgentConfig
from runtime.tls import client_context, url_host

from .exits import Failed, Unreachable, VerificationFailed
from .show import when

#: The CSV columns: one row per access, one per recipient no access was recorded for,
#: one per id this agency did not send.
CSV_COLUMNS = (
    "referral_id",
    "known",
    "recipient",
    "categories_sent",
    "state",
    "sent_at",
    "delivered_at",
    "consent_withdrawn_at",
    "erasure_confirmed_at",
    "accessed_at",
    "client",
    "record",
    "categories_read",
    "reads",
)
#: How long the command waits for the report: the agent walks every access record of this
#: agency's referrals since the oldest named one was made, a ledger page at a time.
REPORT_SECONDS = 600
#: The agent's 503 reasons and the exit code each ends with (nrm/exits.py): a ledger that
#: does not verify is a verification failure, one not reached (yet) may answer later.
_LEDGER_FAILURES = {
    "ledger-unverified": VerificationFailed,
    "ledger-unreachable": Unreachable,
    "no-checkpoint": Unreachable,
}


def api_url(config: AgentConfig) -> str:
    """Where the agent of `config` answers: its `[api] bind` address (loopback for a bind to
    every address), https:// when it serves TLS."""
    anywhere = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 (bind addresses)
    host = anywhere.get(config.api_host, config.api_host)
    scheme = "http" if config.api_tls is None else "https"
    return f"{scheme}://{url_host(host)}:{config.api_port}"


async def fetch(url: str, token: str, referral_ids: Sequence[str], *, ca_file: Path | None) -> Any:
    """The report the agent at `url` answers, or the exception of nrm/exits.py its problem
    (or its absence) ends the command with."""
    connector = aiohttp.TCPConnector(ssl=True if ca_file is None else client_context(ca_file))
    async with (
        aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=REPORT_SECONDS)
        ) as http,
        http.post(
            f"{url.rstrip('/')}/v1/subject-access",
            json={"referral_ids": list(referral_ids)},
            headers={"Authorization": f"Bearer {token}"},
        ) as r,
    ):
        body = await r.json(content_type=None)
        if r.status == 200:
            return body
    detail = body.get("detail", "") if isinstance(body, dict) else ""
    reason = body.get("reason", "") if isinstance(body, dict) else ""
    failure = _LEDGER_FAILURES.get(reason, Failed) if r.status == 503 else Failed
    raise failure(f"the agent refused the report (HTTP {r.status}): {detail}")


def _iso(t: int | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def csv_text(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_rows(report))
    return out.getvalue()


def _categories(copy: dict[str, Any]) -> str:
    """The categories sent, space-separated; `unknown` for a copy sent before they were
    kept (an empty cell would read as "nothing was sent")."""
    if "categories" not in copy:
        return ""  # a read by an agency this one never sent the referral to
    kept = copy["categories"]
    return "unknown" if kept is None else " ".join(kept)


def _rows(report: dict[str, Any]) -> Iterator[list[str]]:
    for referral in report["referrals"]:
        rid = referral["id"]
        if not referral["known"]:
            yield [rid, "no", *[""] * (len(CSV_COLUMNS) - 2)]
            continue
        copies = [(c, c["accesses"]) for c in referral["recipients"]]
        copies += [
            ({"agency": a["agency"], "state": "not-sent"}, [a]) for a in referral["other_accesses"]
        ]
        for copy, accesses in copies:
            sent = [
                copy["agency"],
                _categories(copy),
                copy["state"],
                *(_iso(copy.get(k)) for k in ("sent_at", "delivered_at")),
                *(_iso(copy.get(k)) for k in ("consent_withdrawn_at", "erasure_confirmed_at")),
            ]
            for a in accesses or [None]:
                read = (
                    ["", "", "", "", ""]
                    if a is None
                    else [
                        _iso(a["time"]),
                        a["client"],
                        a["record"],
                        " ".join(a["categories"]),
                        str(a["reads"]),
                    ]
                )
                yield [rid, "yes", *sent, *read]


def text(report: dict[str, Any]) -> str:
    lines = []
    for referral in report["referrals"]:
        rid = referral["id"]
        if not referral["known"]:
            lines.append(
                f"referral {rid}: not held by {report['agency']} "
                "(never sent by it, or purged by retention)"
            )
            continue
        lines.append(
            f"referral {rid} ({referral['referral_type']}, {referral['urgency']}, legal basis "
            f"{referral['legal_basis']}), created {when(referral['created'])}"
        )
        for copy in referral["recipients"]:
            categories = copy["categories"]
            lines.append(
                f"  to {copy['agency']}: {copy['state']}; sent {when(copy['sent_at'])}, "
                f"delivered {when(copy['delivered_at'])}; categories "
                + (
                    "not kept (sent before they were)"
                    if categories is None
                    else ", ".join(categories)
                )
            )
            if copy["consent_withdrawn_at"] is not None:
                lines.append(
                    f"    consent withdrawn {when(copy['consent_withdrawn_at'])}, erasure "
                    f"confirmed {when(copy['erasure_confirmed_at'])}"
                )
            lines += [f"    {_read(a)}" for a in copy["accesses"]] or ["    no read recorded"]
            lines.append(f"    {copy['onward']}")
        for a in referral["other_accesses"]:
            lines.append(f"  NOT SENT TO {a['agency']}, yet it recorded: {_read(a)}")
    cp = report["checkpoint"]
    if cp is not None:
        lines.append(f"reads as of ledger checkpoint {cp['size']} ({when(cp['timestamp'])})")
    return "\n".join(lines)


def _read(a: dict[str, Any]) -> str:
    return (
        f"read {when(a['time'])} by {a['client']}: {a['record']} "
        f"({', '.join(a['categories'])}), {a['reads']} read(s)"
    )
