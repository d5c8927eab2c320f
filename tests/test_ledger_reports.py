"""The rapporteur's signed report at a real ledger (PROTOCOL §8.12): `nrm rapporteur report
--publish` signs it with the rapporteur's key and posts it with a token of scope
`rapporteur`; the ledger verifies it against the directory it trusts, stores and serves it
(JSON and CSV) to an auditor, and refuses what does not verify with problem+json naming
the check, storing nothing."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import secrets
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from playwright.async_api import async_playwright

from agents import contributions as S
from broker.ledger import RAPPORTEUR_SCOPE, Ledger, LedgerToken
from keys import AgencyKeys
from keys import report as R
from keys.codec import canonical_json
from keys.identity import signing_kid
from keys.roles import RAPPORTEUR
from nrm.cli import main
from runtime import clock
from runtime.http import token_digest

from .conftest import LedgerAccess
from .support import Mechanism, agency_keys, eventually, unavailable
from .test_identification import AUTHORITY, decide, opened_case
from .test_ledger_ui import CHROMIUM, CHROMIUM_ARGS, HAVE_CHROMIUM, no_csp_or_script_errors, open_ui
from .test_statistics import (
    RAPPORTEUR_AGENCY,
    _decided_in_ledger,
    _held,
    _json_in,
    _month_over,
    rapporteur,
)
from .test_vectors import parse

__all__ = ["rapporteur"]  # the fixture, used by the tests below

VECTORS = Path(__file__).parent / "vectors"


async def _rapporteur_token(ledger: Ledger) -> str:
    """A new ledger token of scope `rapporteur`, as ledger.toml would list it, once the
    ledger trusts the directory naming the rapporteur."""

    async def trusted() -> bool:
        d = ledger.directory
        return d is not None and RAPPORTEUR in d.agency(RAPPORTEUR_AGENCY).roles

    await eventually(trusted, what="the ledger to trust the directory naming the rapporteur")
    token = secrets.token_urlsafe(16)
    ledger.config = dataclasses.replace(
        ledger.config,
        tokens=(*ledger.config.tokens, LedgerToken(token_digest(token), RAPPORTEUR_SCOPE)),
    )
    ledger.tokens = (ledger.config.tokens, ledger.config.token_digests)
    return token


def _report(keys: AgencyKeys, **changes: Any) -> R.Report:
    cell = R.ReportCell("first", "positive", "total", "total", "total", 15, False, True)
    fields: dict[str, Any] = {
        "rapporteur": keys.agency,
        "kid": signing_kid(keys.signing_key.verify_key),
        "first": "2025-05",
        "last": "2025-06",
        "k": 5,
        "round_to": 5,
        "released": True,
        "cells": (
            R.ReportCell("first", "negative", "total", "total", "total", None, True, False),
            cell,
        ),
        "contributions": ("ab" * 32,),
        "signed_at": clock.now(),
    }
    return R.Report(**{**fields, **changes})


async def _post(m: Mechanism, token: str, data: bytes) -> tuple[int, Any]:
    assert m.sandbox.ledger is not None
    async with m.http.post(
        m.sandbox.ledger.url + "/v1/reports",
        data=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ) as r:
        return r.status, await r.json(content_type=None)


async def _get(m: Mechanism, path: str, token: str) -> tuple[int, str, bytes]:
    assert m.sandbox.ledger is not None
    async with m.http.get(
        m.sandbox.ledger.url + path, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        return r.status, r.content_type, await r.read()


async def _listed(m: Mechanism) -> list[dict[str, Any]]:
    status, _, body = await _get(m, "/v1/reports", m.sandbox.auditor_token)
    assert status == 200, body
    items: list[dict[str, Any]] = json.loads(body)["items"]
    return items


async def test_a_signed_report_is_stored_once_and_served(
    rapporteur: tuple[Mechanism, Path],
) -> None:
    """A report signed by the rapporteur is stored (201), the same bytes again change
    nothing (200, the same id); an auditor lists it, reads its signed members and file, and
    its cells as CSV with suppressed cells empty; the rapporteur's token reads nothing and an
    auditor's may not post."""
    m, _ = rapporteur
    assert m.sandbox.ledger is not None
    token = await _rapporteur_token(m.sandbox.ledger)
    keys = agency_keys(m, RAPPORTEUR_AGENCY)
    data = R.sign_report(_report(keys), keys.signing_key)
    report_id = R.report_id(data)
    assert await _post(m, token, data) == (201, {"report_id": report_id})
    assert await _post(m, token, data) == (200, {"report_id": report_id})
    [item] = await _listed(m)
    assert item["report_id"] == report_id
    assert (item["rapporteur"], item["from"], item["to"]) == (
        RAPPORTEUR_AGENCY,
        "2025-05",
        "2025-06",
    )

    status, _, body = await _get(m, f"/v1/reports/{report_id}", m.sandbox.auditor_token)
    assert status == 200, body
    stored = json.loads(body)
    assert base64.b64decode(stored["signed"]) == data
    assert stored["report"] == json.loads(data)["signed"]
    status, ctype, body = await _get(m, f"/v1/reports/{report_id}.csv", m.sandbox.auditor_token)
    assert (status, ctype) == (200, "text/csv")
    assert body.decode().splitlines() == [
        "stage,outcome,sex,age_group,form,count,suppressed,rounded",
        "first,negative,total,total,total,,yes,no",
        "first,positive,total,total,total,15,no,yes",
    ]
    assert (await _get(m, f"/v1/reports/{'0' * 64}", m.sandbox.auditor_token))[0] == 404

    # Least privilege: the rapporteur's token only posts; no other scope posts.
    for path in ("/v1/reports", f"/v1/reports/{report_id}", "/v1/events"):
        status, ctype, _ = await _get(m, path, token)
        assert (status, ctype) == (403, "application/problem+json"), path
    status, body = await _post(m, m.sandbox.auditor_token, data)
    assert status == 403, body


