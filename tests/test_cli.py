"""The `nrm` commands, driven through click with real key files, folders and a real bus.

Key files use the CLI's MODERATE Argon2id cost, so one module-scoped template (3 admin
keys, the operator, police and shelter) is made once and each test works on a copy.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import nats
import nats.errors
import nats.js.errors
import pytest
from click.testing import CliRunner, Result

from keys import KeyFileError, PublicIdentity
from keys.codec import canonical_json, to_b64
from keys.directory import (
    DIRECTORY_LABEL,
    Directory,
    read_unverified_directory,
    read_unverified_root,
)
from keys.identity import ENCRYPTION_KID_LABEL, key_id, signing_kid
from keys.keyfile import open_admin_key
from keys.subjects import attachment_bucket, inbox_stream, inbox_subject, reply_prefix
from nrm import admin
from nrm.cli import main
from runtime import clock
from runtime.keydir import load_key_dir
from runtime.version import VERSION

from .support import free_port
from .test_identity import WEAK_X25519_KEYS

PASSPHRASE = "correct horse battery staple"
ENV = {"NRM_PASSPHRASE": PASSPHRASE}
BUS_START_SECONDS = 30.0


def nrm(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """Run `nrm ARGS` in-process with the test passphrase in the environment."""
    return CliRunner().invoke(main, [str(a) for a in args], env=ENV if env is None else env)


def ok(*args: str | Path) -> str:
    """Run `nrm ARGS`, require exit 0, and return its output."""
    result = nrm(*args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


@dataclass(frozen=True)
class Work:
    """A copy of the template: the admin folder and two agencies' key directories."""

    root: Path
    init_output: str

    @property
    def admin(self) -> Path:
        return self.root / "admin"

    def keys(self, agency: str) -> Path:
        return self.root / agency

    def identity(self, agency: str) -> Path:
        return self.keys(agency) / "identity.json"

    def public(self, agency: str) -> PublicIdentity:
        return PublicIdentity.from_json(self.identity(agency).read_bytes())

    def admin_key(self, n: int) -> Path:
        return self.admin / f"admin-{n}.key"

    def add(self, agency: str, roles: str) -> str:
        return ok("directory", "add-agency", self.identity(agency), "--roles", roles,
                  "--dir", self.admin)  # fmt: skip

    def sign(self, n: int) -> str:
        return self.sign_with(self.admin_key(n))

    def sign_with(self, key: Path) -> str:
        return ok("directory", "sign", "--key", key, "--dir", self.admin)

    def show(self) -> str:
        return ok("directory", "show", "--dir", self.admin)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Work:
    root = tmp_path_factory.mktemp("cli-template")
    out = ok("admin", "init", "--admins", "3", "--threshold", "2", "--dir", root / "admin")
    for agency in ("police", "shelter"):
        ok("keys", "init", "--agency", agency, "--dir", root / agency, "--name", agency.title())
    return Work(root, out)


@pytest.fixture
def work(template: Work, tmp_path: Path) -> Work:
    shutil.copytree(template.root, tmp_path / "w", symlinks=True)
    return Work(tmp_path / "w", template.init_output)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- keys ------------------------------------------------------------------------------------


def test_version_is_the_installed_release_and_pyproject_s() -> None:
    """`nrm --version` prints the installed package's version, which is pyproject.toml's
    (a stale editable install fails here: reinstall with `make`)."""
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert importlib.metadata.version("nrm-exchange") == VERSION
    assert ok("--version") == f"nrm {pyproject['project']['version']}\n" == f"nrm {VERSION}\n"


def test_the_docs_and_manifests_name_this_release() -> None:
    """The wheel and sdist names in the RUNBOOK and deploy/README.md, the image tag of the
    Kubernetes manifests and the CHANGELOG's newest section are this release's (bumping
    pyproject's version bumps them)."""
    repo = Path(__file__).parents[1]
    for doc in ("docs/RUNBOOK.md", "deploy/README.md"):
        named = set(
            re.findall(r"nrm_exchange-(\d[^-/\s]*?)(?:-py3|\.tar)", (repo / doc).read_text())
        )
        assert named == {VERSION}, doc
    kustomization = (repo / "deploy" / "kubernetes" / "kustomization.yaml").read_text()
    assert re.findall(r'newTag: "([^"]*)"', kustomization) == [VERSION]
    # CHANGELOG: this release is the newest section (or work toward it is "Unreleased").
    headings = re.findall(r"^## \[([^\]]+)\]", (repo / "CHANGELOG.md").read_text(), re.M)
    assert headings[0] in (VERSION, "Unreleased"), headings[:2]
    assert VERSION in headings


