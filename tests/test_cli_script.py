"""The scriptable CLI: one exit-code table (nrm/exits.py, README), no traceback for an
expected failure, and --json output that parses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from nrm.cli import main
from nrm.exits import EXIT_BROKEN_PIPE, EXIT_CODES, EXIT_UNREACHABLE, EXIT_VERIFICATION_FAILED

from . import test_cli
from .test_bus_authority import free_port
from .test_cli import ENV, Work, nrm

template, work = test_cli.template, test_cli.work  # the module's fixtures

README = Path(__file__).parent.parent / "README.md"


def test_the_readme_table_is_the_code_table_and_every_help_names_the_codes() -> None:
    rows = dict(re.findall(r"^\| (\d) \| (.+?) \|$", README.read_text(), flags=re.MULTILINE))
    assert {int(k): v for k, v in rows.items()} == EXIT_CODES
    for args in (["audit", "verify"], ["directory", "publish"], ["agent", "alerts"]):
        out = nrm(*args, "--help").output
        assert "3 verification failed, 4" in " ".join(out.split()), out


def test_publish_to_an_unreachable_bus_is_one_line_and_exit_4(work: Work) -> None:
    work.add("police", "police")
    work.sign(1)
    work.sign(2)
    url = f"nats://127.0.0.1:{free_port()}"

    result = nrm("directory", "publish", "--nats", url, "--dir", work.admin)

    assert result.exit_code == EXIT_UNREACHABLE, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
    assert f"could not publish to the bus at {url}" in result.output
    assert not (work.admin / "published-version").exists()


def test_audit_verify_of_an_unreachable_ledger_exits_4(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    url = f"http://127.0.0.1:{free_port()}"
    result = nrm("audit", "verify", "--ledger", url, "--token-file", token,
                 "--root", tmp_path / "root.1.json",
                 "--ledger-identity", tmp_path / "identity.json")  # fmt: skip
    assert result.exit_code == EXIT_UNREACHABLE, result.output
    assert f"could not reach the ledger at {url}" in result.output
    assert "Traceback" not in result.output


def test_an_unexpected_os_error_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """The top mapping: a key file that is not there, from a command that does not catch it."""
    missing = tmp_path / "nope"
    result = nrm("consent", "show", "r1", "--config", missing)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert main.name == "main"
    assert EXIT_VERIFICATION_FAILED == 3


def test_directory_show_says_unsigned_and_json_has_every_key_in_full(work: Work) -> None:
    """An unsigned draft is "unsigned", one signature of two "under-signed" (not
    "malformed"); --json carries the state and the agencies' keys untruncated."""
    work.add("police", "police")
    assert "0 of 2 signatures from root v1: unsigned" in work.show()
    doc = json.loads(nrm("directory", "show", "--json", "--dir", work.admin).output)
    assert (doc["signatures"], doc["threshold"], doc["publishable"]) == (0, 2, False)
    assert doc["problem"] == "unsigned"

    work.sign(1)
    assert "under-signed: 1 more needed" in work.show()
    work.sign(2)
    doc = json.loads(nrm("directory", "show", "--json", "--dir", work.admin).output)
    assert doc["publishable"] is True and doc["problem"] is None
    assert doc["root"] == {"version": 1, "expires": doc["root"]["expires"], "expired": False}
    ident = work.public("police")
    (police,) = doc["agencies"]
    assert police["agency"] == "police" and police["roles"] == ["police"]
    assert police["nats_key"] == ident.nats_key  # in full: the table truncates it
    (sign,) = police["signing_keys"]
    assert sign["kid"] == ident.signing_kid and sign["status"] == "active"
    assert sign["valid_until"] is None and sign["revoked_at"] is None
    assert police["encryption_keys"][0]["kid"] == ident.encryption_kid


def test_publish_and_bus_up_of_an_unsigned_draft_say_unsigned(work: Work) -> None:
    """The draft add-agency writes has no signature: "unsigned, sign it first", not
    "malformed: ... exactly the members signatures, signed"."""
    work.add("police", "police")
    url = f"nats://127.0.0.1:{free_port()}"
    published = nrm("directory", "publish", "--nats", url, "--dir", work.admin)
    up = nrm("bus", "up", "--store", work.root / "store", "--trust-root",
             work.admin / "root.1.json", "--directory", work.admin / "directory.json",
             "--operator-keys", work.admin / "operator")  # fmt: skip
    for result in (published, up):
        assert result.exit_code == 1, result.output
        assert "is unsigned: sign it first (`nrm directory sign`" in result.output
        assert "malformed" not in result.output and "Traceback" not in result.output
    assert not (work.root / "store").exists()
    work.sign(1)  # one of two: refused as well (README "The bus"), exit 1
    short = nrm("directory", "publish", "--nats", url, "--dir", work.admin)
    assert short.exit_code == 1 and "is unsigned" not in short.output, short.output


def test_output_into_a_closed_pipe_ends_silently_with_141(work: Work) -> None:
    """`nrm ... | head -1`: the reader is gone before the command writes; no "unreachable"."""
    work.add("police", "police")
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the command starts: its first write fails
    try:
        done = subprocess.run(
            [sys.executable, "-m", "nrm", "directory", "show", "--dir", str(work.admin)],
            stdout=write_end, stderr=subprocess.PIPE, env={**os.environ, **ENV}, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (EXIT_BROKEN_PIPE, b"")
