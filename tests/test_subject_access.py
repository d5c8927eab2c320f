"""The subject access report (POST /v1/subject-access and `nrm subject-access`,
docs/proposals/nrm-process.md §11.3): per referral this agency sent and per recipient, what
was sent and every read the ledger recorded, verified in a checkpoint the agent checked; an
id it did not send is unknown; bad bodies are problems; without a ledger that answers and
verifies there is no report."""

from __future__ import annotations

import asyncio
import csv
import json
import secrets
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents import referral as R
from agents.subject_access import ONWARD
from nrm.exits import EXIT_UNREACHABLE, EXIT_VERIFICATION_FAILED

from . import samples
from .support import Mechanism, eventually, free_port
from .test_access import move_clock
from .test_agent import delivered


async def report(m: Mechanism, agency: str, ids: list[str]) -> tuple[int, Any, str]:
    return await m.api(agency).call("POST", "/v1/subject-access", json={"referral_ids": ids})


async def read_in_a_checkpoint(m: Mechanism) -> None:
    """Wait until the ledger holds one read of a police record and the police's agent has
    checked a checkpoint holding it."""
    ledger, watch = m.sandbox.ledger, m.agents["police"].ledger_watch
    assert ledger is not None and watch is not None

    async def checked() -> bool:
        rows = ledger.store.accesses(owner="police", since=0, after=-1, limit=10)
        cp = watch.checkpoint
        return len(rows) == 1 and cp is not None and cp.size > rows[0].index

    await eventually(checked, what="the shelter's read in a checkpoint the police checked")


@dataclass(frozen=True)
class Run:
    exit_code: int
    output: str


async def cli(m: Mechanism, tmp_path: Path, *args: str, url: str | None = None) -> Run:
    """`nrm subject-access ARGS` against the police's agent (or `url`; none if ARGS name a
    --config), as its own process: its standard output, and its exit code."""
    token = tmp_path / "api.token"
    token.write_text(m.setups["police"].token)
    where = [] if "--config" in args else ["--url", url or m.agents["police"].api_url]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nrm",
        "subject-access",
        *where,
        "--token-file",
        str(token),
        *args,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode())