async def test_a_report_that_does_not_verify_is_refused_and_nothing_stored(
    rapporteur: tuple[Mechanism, Path],
) -> None:
    """Each report the checks of §8.12 refuse answers 400 problem+json with its reason, and
    the ledger lists nothing afterwards: one signed by an agency that is no rapporteur, one
    changed after signing, one dated ahead, one of a month not over, and bytes that are no
    report (the vector's, signed by a key the directory does not list)."""
    m, _ = rapporteur
    assert m.sandbox.ledger is not None
    token = await _rapporteur_token(m.sandbox.ledger)
    keys = agency_keys(m, RAPPORTEUR_AGENCY)
    police = agency_keys(m, "police")
    tampered = json.loads(R.sign_report(_report(keys), keys.signing_key))
    tampered["signed"]["cells"][1]["count"] = 10
    now = clock.now()
    this_month = time.strftime("%Y-%m", time.gmtime(now))
    _, vector = parse(VECTORS / "report-ok.txt")
    cases = [
        ("police", R.sign_report(_report(police), police.signing_key), "not-for-this-role"),
        (
            "tampered",
            canonical_json(tampered),
            "bad-signature",
        ),
        ("ahead", R.sign_report(_report(keys, signed_at=now + 3600), keys.signing_key), "misdated"),
        ("this month", R.sign_report(_report(keys, last=this_month), keys.signing_key), "misdated"),
        ("not json", b"{", "malformed"),
        ("no signature", canonical_json({"signed": tampered["signed"]}), "malformed"),
        ("unknown signer", vector, "unknown-key"),
    ]
    for name, data, reason in cases:
        status, body = await _post(m, token, data)
        assert (status, body.get("reason")) == (400, reason), (name, body)
        assert reason in body["detail"], name
    status, body = await _post(m, token, b" " * (R.MAX_REPORT_BYTES + 1))
    assert status == 413, body
    assert await _listed(m) == []


async def test_nrm_rapporteur_report_publishes_it(
    rapporteur: tuple[Mechanism, Path], tmp_path: Path
) -> None:
    """`nrm rapporteur report --publish` over months with no decisions signs the released
    (all-zero) table with the rapporteur's key, posts it, and prints the ledger's id, which
    the ledger serves as that report; without a rapporteur token it posts nothing."""
    m, _ = rapporteur
    assert m.sandbox.ledger is not None
    token = await _rapporteur_token(m.sandbox.ledger)
    setup = m.setups[RAPPORTEUR_AGENCY]
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(setup.passphrase())
    api = m.api(RAPPORTEUR_AGENCY)
    args = ["rapporteur", "report", "--from", "2025-04", "--to", "2025-06", "--url", api.base,
            "--ledger", m.sandbox.ledger.url,
            "--publish", str(setup.key_dir), "--passphrase-file", str(passphrase),
            "--json"]  # fmt: skip
    env = {"NRM_API_TOKEN": api.token, "NRM_LEDGER_TOKEN": m.sandbox.auditor_token}
    without = await asyncio.to_thread(CliRunner().invoke, main, args, env=env)
    assert without.exit_code != 0 and "NRM_RAPPORTEUR_TOKEN" in without.output
    assert await _listed(m) == []
    result = await asyncio.to_thread(
        CliRunner().invoke, main, args, env={**env, "NRM_RAPPORTEUR_TOKEN": token}
    )
    assert result.exit_code == 0, result.output
    printed = _json_in(result.output)
    [item] = await _listed(m)
    assert printed["report_id"] == item["report_id"]
    status, _, body = await _get(m, f"/v1/reports/{item['report_id']}", m.sandbox.auditor_token)
    assert status == 200, body
    served = json.loads(body)["report"]
    assert (served["rapporteur"], served["released"], served["contributions"]) == (
        RAPPORTEUR_AGENCY,
        True,
        [],
    )
    assert served["cells"] and all(c["count"] == 0 for c in served["cells"])
    assert len(served["cells"]) == len(printed["cells"])


