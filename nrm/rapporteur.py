"""`nrm rapporteur report`: the national rapporteur's statistics from the contributions its
agent holds (GET /v1/contributions, PROTOCOL §8.11), each cross-checked against the
ledger's `identification.decided` entries (an auditor token), the ones that add up summed
into one table and released under disclosure control (runtime/disclosure.py,
docs/proposals/nrm-process.md §12.4). A contribution that does not add up is left out and
listed (`contribution-mismatch`), as is a month of decisions without one.

The report has two parts: the publication (`publication`, `text`, `csv_text`, and the
signed report of `signed`), which carries only the protected cells; and the diagnostics
(`diagnostics`, `diagnostics_text`), the cross-check per authority and month with exact
counts, which are for the rapporteur alone and never published or signed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp

from agents import contributions as S
from keys import DEFAULT_LIMITS, AgencyKeys
from keys import report as signed_report
from keys.codec import canonical_json
from keys.identity import signing_kid
from keys.policy import Statistics
from runtime import disclosure
from runtime.tls import client_context

from .exits import Failed

#: The released table's dimensions, in order (the SDG 16.2.2 breakdown by stage and outcome).
DIMS: Final = ("stage", "outcome", "sex", "age_group", "form")
DOMAINS: Final[Mapping[str, Sequence[str]]] = {
    "stage": S.STAGES,
    "outcome": S.OUTCOMES,
    "sex": S.SEXES,
    "age_group": S.AGE_GROUPS,
    "form": S.FORMS,
}
CSV_COLUMNS: Final = signed_report.CSV_COLUMNS
_PAGE = 500


def months(first: str, last: str) -> list[str]:
    """Every month from `first` to `last`, both `YYYY-MM`, in order."""
    out, period = [], first
    while period <= last:
        out.append(period)
        period = S.period_of(S.period_end(period))
    return out


def release_period(first: str, last: str) -> str | None:
    """What the months `first` to `last` (`YYYY-MM`) are as a release: one calendar
    `month`, `quarter` or `year`; None for any other range. Releases over fixed periods
    only: two overlapping ranges (January to November, then to December) would give the
    difference's cells exactly by subtraction."""
    year, month = first[:4], int(first[5:])
    if first == last:
        return "month"
    if month % 3 == 1 and last == f"{year}-{month + 2:02d}":
        return "quarter"
    if month == 1 and last == f"{year}-12":
        return "year"
    return None


def decided_in(
    entries: Iterable[Mapping[str, Any]], first: str, last: str
) -> list[Mapping[str, Any]]:
    """The ledger entries dated in the months `first` to `last`."""
    return [e for e in entries if first <= S.period_of(int(e["time"])) <= last]


def build(
    contributions: Sequence[S.Contribution],
    entries: Iterable[Mapping[str, Any]],
    *,
    k: int,
    round_to: int,
    now: int,
    grace_days: int,
    hashes: Mapping[tuple[str, str], str] | None = None,
) -> dict[str, Any]:
    """The report (pure): every contribution cross-checked (with its envelope's hash from
    `hashes`, by authority and period, where given), the months missing whose contribution
    was due at `now` (`grace_days` after the month), and the table of the ones that add up
    with all its marginals under disclosure control; no cell at all (`released` false) when
    some cell below `k` cannot be hidden. `contributions` is read twice (a Sequence)."""
    checked, unsent = S.cross_check(contributions, entries)
    missing = [(a, p) for a, p in unsent if S.due_at(p, grace_days) <= now]
    accepted = {(c.authority, c.period) for c in checked if c.ok}
    counts: Counter[tuple[str, ...]] = Counter()
    for c in contributions:
        if (c.authority, c.period) in accepted:
            for cell in c.cells:
                counts[cell.key()] += cell.count
    try:
        # No cell is taken as public: the ledger's `/v1/stats` suppresses its small counts,
        # is for auditors, and counts every decision by month, not the accepted
        # contributions of these months, so none of its figures is one of these cells.
        released = disclosure.protect(counts, DIMS, DOMAINS, k=k, round_to=round_to)
    except disclosure.Unprotectable:
        released = None  # publish nothing rather than something that leaks
    return {
        "k": k,
        "round_to": round_to,
        "released": released is not None,
        "contributions": [
            {
                "authority": c.authority,
                "period": c.period,
                "envelope_hash": (hashes or {}).get((c.authority, c.period)),
                "accepted": c.ok,
                "reason": c.reason,
                "mismatches": [
                    {
                        "stage": m.stage,
                        "outcome": m.outcome,
                        "contributed": m.contributed,
                        "ledger": m.ledger,
                    }
                    for m in c.mismatches
                ],
            }
            for c in checked
        ],
        "missing": [{"authority": a, "period": p} for a, p in missing],
        "cells": [
            {
                **{d: (values[table.index(d)] if d in table else "total") for d in DIMS},
                "count": p.value,
                "suppressed": p.suppressed,
                "rounded": p.rounded,
            }
            for (table, values), p in sorted((released or {}).items())
        ],
    }