async def test_the_report_shows_each_recipient_and_the_reads_of_each(
    mechanism: Mechanism, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A police referral to the shelter and the co-ordinator, read once by the shelter: the
    police's report (API and command line alike) names both recipients with the categories
    each was sent, the shelter's read with its client and categories, none for the
    co-ordinator; an id the police did not send (also one the shelter holds, received from
    the police) is unknown and needs no ledger. A ledger serving an entry other than the one
    in its tree (a ledger alert too), or none at all, gives no report (503; exit 3 and 4)."""
    m = mechanism
    document = samples.referral()
    rid = await m.api("police").refer(["shelter", "coordinator"], document)
    await delivered(m, "police", rid)
    status, body, _ = await m.api("shelter").call("GET", f"/v1/referrals/{rid}?sender=police")
    assert status == 200
    read = sorted({R.FIELD_CATEGORY[f] for f in body["referral"]["body"]})
    move_clock(monkeypatch, tmp_path, m.agents["shelter"].limits.access_coalesce_seconds)
    assert m.agents["shelter"].access.flush() in (0, 1)  # or the timers loop signed it
    await read_in_a_checkpoint(m)
    ledger = m.sandbox.ledger
    assert ledger is not None
    unknown = secrets.token_hex(16)
    status, answer, ctype = await report(m, "police", [rid, unknown])
    assert (status, ctype) == (200, "application/json"), answer
    assert answer["agency"] == "police" and answer["checkpoint"]["size"] >= 1
    known, other = answer["referrals"]
    assert other == {"id": unknown, "known": False}
    assert (known["id"], known["known"], known["other_accesses"]) == (rid, True, [])
    assert known["referral_type"] == document["referral_type"]
    coordinator, shelter = known["recipients"]  # by agency id
    assert (coordinator["agency"], shelter["agency"]) == ("coordinator", "shelter")
    assert shelter["categories"] == read
    directory = m.agents["police"].trust.directory
    assert directory is not None
    allowed = R.categories_for_roles(directory.agency("coordinator").roles)
    assert coordinator["categories"] == sorted(
        R.categories_present(R.minimise(document["body"], allowed))
    )
    for copy in (shelter, coordinator):
        assert copy["state"] == "delivered" and copy["onward"] == ONWARD
        assert copy["sent_at"] is not None and copy["delivered_at"] >= copy["sent_at"]
        assert copy["consent_withdrawn_at"] is None and copy["erasure_confirmed_at"] is None
    [access] = shelter["accesses"]
    assert {k: access[k] for k in ("client", "record", "categories", "reads")} == {
        "client": "case-management",
        "record": "body",
        "categories": read,
        "reads": 1,
    }
    assert coordinator["accesses"] == []
    # Walked one ledger entry a page, the report is the same.
    m.agents["police"].subject_access.page = 1
    status, again, _ = await report(m, "police", [rid, unknown])
    assert (status, again["referrals"]) == (200, answer["referrals"])
    # The shelter holds the referral as a recipient: not one it sent, so not reportable.
    status, theirs, _ = await report(m, "shelter", [rid])
    assert status == 200, theirs
    assert theirs["referrals"] == [{"id": rid, "known": False}]
    assert theirs["checkpoint"] is None

    # The command line: the same report as JSON, as CSV rows for the person, as text.
    ids = ["--referral", rid, "--referral", unknown]
    result = await cli(m, tmp_path, *ids, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["referrals"] == answer["referrals"]
    result = await cli(m, tmp_path, *ids, "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(result.output.splitlines()))
    assert [(r["referral_id"], r["known"], r["recipient"], r["client"]) for r in rows] == [
        (rid, "yes", "coordinator", ""),
        (rid, "yes", "shelter", "case-management"),
        (unknown, "no", "", ""),
    ]
    assert (rows[1]["categories_read"], rows[1]["reads"]) == (" ".join(read), "1")
    # Found from agent.toml (one with the port the agent listens on: the sandbox's binds 0).
    config = m.setups["police"].config_path
    bound = config.with_name("agent-bound.toml")
    port = m.agents["police"].api_port
    bound.write_text(config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
    result = await cli(m, tmp_path, *ids, "--config", str(config))
    assert result.exit_code == 2  # port 0: where the agent listens is not in it
    result = await cli(m, tmp_path, *ids, "--config", str(bound))
    assert result.exit_code == 0, result.output
    assert "no read recorded" in result.output and "by case-management: body" in result.output
    assert f"referral {unknown}: not held by police" in result.output

    # A ledger serving an entry other than the one in its tree: no report.
    [row] = ledger.store.accesses(owner="police", since=0, after=-1, limit=10)
    leaf = bytearray(row.leaf)
    leaf[-1] ^= 0x01  # the last byte of the event's signature
    ledger.store._db.execute("UPDATE entries SET leaf = ? WHERE idx = ?", (bytes(leaf), row.index))
    status, problem, ctype = await report(m, "police", [rid])
    assert (status, ctype) == (503, "application/problem+json"), problem
    assert problem["reason"] == "ledger-unverified"
    health = m.agents["police"].health()["ledger"]
    assert (health["status"], health["last_alert"]) == ("alert", "bad-inclusion-proof")
    result = await cli(m, tmp_path, "--referral", rid)
    assert result.exit_code == EXIT_VERIFICATION_FAILED, result.output

    # Without the ledger no report, not one that looks complete; unknown ids need none.
    await m.sandbox.stop_ledger()
    status, problem, ctype = await report(m, "police", [rid])
    assert (status, ctype) == (503, "application/problem+json"), problem
    assert problem["reason"] == "ledger-unreachable" and rid not in problem["detail"]
    result = await cli(m, tmp_path, "--referral", rid)
    assert result.exit_code == EXIT_UNREACHABLE, result.output
    status, answer, _ = await report(m, "police", [unknown])
    assert status == 200 and answer["referrals"] == [{"id": unknown, "known": False}]
    result = await cli(m, tmp_path, "--referral", rid, url=f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == EXIT_UNREACHABLE, result.output  # no agent there


async def test_a_withdrawn_consent_and_its_erasure_are_in_the_report(
    mechanism: Mechanism,
) -> None:
    """A referral under consent whose consent the police withdrew: once the shelter confirmed
    the erasure, the report gives both times for the shelter's copy, and no read."""
    m = mechanism
    receipt_id = str(uuid.uuid4())
    status, body, _ = await m.api("police").call(
        "POST", "/v1/consents", json=samples.consent(receipt_id)
    )
    assert status == 201, body
    document = samples.referral(legal_basis="consent", consent_receipt_id=receipt_id)
    rid = await m.api("police").refer(["shelter"], document)
    await delivered(m, "police", rid)
    status, body, _ = await m.api("police").call("POST", f"/v1/consents/{receipt_id}/withdraw")
    assert status == 202, body

    async def confirmed() -> bool:
        _, consent, _ = await m.api("police").call("GET", f"/v1/consents/{receipt_id}")
        watch = m.agents["police"].ledger_watch
        cp = None if watch is None else watch.checkpoint
        return consent["pending"] == [] and cp is not None and cp.size > 0

    await eventually(confirmed, what="the shelter to confirm the erasure")
    status, answer, _ = await report(m, "police", [rid])
    assert status == 200, answer
    [copy] = answer["referrals"][0]["recipients"]
    _, consent, _ = await m.api("police").call("GET", f"/v1/consents/{receipt_id}")
    [use] = consent["recipients"]
    assert copy["consent_withdrawn_at"] == consent["withdrawn_at"] is not None
    assert copy["erasure_confirmed_at"] == use["erasure_confirmed_at"] is not None
    assert (copy["agency"], copy["accesses"]) == ("shelter", [])
    assert answer["referrals"][0]["legal_basis"] == "consent"


async def test_bad_bodies_are_problems(mechanism: Mechanism) -> None:
    """Each body that is not an object holding only a list of 1 to the limit of distinct
    referral ids is refused with a problem naming what is wrong; the limit itself is
    answered (every id unknown here)."""
    api = mechanism.api("police")
    most = mechanism.agents["police"].limits.subject_access_max_referrals
    ids = [secrets.token_hex(16) for _ in range(most + 1)]
    for what, body, status, named in (
        ("no referral_ids", {}, 422, "referral_ids"),
        ("an empty list", {"referral_ids": []}, 422, "referral_ids"),
        ("not a list", {"referral_ids": "ab" * 16}, 422, "referral_ids"),
        ("an id twice", {"referral_ids": ["ab" * 16, "ab" * 16]}, 422, "referral_ids"),
        ("upper case hex", {"referral_ids": ["AB" * 16]}, 422, "referral_ids"),
        ("a number", {"referral_ids": [7]}, 422, "referral_ids"),
        ("one over the limit", {"referral_ids": ids}, 422, "referral_ids"),
        ("another member", {"referral_ids": ids[:1], "person": "x"}, 422, "person"),
        ("not an object", [ids[0]], 400, "object"),
    ):
        got, problem, ctype = await api.call("POST", "/v1/subject-access", json=body)
        assert (got, ctype) == (status, "application/problem+json"), (what, problem)
        assert named in problem["detail"], (what, problem)
    got, _, ctype = await api.call(
        "POST", "/v1/subject-access", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert (got, ctype) == (400, "application/problem+json")
    got, _, ctype = await api.call(
        "POST", "/v1/subject-access", data=b"x", headers={"Content-Type": "text/plain"}
    )
    assert (got, ctype) == (415, "application/problem+json")
    got, _, ctype = await api.call(
        "POST", "/v1/subject-access", token="wrong", json={"referral_ids": ids[:1]}
    )
    assert (got, ctype) == (401, "application/problem+json")
    got, answer, _ = await api.call("POST", "/v1/subject-access", json={"referral_ids": ids[:most]})
    assert got == 200 and [r["known"] for r in answer["referrals"]] == [False] * most
