"""Administrators sign a directory draft on separate machines: `nrm directory export-draft`,
`sign-draft` where only the draft, a key file and its passphrase are, `merge-signatures`
back in the admin folder (docs/RUNBOOK.md, "Sign on separate machines")."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from keys.identity import fingerprint
from nrm.admin import AdminFolder, verified_draft

from .test_cli import Work, nrm, ok
from .test_cli import template as template  # the fixtures test_cli defines
from .test_cli import work as work


def _machine(work: Work, tmp_path: Path, n: int, draft: Path) -> Path:
    """A folder standing for administrator n's own machine: its key file and the draft."""
    machine = tmp_path / f"machine-{n}"
    machine.mkdir()
    shutil.copy2(work.admin_key(n), machine / "admin.key")
    shutil.copy2(draft, machine / "draft.json")
    return machine


def _sign_there(machine: Path, work: Work) -> Path:
    out = ok(
        "directory", "sign-draft", "--draft", machine / "draft.json",
        "--key", machine / "admin.key", "--out", machine / "sig.json",
    )  # fmt: skip
    assert "police (Police): roles police" in out  # what it signs, read from the bytes
    # the fingerprint the agency's `nrm keys init` printed, for the out-of-band check
    assert f"fingerprint of police: {fingerprint(work.public('police'))}" in out, out
    return machine / "sig.json"


def test_drafts_signed_on_separate_machines_merge_into_a_publishable_draft(
    work: Work, tmp_path: Path
) -> None:
    """Two administrators (threshold 2 of 3) sign the exported draft in folders of their
    own; merged, the draft verifies as a publishable directory."""
    work.add("police", "police")
    draft = tmp_path / "draft.json"
    ok("directory", "export-draft", "--out", draft, "--dir", work.admin)
    assert "police" in " ".join(json.loads(draft.read_text())["summary"])
    signatures = [_sign_there(_machine(work, tmp_path, n, draft), work) for n in (2, 3)]
    out = ok("directory", "merge-signatures", *signatures, "--dir", work.admin)
    assert "2 of 2 required signatures: publishable" in out
    assert "police" in verified_draft(AdminFolder(work.admin))


def test_merge_refuses_a_signature_of_another_draft_or_a_forged_one(
    work: Work, tmp_path: Path
) -> None:
    """A signature over the draft as it was before a change, or one whose bytes were altered,
    is refused (exit 1) and the draft stays as it was."""
    work.add("police", "police")
    draft = tmp_path / "draft.json"
    ok("directory", "export-draft", "--out", draft, "--dir", work.admin)
    signature = _sign_there(_machine(work, tmp_path, 2, draft), work)
    doc = json.loads(signature.read_text())
    forged = tmp_path / "forged.json"
    sig = bytearray(base64.b64decode(doc["sig"]))
    sig[0] ^= 1
    forged.write_text(json.dumps({**doc, "sig": base64.b64encode(bytes(sig)).decode()}))
    before = (work.admin / "directory.json").read_bytes()
    result = nrm("directory", "merge-signatures", forged, "--dir", work.admin)
    assert result.exit_code == 1 and "refused (bad-signature)" in result.output, result.output
    assert (work.admin / "directory.json").read_bytes() == before
    work.add("shelter", "ngo")
    changed = (work.admin / "directory.json").read_bytes()
    result = nrm("directory", "merge-signatures", signature, "--dir", work.admin)
    assert result.exit_code == 1 and "for another draft" in result.output, result.output
    assert (work.admin / "directory.json").read_bytes() == changed