def test_keys_init_creates_a_private_key_file_and_an_identity_and_never_overwrites(
    tmp_path: Path,
) -> None:
    """`keys init` writes a 0600 key file and an identity with a NATS key, then refuses to
    overwrite them."""
    out = ok("keys", "init", "--agency", "labour", "--dir", tmp_path / "k")
    assert "created keys for labour" in out
    assert mode(tmp_path / "k" / "agency.key") == 0o600
    identity = PublicIdentity.from_json((tmp_path / "k" / "identity.json").read_bytes())
    assert identity.agency == "labour"
    assert identity.nats_key is not None and identity.nats_key.startswith("U")
    before = (tmp_path / "k" / "agency.key").read_bytes()

    again = nrm("keys", "init", "--agency", "labour", "--dir", tmp_path / "k")

    assert again.exit_code != 0
    assert "refusing to overwrite" in again.output
    assert (tmp_path / "k" / "agency.key").read_bytes() == before
    assert "identity.json to the administrators\n" in out


def test_keys_init_of_the_ledger_says_who_pins_its_identity(tmp_path: Path) -> None:
    """The ledger's identity.json goes to the cluster spec, every agency and the auditors."""
    out = ok("keys", "init", "--agency", "ledger", "--dir", tmp_path / "k")
    assert "[trust] ledger_identity), every agency" in out
    assert "the auditors (`nrm audit verify --ledger-identity`)" in " ".join(out.split())


def test_no_command_takes_a_passphrase_on_the_command_line(tmp_path: Path) -> None:
    """No option of any command carries a passphrase itself; only files (--passphrase-file,
    --operator-passphrase-file, --new-passphrase-file; `keys passphrase` and `admin
    passphrase --old-file/--new-file`)."""

    def options(command: click.Command) -> Iterator[str]:
        for p in command.params:
            yield from p.opts
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                yield from options(sub)

    names = set(options(main))
    assert "--passphrase-file" in names
    assert {n for n in names if "passphrase" in n} == {
        "--passphrase-file",
        "--operator-passphrase-file",
        "--new-passphrase-file",
    }
    result = nrm("keys", "init", "--agency", "x", "--dir", tmp_path / "k", "--passphrase", "p")
    assert result.exit_code == 2
    assert "No such option" in result.output
    assert not (tmp_path / "k").exists()


def test_a_short_passphrase_is_refused(tmp_path: Path) -> None:
    """A passphrase under 12 characters is refused before any key is made."""
    result = nrm(
        "keys", "init", "--agency", "x", "--dir", tmp_path / "k", env={"NRM_PASSPHRASE": "short"}
    )
    assert result.exit_code != 0
    assert "at least 12 characters" in result.output
    assert not (tmp_path / "k" / "agency.key").exists()


# --- administrators and the directory --------------------------------------------------------


def test_admin_init_makes_encrypted_root_keys_a_signed_root_and_an_empty_directory(
    work: Work,
) -> None:
    """`admin init --admins 3 --threshold 2` makes three 0600 keys, root.1 and a draft."""
    assert "root version 1: 2-of-3" in work.init_output
    for n in (1, 2, 3):
        assert mode(work.admin_key(n)) == 0o600
    root = json.loads((work.admin / "root.1.json").read_bytes())
    assert len(root["signatures"]) == 3
    assert (work.admin / "directory.json").exists()
    assert mode(work.admin / "operator" / "agency.key") == 0o600
    assert "0 of 2 signatures" in work.show()


def test_one_signature_is_not_publishable_and_publish_refuses_it(work: Work) -> None:
    """With 1 of 2 signatures `sign` says not publishable and `publish` refuses, publishing
    nothing (it refuses before connecting to the bus)."""
    assert "police in draft version" in work.add("police", "police")
    assert "not publishable" in work.sign(1)

    result = nrm("directory", "publish", "--nats", "nats://127.0.0.1:1", "--dir", work.admin)

    assert result.exit_code != 0
    assert "under-signed" in result.output
    assert not (work.admin / "published-version").exists()


