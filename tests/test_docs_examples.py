"""The consent receipt and referral examples of the docs work together on a real agent."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from nrm.examples import iso
from runtime import clock

from .support import Mechanism, eventually

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
README = ROOT / "README.md"
SCHEMA_EXAMPLES = ROOT / "docs" / "schemas" / "examples" / "valid"


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return doc


def test_the_readme_submits_the_example_files_with_curl() -> None:
    """README's curl commands post exactly docs/examples/consent.json and referral.json to
    the paths the agent serves them on."""
    text = README.read_text(encoding="utf-8")
    posts = re.findall(r"--data @docs/examples/(\w+\.json) +\S*(/v1/\w+)", text)
    assert ("consent.json", "/v1/consents") in posts
    assert ("referral.json", "/v1/referrals") in posts


async def test_the_docs_consent_receipt_covers_the_docs_referral(mechanism: Mechanism) -> None:
    """The example receipt is recorded (201), the example referral citing it is accepted
    (202) and the recipient receives it, body intact."""
    m = mechanism
    consent, submission = example("consent.json"), example("referral.json")
    assert submission["referral"]["consent_receipt_id"] == consent["receipt_id"]
    police = m.api("police")
    status, body, _ = await police.call("POST", "/v1/consents", json=consent)
    assert status == 201, body
    status, body, _ = await police.call("POST", "/v1/referrals", json=submission)
    assert status == 202, body
    referral_id = body["id"]
    [recipient] = submission["recipients"]
    [item] = await delivered(m, recipient, {referral_id})
    assert item["referral"]["body"] == submission["referral"]["body"]
    assert item["referral"]["consent_receipt_id"] == consent["receipt_id"]


async def delivered(m: Mechanism, recipient: str, ids: set[str]) -> list[dict[str, Any]]:
    """`recipient`'s inbox items with `ids`, once all of them arrived."""

    async def arrived() -> bool:
        return ids <= {i["id"] for i in await m.api(recipient).inbox()}

    await eventually(arrived, what=f"{recipient} to receive {len(ids)} example referrals")
    return [i for i in await m.api(recipient).inbox() if i["id"] in ids]


def submission_of(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A schema example as a submission: the recipient its type goes to, and the document
    without what the sender's agent assigns or the upload it would need, created now."""
    doc = {k: v for k, v in doc.items() if k not in ("$comment", "referral_id", "expires")}
    doc["body"] = {k: v for k, v in doc["body"].items() if k != "attachments"}
    doc["created"] = iso(clock.time())
    anonymous = doc["referral_type"] == "anonymous_notification"
    return ("coordinator" if anonymous else "shelter"), doc


async def test_every_valid_schema_example_is_sent_under_the_docs_consent(
    mechanism: Mechanism,
) -> None:
    """Each valid referral example of docs/schemas/examples/ is accepted and delivered (given
    a fresh `created`, without its `referral_id` and attachment): those under consent cite a
    receipt id the receipt schema accepts, and docs/examples/consent.json recorded under that
    id covers them for the shelter. A child's schema v2 example names its provision from a
    national policy's list, which this mechanism has not published: 422, naming the list; one
    naming a service names a provider this mechanism does not have: 422, member `service`."""
    m = mechanism
    police = m.api("police")
    consent = example("consent.json")
    sent: dict[str, set[str]] = {"shelter": set(), "coordinator": set()}
    names = []
    recorded: set[str] = set()
    for path in sorted(SCHEMA_EXAMPLES.glob("*.json")):
        names.append(path.stem)
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc["legal_basis"] == "consent" and doc["consent_receipt_id"] not in recorded:
            receipt = {**consent, "receipt_id": doc["consent_receipt_id"]}
            status, body, _ = await police.call("POST", "/v1/consents", json=receipt)
            assert status == 201, (path.name, body)
            recorded.add(doc["consent_receipt_id"])
        recipient, referral = submission_of(doc)
        status, body, _ = await police.call(
            "POST", "/v1/referrals", json={"recipients": [recipient], "referral": referral}
        )
        if "legal_basis_ref" in doc:
            assert status == 422, (path.name, body)
            assert "child_legal_bases" in body["detail"]
            continue
        if "service" in doc:  # a provider of the example's own, in no catalogue here
            assert status == 422 and body["member"] == "service", (path.name, body)
            continue
        assert status == 202, (path.name, body)
        sent[recipient].add(body["id"])
    assert "adult-with-consent" in names and len(names) >= 5
    for recipient, ids in sent.items():
        assert len(await delivered(m, recipient, ids)) == len(ids)
