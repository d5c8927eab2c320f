"""The identity fingerprint read out over the phone, and the proof of possession in
identity.json (docs/PROTOCOL.md §2.4): `nrm keys fingerprint`, `nrm directory add-agency`."""

from __future__ import annotations

import json
from pathlib import Path

from .test_cli import Work, nrm, ok
from .test_cli import template as template  # the fixtures test_cli defines
from .test_cli import work as work


def _draft(work: Work) -> bytes:
    return (work.admin / "directory.json").read_bytes()


def test_fingerprint_is_the_one_add_agency_prints(work: Work) -> None:
    """`keys fingerprint` (text and --json) and `add-agency` print the same fingerprint,
    8 groups of 4 hex digits; a rotation changes it."""
    shown = json.loads(ok("keys", "fingerprint", "--identity", work.identity("police"), "--json"))
    assert shown["agency"] == "police" and shown["proof"] == "valid"
    groups = shown["fingerprint"].split(" ")
    assert len(groups) == 8 and all(len(g) == 4 and int(g, 16) >= 0 for g in groups)
    text = ok("keys", "fingerprint", "--identity", work.identity("police"))
    assert shown["fingerprint"] in text
    assert f"fingerprint of police: {shown['fingerprint']}" in work.add("police", "police")
    ok("keys", "rotate", "--agency", "police", "--dir", work.keys("police"))
    rotated = json.loads(ok("keys", "fingerprint", "--identity", work.identity("police"), "--json"))
    assert rotated["proof"] == "valid" and rotated["fingerprint"] != shown["fingerprint"]


def test_add_agency_refuses_an_identity_without_a_valid_proof(work: Work, tmp_path: Path) -> None:
    """No proof: refused (missing-proof) unless --accept-legacy-identity, which warns; a
    proof that does not verify (another agency's, or keys swapped under it) is refused even
    then; nothing changes in the draft when refused."""
    police = json.loads(work.identity("police").read_bytes())
    shelter = json.loads(work.identity("shelter").read_bytes())
    legacy = {k: v for k, v in police.items() if k != "proof"}
    borrowed = {**police, "proof": shelter["proof"]}
    swapped = {**police, "encryption_key": shelter["encryption_key"]}  # X25519 key is bound
    before = _draft(work)
    for name, doc, reason in (
        ("legacy", legacy, "missing-proof"),
        ("borrowed", borrowed, "bad-proof"),
        ("swapped", swapped, "bad-proof"),
    ):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        result = nrm("directory", "add-agency", path, "--roles", "police", "--dir", work.admin)
        assert result.exit_code == 1, result.output
        assert f"refused ({reason})" in result.output
        assert _draft(work) == before
        shown = json.loads(ok("keys", "fingerprint", "--identity", path, "--json"))
        assert shown["proof"] == ("missing" if name == "legacy" else "invalid")
        if name != "legacy":
            result = nrm(
                "directory", "add-agency", path, "--roles", "police",
                "--accept-legacy-identity", "--dir", work.admin,
            )  # fmt: skip
            assert result.exit_code == 1 and f"refused ({reason})" in result.output
    path = tmp_path / "legacy.json"
    result = nrm(
        "directory", "add-agency", path, "--roles", "police",
        "--accept-legacy-identity", "--dir", work.admin,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: police's identity.json has no proof of possession" in result.output
    assert _draft(work) != before