def test_a_second_signature_makes_it_publishable_and_show_lists_everything(work: Work) -> None:
    """Two distinct admins' signatures make the draft publishable; `show` lists agencies,
    roles, key ids and their windows."""
    work.add("police", "police")
    work.add("shelter", "ngo,health")
    work.sign(1)
    assert ": publishable" in work.sign(2)

    shown = work.show()

    assert "2 of 2 signatures" in shown and "verifies: publishable" in shown
    for agency, roles in (("police", "police"), ("shelter", "health,ngo")):
        ident = work.public(agency)
        line = next(x for x in shown.splitlines() if x.startswith(agency))
        assert roles in line
        assert ident.signing_kid in shown and ident.encryption_kid in shown
    assert "valid from" in shown and "valid until" in shown
    assert time.strftime("%Y-%m-%d", time.gmtime()) in shown


def test_remove_agency_drops_it_from_the_draft(work: Work) -> None:
    """`remove-agency` takes the agency out and the draft needs signing again."""
    work.add("police", "police")
    work.add("shelter", "ngo")

    assert "shelter removed" in ok("directory", "remove-agency", "shelter", "--dir", work.admin)

    shown = work.show()
    assert not any(line.startswith("shelter") for line in shown.splitlines())
    assert any(line.startswith("police") for line in shown.splitlines())
    assert "0 of 2 signatures" in shown
    assert nrm("directory", "remove-agency", "shelter", "--dir", work.admin).exit_code != 0


def test_rotation_retires_the_old_keys_with_a_valid_until(work: Work) -> None:
    """After `keys rotate` and `add-agency` of the new identity, `show` lists the old keys
    as retiring with an end to their window and the new ones active, and the draft names
    only the new NATS key (the key file keeps the old seed as the previous one)."""
    work.add("police", "police")
    old = work.public("police")

    assert "rotated keys of police" in ok(
        "keys", "rotate", "--agency", "police", "--dir", work.keys("police")
    )
    new = work.public("police")
    assert new.signing_kid != old.signing_kid
    assert new.nats_key is not None and new.nats_key != old.nats_key
    private = load_key_dir(work.keys("police"), passphrase=PASSPHRASE.encode())
    assert private.public.nats_key == new.nats_key
    assert private.previous_nats_seed is not None and old.nats_key is not None
    assert private.nats_seed_for(old.nats_key) == private.previous_nats_seed
    work.add("police", "")
    draft = json.loads((work.admin / "directory.json").read_text())
    assert new.nats_key in json.dumps(draft) and old.nats_key not in json.dumps(draft)
    shown = work.show()
    assert new.nats_key[:32] in shown and old.nats_key[:32] not in shown

    lines = work.show().splitlines()
    for kid in (old.signing_kid, old.encryption_kid):
        line = next(x for x in lines if kid in x)
        assert "retiring" in line
        assert line.split("retiring", 1)[1].split()[2] != "-"  # valid until is set
    for kid in (new.signing_kid, new.encryption_kid):
        assert "active" in next(x for x in lines if kid in x)


def test_add_agency_refuses_an_identity_from_before_the_rotation(work: Work) -> None:
    """Re-adding the identity.json an agency had before its rotation is refused and leaves
    the draft as it was: its NATS key would put the old key back on the bus."""
    work.add("police", "police")
    before_rotation = work.identity("police").read_bytes()
    ok("keys", "rotate", "--agency", "police", "--dir", work.keys("police"))
    work.add("police", "")
    draft = (work.admin / "directory.json").read_bytes()
    stale = work.root / "stale-identity.json"
    stale.write_bytes(before_rotation)
    result = nrm("directory", "add-agency", stale, "--dir", work.admin)
    assert result.exit_code != 0 and "already replaced" in result.output
    assert (work.admin / "directory.json").read_bytes() == draft