async def test_the_auditor_ui_draws_the_newest_report(rapporteur: tuple[Mechanism, Path]) -> None:
    """In a real Chromium, the ledger's UI shows "no report" before any is posted, then the
    newest one posted as a table: each cell's codes in words, a suppressed cell with no
    count but the charts' hatched marker, a rounded count marked "≈"; no CSP or script
    errors."""
    if not HAVE_CHROMIUM:
        unavailable("Debian chromium is not installed: apt-get install -y chromium")
    m, _ = rapporteur
    assert m.sandbox.ledger is not None
    token = await _rapporteur_token(m.sandbox.ledger)
    access = LedgerAccess(m.sandbox.ledger.url, m.sandbox.auditor_token)
    keys = agency_keys(m, RAPPORTEUR_AGENCY)
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = await chromium.new_context(viewport={"width": 1280, "height": 900})
            page, errors = await open_ui(context, access)
            await page.wait_for_selector("#report-none", state="visible")
            older = _report(keys, released=False, cells=())
            newer = _report(keys, signed_at=older.signed_at + 2)  # within the clock skew
            for report in (older, newer):
                status, body = await _post(m, token, R.sign_report(report, keys.signing_key))
                assert status == 201, body
            await page.reload()  # the token is still held for this tab
            await page.wait_for_selector("#report-table tbody tr")
            assert await page.is_hidden("#report-none")
            assert await page.is_hidden("#report-unreleased")  # the newer one released
            assert await page.text_content("#report-months") == "2025-05 to 2025-06"
            shown = await page.eval_on_selector_all(
                "#report-table tbody tr",
                """trs => trs.map(tr => ({
                    cells: [...tr.querySelectorAll('td')].map(td => td.textContent.trim()),
                    hatched: !!tr.querySelector('td .swatch.hatched'),
                    hatch: (s => s && getComputedStyle(s).backgroundImage)(
                        tr.querySelector('td .swatch.hatched')) }))""",
            )
            assert [r["cells"] for r in shown] == [
                ["First stage", "Negative", "all", "all", "all", "suppressed"],
                ["First stage", "Positive", "all", "all", "all", "≈ 15"],
            ], shown
            assert [r["hatched"] for r in shown] == [True, False]
            assert "repeating-linear-gradient" in shown[0]["hatch"]
            no_csp_or_script_errors(errors)
        finally:
            await chromium.close()


async def test_a_published_report_names_the_contributions_it_was_built_from(
    rapporteur: tuple[Mechanism, Path], tmp_path: Path
) -> None:
    """Two cases decided in a month, its contribution sent once the month ended: `nrm
    rapporteur report --publish` over that month releases the table with every count but 0
    suppressed (two people, the policy's k 11) and signs and posts it, and the
    ledger's copy names exactly that contribution's envelope hash, as the rapporteur's agent
    holds it."""
    m, offset = rapporteur
    assert m.sandbox.ledger is not None
    period = S.period_of(clock.now())
    for decision in (
        {"stage": "first", "outcome": "positive"},
        {"stage": "first", "outcome": "negative", "reason": "no-indicators"},
    ):
        _, case_id = await opened_case(m)
        status, body = await decide(m, case_id, decision)
        assert status == 202, body
    await _month_over(m, offset, period)
    m.agents[AUTHORITY].statistics.tick()
    [held] = await _held(m, period, 1)
    await _decided_in_ledger(m, 2)
    token = await _rapporteur_token(m.sandbox.ledger)
    setup = m.setups[RAPPORTEUR_AGENCY]
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(setup.passphrase())
    api = m.api(RAPPORTEUR_AGENCY)
    args = ["rapporteur", "report", "--from", period, "--to", period, "--url", api.base,
            "--ledger", m.sandbox.ledger.url,
            "--publish", str(setup.key_dir), "--passphrase-file", str(passphrase),
            "--diagnostics", str(tmp_path / "checked"), "--json"]  # fmt: skip
    env = {
        "NRM_API_TOKEN": api.token,
        "NRM_LEDGER_TOKEN": m.sandbox.auditor_token,
        "NRM_RAPPORTEUR_TOKEN": token,
    }
    result = await asyncio.to_thread(CliRunner().invoke, main, args, env=env)
    assert result.exit_code == 0, result.output
    printed = _json_in(result.output)
    checked = json.loads((tmp_path / "checked").read_text())
    assert [c["envelope_hash"] for c in checked["contributions"]] == [held["envelope_hash"]]
    assert "contributions" not in printed  # the publication carries no diagnostics
    [item] = await _listed(m)
    assert item["report_id"] == printed["report_id"]
    status, _, body = await _get(m, f"/v1/reports/{item['report_id']}", m.sandbox.auditor_token)
    assert status == 200, body
    served = json.loads(body)["report"]
    assert (served["from"], served["to"], served["released"]) == (period, period, True)
    assert served["cells"] == sorted(printed["cells"], key=lambda c: [c[d] for d in R.DIMS])
    assert {c["count"] for c in served["cells"]} == {None, 0}
    assert served["contributions"] == [held["envelope_hash"]]
    assert (served["k"], served["round_to"]) == (11, 5)