def signed(report: Mapping[str, Any], *, first: str, last: str, keys: AgencyKeys, at: int) -> bytes:
    """`report` (of `build`, for the months `first` to `last`) as the signed report of
    PROTOCOL §8.12, signed at `at` by the rapporteur agency's `keys`: its released cells and
    the envelope hashes of the contributions they sum. A ValueError if an accepted
    contribution came without its hash (nothing to name it by)."""
    accepted = [c["envelope_hash"] for c in report["contributions"] if c["accepted"]]
    if None in accepted:
        raise ValueError("an accepted contribution has no envelope hash")
    cells = sorted(
        (signed_report.ReportCell(**cell) for cell in report["cells"]), key=lambda c: c.key()
    )
    document = signed_report.Report(
        rapporteur=keys.agency,
        kid=signing_kid(keys.signing_key.verify_key),
        first=first,
        last=last,
        k=report["k"],
        round_to=report["round_to"],
        released=report["released"],
        cells=tuple(cells),
        contributions=tuple(sorted(set(accepted))),
        signed_at=at,
    )
    return signed_report.sign_report(document, keys.signing_key)


async def publish(*, ledger_url: str, token: str, data: bytes, ca_file: Path | None) -> str:
    """Post the signed report to the ledger (`POST /v1/reports`, a token of scope
    `rapporteur`); its id, or Failed naming what the ledger refused."""
    connector = aiohttp.TCPConnector(ssl=True if ca_file is None else client_context(ca_file))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(
            f"{ledger_url.rstrip('/')}/v1/reports",
            data=data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        ) as r,
    ):
        body = await r.json(content_type=None)
        if r.status not in (200, 201):
            detail = body.get("detail", "") if isinstance(body, dict) else ""
            raise Failed(f"the ledger answered HTTP {r.status}: {detail}")
        return str(body["report_id"])


def publication(report: Mapping[str, Any], *, first: str, last: str) -> dict[str, Any]:
    """What `report` (of `build`, for the months `first` to `last`) publishes: the
    disclosure control and the protected cells, nothing per authority or month."""
    return {
        "from": first,
        "to": last,
        **{name: report[name] for name in ("k", "round_to", "released", "cells")},
    }


def diagnostics(report: Mapping[str, Any]) -> dict[str, Any]:
    """The cross-check of `report` (of `build`): every contribution with its exact counts
    where they differ from the ledger's, and the missing months. Internal to the rapporteur
    (small counts in clear): never published."""
    return {name: report[name] for name in ("contributions", "missing")}


def diagnostics_text(report: Mapping[str, Any]) -> str:
    """The cross-check's verdicts, one line per contribution or missing month, without
    counts (those are in `diagnostics`)."""
    lines = []
    for c in report["contributions"]:
        state = "accepted" if c["accepted"] else f"refused {c['reason']}"
        lines.append(f"{c['period']} {c['authority']}: {state}")
    lines += [f"{m['period']} {m['authority']}: missing" for m in report["missing"]]
    return "\n".join(lines)


def csv_text(report: Mapping[str, Any]) -> str:
    return signed_report.cells_csv(report["cells"])


def text(report: Mapping[str, Any]) -> str:
    """The publication of `report` as text: the stage and outcome totals as released."""
    lines = []
    if not report["released"]:
        lines.append("nothing released: a cell below k cannot be hidden in this release")
    totals = [c for c in report["cells"] if c["sex"] == c["age_group"] == c["form"] == "total"]
    for c in totals:
        shown = "suppressed" if c["suppressed"] else str(c["count"])
        lines.append(f"{c['stage']} {c['outcome']}: {shown}")
    return "\n".join(lines)


def _contribution(item: Mapping[str, Any]) -> S.Contribution:
    """One served contribution decoded again by §8.11's rules (the agent is trusted only so
    far: what does not decode fails the report)."""
    doc = {k: item[k] for k in ("authority", "cells", "durations", "period")}
    return S.Contribution.decode(canonical_json(doc), limits=DEFAULT_LIMITS)


async def fetch(
    *,
    url: str,
    token: str,
    ledger_url: str,
    ledger_token: str,
    periods: Sequence[str],
    ca_file: Path | None,
) -> tuple[list[S.Contribution], list[dict[str, Any]], Statistics, dict[tuple[str, str], str]]:
    """The contributions the agent at `url` holds for `periods`, the ledger's
    `identification.decided` entries (every page), the statistics policy of the agent's
    trusted directory (the defaults without one), and each contribution's envelope hash by
    authority and period, or Failed."""
    connector = aiohttp.TCPConnector(ssl=True if ca_file is None else client_context(ca_file))
    async with aiohttp.ClientSession(connector=connector) as http:
        held: list[S.Contribution] = []
        hashes: dict[tuple[str, str], str] = {}
        policy = Statistics()
        for period in periods:
            body = await _get(http, f"{url.rstrip('/')}/v1/contributions?period={period}", token)
            held += [_contribution(item) for item in body["items"]]
            hashes |= {(i["authority"], i["period"]): i["envelope_hash"] for i in body["items"]}
            if body["statistics"] is not None:
                policy = Statistics(**body["statistics"])
        entries: list[dict[str, Any]] = []
        events = f"{ledger_url.rstrip('/')}/v1/events?q={S.DECIDED}&limit={_PAGE}"
        page = await _get(http, events, ledger_token)
        while True:
            entries += [e for e in page["items"] if e["kind"] == S.DECIDED]
            if page["next_cursor"] is None:
                break
            page = await _get(http, f"{events}&cursor={page['next_cursor']}", ledger_token)
    return held, entries, policy, hashes


async def _get(http: aiohttp.ClientSession, url: str, token: str) -> Any:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        body = await r.json(content_type=None)
        if r.status != 200:
            detail = body.get("detail", "") if isinstance(body, dict) else ""
            raise Failed(f"{url.split('?')[0]} answered HTTP {r.status}: {detail}")
        return body