def test_a_weak_encryption_key_is_refused_by_add_agency_sign_and_publish(work: Work) -> None:
    """An identity with a small-order X25519 key is refused by `add-agency` (`weak-key`,
    naming the agency); a draft edited by hand to hold one is refused by `sign` and, even
    signed by a threshold of administrators, by `publish`: the draft stays as it was."""
    weak = WEAK_X25519_KEYS["order 8 (b)"]
    weak_kid, weak_b64 = key_id(ENCRYPTION_KID_LABEL, weak), to_b64(weak)
    doc = json.loads(work.identity("shelter").read_bytes())
    doc["encryption_key"] = {"kid": weak_kid, "x25519": weak_b64}
    bad_identity = work.root / "weak-identity.json"
    bad_identity.write_text(json.dumps(doc))
    draft = (work.admin / "directory.json").read_bytes()
    result = nrm("directory", "add-agency", bad_identity, "--roles", "ngo", "--dir", work.admin)
    assert result.exit_code == 1, result.output
    assert "refused (weak-key)" in result.output and "of shelter" in result.output
    assert (work.admin / "directory.json").read_bytes() == draft

    work.add("shelter", "ngo")
    bare = json.loads((work.admin / "directory.json").read_bytes())  # unsigned after a change
    bare["agencies"][0]["encryption_keys"][0].update(kid=weak_kid, public=weak_b64)
    edited = canonical_json(bare)
    (work.admin / "directory.json").write_bytes(edited)
    result = nrm("directory", "sign", "--key", work.admin_key(1), "--dir", work.admin)
    assert result.exit_code == 1 and "refused (weak-key)" in result.output, result.output
    assert (work.admin / "directory.json").read_bytes() == edited

    keys = [open_admin_key(work.admin_key(n).read_bytes(), passphrase=PASSPHRASE.encode())
            for n in (1, 2)]  # fmt: skip
    sigs = sorted(
        (signing_kid(k.verify_key), k.sign(DIRECTORY_LABEL + b"\x00" + edited).signature)
        for k in keys
    )
    threshold_signed = canonical_json(
        {"signatures": [{"keyid": kid, "sig": to_b64(sig)} for kid, sig in sigs], "signed": bare}
    )
    (work.admin / "directory.json").write_bytes(threshold_signed)
    # Refused before any connection: nothing listens on port 9.
    result = nrm("directory", "publish", "--nats", "nats://127.0.0.1:9", "--dir", work.admin)
    assert result.exit_code == 1 and "refused (weak-key)" in result.output, result.output


def test_rotate_refuses_another_agencys_key_directory(work: Work) -> None:
    """`keys rotate --agency` must name the agency whose keys are in --dir; a wrong one
    changes nothing there."""
    before = {p.name: p.read_bytes() for p in Path(work.keys("police")).iterdir()}
    result = nrm("keys", "rotate", "--agency", "shelter", "--dir", work.keys("police"))
    assert result.exit_code != 0
    assert "not shelter" in result.output
    assert {p.name: p.read_bytes() for p in Path(work.keys("police")).iterdir()} == before


def test_revoke_marks_the_key_revoked_from_the_given_time(work: Work) -> None:
    """`keys revoke --kid --reason --at` shows the key revoked at that time, with the reason."""
    work.add("police", "police")
    kid = work.public("police").signing_kid

    out = ok("keys", "revoke", "--agency", "police", "--kid", kid, "--reason", "laptop lost",
             "--at", "2026-01-01T00:00:00Z", "--dir", work.admin)  # fmt: skip

    assert f"revoked {kid}" in out
    line = next(x for x in work.show().splitlines() if kid in x)
    assert "revoked" in line
    assert "2026-01-01 00:00 (laptop lost)" in line


def test_rotate_root_writes_the_next_root_signed_by_old_and_new_keys(work: Work) -> None:
    """`admin rotate-root` with a threshold of the old keys produces root.2.json, which then
    verifies as the trusted root, and the draft must be signed by the new keys."""
    out = ok("admin", "rotate-root", "--key", work.admin_key(1), "--key", work.admin_key(2),
             "--admins", "2", "--threshold", "1", "--dir", work.admin)  # fmt: skip

    assert "root version 2" in out and "(admin-N.r2.key)" in out
    assert (work.admin / "root.2.json").exists()
    assert mode(work.admin / "admin-1.r2.key") == 0o600
    assert "root v2" in work.show()
    assert (
        "not a key of the current root"
        in nrm("directory", "sign", "--key", work.admin_key(3), "--dir", work.admin).output
    )
    assert ": publishable" in work.sign_with(work.admin / "admin-1.r2.key")


def test_rotate_root_refuses_too_few_old_signatures(work: Work) -> None:
    """One old key of a 2-of-3 root cannot make root 2; nothing is written."""
    result = nrm("admin", "rotate-root", "--key", work.admin_key(1), "--admins", "1",
                 "--threshold", "1", "--dir", work.admin)  # fmt: skip
    assert result.exit_code != 0
    assert "under-signed" in result.output
    assert not (work.admin / "root.2.json").exists()


# --- directory lifetime, renewal and the publishing margin ------------------------------------

DAY = 86400


def shift_clock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, days: float) -> None:
    """Move this process's clock (and that of any child started later) by `days`."""
    offset = tmp_path / "clock-offset"
    clock.set_offset(offset, int(days * DAY))
    monkeypatch.setenv(clock.ENV, str(offset))


def draft(work: Work) -> Directory:
    return read_unverified_directory((work.admin / "directory.json").read_bytes())


def test_admin_init_keeps_the_lifetime_and_margin_and_refuses_a_lifetime_within_it(
    tmp_path: Path,
) -> None:
    """`admin init --directory-lifetime-days --publish-margin-days` writes settings.toml and
    an empty draft with that lifetime; a lifetime not longer than the margin is refused
    before anything is created."""
    before = clock.now()
    ok("admin", "init", "--admins", "1", "--threshold", "1", "--dir", tmp_path / "a",
       "--directory-lifetime-days", "14", "--publish-margin-days", "2")  # fmt: skip
    settings = (tmp_path / "a" / "settings.toml").read_text()
    assert "directory_lifetime_days = 14.0" in settings
    assert "publish_margin_days = 2.0" in settings
    expires = read_unverified_directory((tmp_path / "a" / "directory.json").read_bytes()).expires
    assert before + 14 * DAY <= expires <= clock.now() + 14 * DAY

    refused = nrm("admin", "init", "--admins", "1", "--threshold", "1", "--dir", tmp_path / "b",
                  "--directory-lifetime-days", "2", "--publish-margin-days", "7")  # fmt: skip
    assert refused.exit_code == 1, refused.output
    assert "not longer than the publishing margin" in refused.output
    assert not (tmp_path / "b").exists()


def test_the_operator_key_has_its_own_passphrase_which_keys_passphrase_changes(
    tmp_path: Path,
) -> None:
    """`admin init --operator-passphrase-file` seals operator/ with it, not with the
    administrators' passphrase (which the ledger and bus authorities must never hold);
    `keys passphrase` seals a key folder again under a new one and refuses a wrong old one."""
    operator, new = tmp_path / "operator.passphrase", tmp_path / "new.passphrase"
    operator.write_text("the operator's own passphrase\n")
    new.write_text("a new passphrase for the operator\n")
    ok("admin", "init", "--admins", "1", "--threshold", "1", "--dir", tmp_path / "a",
       "--operator-passphrase-file", operator)  # fmt: skip
    folder = tmp_path / "a" / "operator"
    with pytest.raises(KeyFileError):
        load_key_dir(folder, passphrase=PASSPHRASE.encode())
    kid = load_key_dir(folder, passphrase=operator.read_bytes().strip()).public.signing_kid

    assert "sealed with the new passphrase" in ok(
        "keys", "passphrase", "--dir", folder, "--old-file", operator, "--new-file", new
    )
    assert load_key_dir(folder, passphrase=new.read_bytes().strip()).public.signing_kid == kid
    wrong = nrm("keys", "passphrase", "--dir", folder, "--old-file", operator, "--new-file", new)
    assert wrong.exit_code == 1 and "Traceback" not in wrong.output, wrong.output


def test_renew_makes_a_new_version_with_the_same_content_and_a_new_expiry(
    work: Work, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ten days on, `directory renew` drafts version N+1 with the same agencies and keys,
    expiring 30 days from the new now, unsigned; `--lifetime-days` sets another lifetime; a
    lifetime within the publishing margin is refused and the draft stays as it was."""
    work.add("police", "police")
    work.sign(1)
    work.sign(2)
    signed = draft(work)
    shift_clock(monkeypatch, tmp_path, 10)

    out = ok("directory", "renew", "--dir", work.admin)

    renewed = draft(work)
    assert f"renewed: draft version {signed.version + 1}" in out
    assert renewed.version == signed.version + 1
    assert renewed.agencies == signed.agencies
    assert clock.now() + 30 * DAY - 60 <= renewed.expires <= clock.now() + 30 * DAY
    assert "0 of 2 signatures" in work.show()

    ok("directory", "renew", "--lifetime-days", "60", "--dir", work.admin)
    assert draft(work).expires >= clock.now() + 60 * DAY - 60
    assert draft(work).version == renewed.version  # unsigned: no published version to pass

    before = (work.admin / "directory.json").read_bytes()
    refused = nrm("directory", "renew", "--lifetime-days", "3", "--dir", work.admin)
    assert refused.exit_code == 1
    assert "not longer than the publishing margin of 7 days" in refused.output
    assert (work.admin / "directory.json").read_bytes() == before


def test_publish_refuses_a_directory_that_expires_within_the_margin(
    work: Work, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Six days before a fully signed draft expires, `publish` exits 3 naming the margin and
    publishes nothing (before even connecting); a smaller margin lets it through, and so
    does `renew` and signing again."""
    work.add("police", "police")
    work.sign(1)
    work.sign(2)
    folder = admin.AdminFolder(work.admin)
    signed = draft(work)
    shift_clock(monkeypatch, tmp_path, 24)
    bogus = "nats://127.0.0.1:1"

    refused = nrm("directory", "publish", "--nats", bogus, "--dir", work.admin)

    assert refused.exit_code == 3, refused.output
    assert "sooner than the publishing margin of 7 days" in refused.output
    assert "nrm directory renew" in refused.output
    assert not (work.admin / "published-version").exists()
    assert admin.publishable_draft(folder, margin_seconds=5 * DAY).version == signed.version

    ok("directory", "renew", "--dir", work.admin)
    work.sign(1)
    work.sign(3)
    assert admin.publishable_draft(folder).version == signed.version + 1


def test_after_the_root_expires_show_says_so_sign_refuses_and_rotate_root_still_works(
    work: Work, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A year and a day on, `directory show` flags the expired root, `directory sign` is
    refused with expired-root (draft unchanged), and `admin rotate-root` with the expired
    root's keys makes root.2, under which the renewed draft is publishable."""
    work.add("police", "police")
    shift_clock(monkeypatch, tmp_path, 366)

    assert "EXPIRED: rotate the root" in work.show()
    before = (work.admin / "directory.json").read_bytes()
    refused = nrm("directory", "sign", "--key", work.admin_key(1), "--dir", work.admin)
    assert refused.exit_code == 1
    assert "refused (expired-root)" in refused.output
    assert (work.admin / "directory.json").read_bytes() == before

    ok("admin", "rotate-root", "--key", work.admin_key(1), "--key", work.admin_key(2),
       "--admins", "1", "--threshold", "1", "--dir", work.admin)  # fmt: skip
    assert ": publishable" in work.sign_with(work.admin / "admin-1.r2.key")
    assert admin.publishable_draft(admin.AdminFolder(work.admin)).expires > clock.now()
    assert "EXPIRED" not in work.show()


def test_broker_config_writes_each_agencys_nkey_and_refuses_an_under_signed_directory(
    work: Work, tmp_path: Path
) -> None:
    """`broker config` refuses a directory with too few signatures, then writes a 0600
    authorization holding every agency's NKey and the operator's."""
    work.add("police", "police")
    work.add("shelter", "ngo")
    work.sign(1)
    out = tmp_path / "auth.conf"
    args = ("broker", "config", "--directory", work.admin / "directory.json",
            "--root", work.admin / "root.1.json",
            "--operator", work.admin / "operator" / "identity.json", "--out", out)  # fmt: skip

    refused = nrm(*args)
    assert refused.exit_code != 0 and "under-signed" in refused.output
    assert not out.exists()

    work.sign(2)
    assert "version" in ok(*args)
    assert mode(out) == 0o600
    text = out.read_text()
    for agency in ("police", "shelter", "operator"):
        nkey = PublicIdentity.from_json(
            (work.admin / "operator" / "identity.json").read_bytes()
            if agency == "operator"
            else work.identity(agency).read_bytes()
        ).nats_key
        assert nkey is not None and nkey in text


# --- the bus ---------------------------------------------------------------------------------


@pytest.fixture
def bus_up(tmp_path: Path) -> Iterator[BusUp]:
    started: list[subprocess.Popen[bytes]] = []
    yield BusUp(tmp_path, started)
    for process in started:
        if process.poll() is None:  # a failed test: SIGTERM first, so it stops its nats-server
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class BusUp:
    """Runs the real `nrm bus up` as a child process and waits for its ready line."""

    tmp_path: Path
    started: list[subprocess.Popen[bytes]]

    def start(self, *args: str | Path) -> tuple[subprocess.Popen[bytes], Path]:
        out = self.tmp_path / f"bus-{len(self.started)}.out"
        with out.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "nrm", "bus", "up", *map(str, args)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, **ENV},
            )
        self.started.append(process)
        deadline = time.monotonic() + BUS_START_SECONDS
        while "NATS bus ready" not in out.read_text():
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        return process, out

    @staticmethod
    def stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> int:
        process.send_signal(sig)
        return process.wait(timeout=30)


def test_bus_up_needs_authorization_or_an_explicit_unsafe_open(tmp_path: Path) -> None:
    """With neither the trust options nor --unsafe-open, or with both, `bus up` is a usage
    error and starts nothing."""
    neither = nrm("bus", "up", "--store", tmp_path / "s")
    assert neither.exit_code == 2
    assert "--unsafe-open" in neither.output and "--trust-root" in neither.output
    both = nrm("bus", "up", "--store", tmp_path / "s", "--unsafe-open",
               "--directory", tmp_path / "d.json")  # fmt: skip
    assert both.exit_code == 2
    assert not (tmp_path / "s").exists()


def test_bus_up_refuses_an_under_signed_directory(work: Work, tmp_path: Path) -> None:
    """A secured bus does not start from a directory below the threshold."""
    work.add("police", "police")
    work.sign(1)
    result = nrm("bus", "up", "--store", tmp_path / "s",
                 "--trust-root", work.admin / "root.1.json",
                 "--directory", work.admin / "directory.json",
                 "--operator-keys", work.admin / "operator")  # fmt: skip
    assert result.exit_code != 0
    assert "under-signed" in result.output
    assert not (tmp_path / "s").exists()


def test_unsafe_open_bus_warns_and_stops_on_sigint(bus_up: BusUp, tmp_path: Path) -> None:
    """`bus up --unsafe-open` says it is unsafe, lets anonymous clients in, makes the inbox
    stream of each `--agency`, and stops cleanly on SIGINT."""
    port = free_port()
    process, out = bus_up.start(
        "--store", tmp_path / "s", "--port", str(port), "--unsafe-open", "--agency", "police"
    )
    text = out.read_text()
    assert "WARNING: unsafe open bus" in text
    assert "unsafe_open_bus" in text  # the structured log event too

    async def anonymous() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False)
        try:
            info = await nc.jetstream().stream_info(inbox_stream("police"))
            assert info.config.subjects == [inbox_subject("police")]
        finally:
            await nc.close()

    asyncio.run(anonymous())
    assert bus_up.stop(process, signal.SIGINT) == 0
    assert "NATS bus stopped" in out.read_text()


async def connects(url: str, *, seed: bytes | None) -> bool:
    """Whether a client (anonymous, or with this NKey seed) is let onto the bus."""
    try:
        nc = await nats.connect(
            url,
            nkeys_seed_str=None if seed is None else seed.decode(),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
        )
    except (nats.errors.Error, OSError):
        return False
    await nc.close()
    return True


async def owns_bucket(url: str, agency: str, *, seed: bytes) -> bool:
    """Whether `agency`, connected with its NKey, finds its attachment bucket and can put
    an object in it (it cannot create it: only the operator provisions buckets)."""
    nc = await nats.connect(
        url, nkeys_seed_str=seed.decode(), inbox_prefix=reply_prefix(agency), connect_timeout=2
    )
    try:
        js = nc.jetstream(timeout=5)
        try:
            obs = await js.object_store(attachment_bucket(agency))
        except nats.js.errors.BucketNotFoundError:
            return False
        await obs.put("probe", b"ciphertext")
        return True
    finally:
        await nc.close()


def test_publish_to_a_bus_started_with_bus_up_reloads_its_authorization(
    work: Work, bus_up: BusUp, tmp_path: Path
) -> None:
    """`bus up` without --port, as the README shows it, starts secured from the signed
    directory on a port of its choosing that it prints (anonymous clients refused);
    `directory publish` of a fully signed draft succeeds, and admitting shelter lets its
    NKey connect without a restart, its attachment bucket made before it could connect;
    SIGTERM stops the bus cleanly."""
    work.add("police", "police")
    work.sign(1)
    work.sign(2)
    police = load_key_dir(work.keys("police"), passphrase=PASSPHRASE.encode())
    shelter = load_key_dir(work.keys("shelter"), passphrase=PASSPHRASE.encode())
    process, out = bus_up.start(
        "--store", tmp_path / "s",
        "--trust-root", work.admin / "root.1.json",
        "--directory", work.admin / "directory.json",
        "--operator-keys", work.admin / "operator",
    )  # fmt: skip
    assert "authorization from directory version" in out.read_text()
    ready = re.search(r"NATS bus ready at (nats://127\.0\.0\.1:\d+);", out.read_text())
    assert ready is not None, out.read_text()
    url = ready[1]
    assert not asyncio.run(connects(url, seed=None))
    assert asyncio.run(connects(url, seed=police.nats_seed))
    assert not asyncio.run(connects(url, seed=shelter.nats_seed))
    assert police.nats_seed is not None
    assert asyncio.run(owns_bucket(url, "police", seed=police.nats_seed))

    published = ok("directory", "publish", "--nats", url, "--dir", work.admin)
    assert "published directory version" in published

    work.add("shelter", "ngo")
    work.sign(1)
    work.sign(3)
    ok("directory", "publish", "--nats", url, "--dir", work.admin)
    deadline = time.monotonic() + 20
    while not asyncio.run(connects(url, seed=shelter.nats_seed)):
        assert time.monotonic() < deadline, "shelter never admitted to the bus"
        time.sleep(0.2)
    assert shelter.nats_seed is not None
    assert asyncio.run(owns_bucket(url, "shelter", seed=shelter.nats_seed))

    assert bus_up.stop(process, signal.SIGTERM) == 0
    assert "NATS bus stopped" in out.read_text()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (http:// built here)
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def test_bus_up_status_warns_before_the_directory_expires_and_a_renewal_clears_it(
    work: Work, bus_up: BusUp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bus up --status-bind` started six days before the directory expires answers
    /healthz 200 "warning" (directory-expires-soon) with the release's version and /metrics
    with both expiry gauges and nrm_bus_info; once a renewed directory is published it
    answers "ok"."""
    work.add("police", "police")
    work.sign(1)
    work.sign(2)
    shift_clock(monkeypatch, tmp_path, 24)
    port, status_port = free_port(), free_port()
    process, out = bus_up.start(
        "--store", tmp_path / "s", "--port", str(port),
        "--trust-root", work.admin / "root.1.json",
        "--directory", work.admin / "directory.json",
        "--operator-keys", work.admin / "operator",
        "--status-bind", f"127.0.0.1:{status_port}",
    )  # fmt: skip
    base = f"http://127.0.0.1:{status_port}"
    assert f"status at {base}/healthz" in out.read_text()
    code, body = http_get(base + "/healthz")
    health = json.loads(body)
    assert (code, health["status"], health["reasons"], health["version"]) == (
        200, "warning", ["directory-expires-soon"], VERSION
    )  # fmt: skip
    code, metrics = http_get(base + "/metrics")
    assert code == 200
    signed = draft(work)
    gauges = dict(
        line.split(" ") for line in metrics.splitlines() if line and not line.startswith("#")
    )
    assert float(gauges["nrm_directory_expiry_timestamp_seconds"]) == signed.expires
    root = read_unverified_root((work.admin / "root.1.json").read_bytes())
    assert float(gauges["nrm_root_expiry_timestamp_seconds"]) == root.expires
    assert float(gauges[f'nrm_bus_info{{version="{VERSION}"}}']) == 1

    ok("directory", "renew", "--dir", work.admin)
    work.sign(1)
    work.sign(2)
    ok("directory", "publish", "--nats", f"nats://127.0.0.1:{port}", "--dir", work.admin)
    deadline = time.monotonic() + 20
    while True:
        code, body = http_get(base + "/healthz")
        health = json.loads(body)
        if (code, health["status"], health["directory_version"]) == (200, "ok", signed.version + 1):
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.2)
    assert bus_up.stop(process, signal.SIGTERM) == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("audit", "query", "--db", "/nonexistent/ledger.db"), "could not read the ledger"),
        (("audit", "export", "--db", "/nonexistent/ledger.db"), "could not read the ledger"),
        (
            ("audit", "query", "--ledger", "http://127.0.0.1:1", "--token-file", "/nonexistent"),
            "could not read the ledger",
        ),
        (("keys", "init", "--agency", "police", "--dir", "/proc/nrm/keys"), "Error:"),
        (("agent", "backup", "--config", "/nonexistent.toml", "--to", "/nonexistent/x"), "Error:"),
    ],
)
def test_bad_paths_are_clear_errors_not_tracebacks(args: tuple[str, ...], says: str) -> None:
    result = nrm(*args)
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert says in result.output
