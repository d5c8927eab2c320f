"""Each administrator key file has its own passphrase: `nrm admin passphrase` changes one,
`admin init` and `admin rotate-root` take one per key (docs/RUNBOOK.md, "Sign on separate
machines" and "Rotate the root")."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from keys import KeyFileError
from keys.directory import read_unverified_root
from keys.identity import signing_kid
from keys.keyfile import open_admin_key

from .test_cli import PASSPHRASE, Work, mode, nrm, ok
from .test_cli import template as template  # the fixtures test_cli defines
from .test_cli import work as work


def secret(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.passphrase"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def kid_of(key: Path, passphrase: str) -> str:
    return signing_kid(open_admin_key(key.read_bytes(), passphrase=passphrase.encode()).verify_key)


def test_admin_passphrase_changes_one_key_which_then_signs_only_with_the_new_one(
    work: Work, tmp_path: Path
) -> None:
    """Administrator 2, on their own machine, seals admin-2.key with a passphrase of their
    own (same key, 0600); the draft exported to that machine is signed with the new
    passphrase, the old one is refused there, and the other keys keep theirs."""
    assert "every admin-N.key has the same passphrase" in work.init_output  # says what to do
    assert "nrm admin passphrase --key admin-N.key" in work.init_output
    work.add("police", "police")
    draft = tmp_path / "draft.json"
    ok("directory", "export-draft", "--out", draft, "--dir", work.admin)
    machine = tmp_path / "machine-2"
    machine.mkdir()
    key = machine / "admin.key"
    shutil.copy2(work.admin_key(2), key)
    before = kid_of(key, PASSPHRASE)
    old = secret(tmp_path, "old", PASSPHRASE)
    new = secret(tmp_path, "new", "administrator two's own passphrase")

    out = ok("admin", "passphrase", "--key", key, "--old-file", old, "--new-file", new)
    assert f"({before}) sealed with the new passphrase" in out
    assert mode(key) == 0o600
    assert kid_of(key, "administrator two's own passphrase") == before
    with pytest.raises(KeyFileError):
        kid_of(key, PASSPHRASE)

    sign = ("directory", "sign-draft", "--draft", draft, "--key", key)
    refused = nrm(*sign, "--out", machine / "refused.json")  # $NRM_PASSPHRASE: the old one
    assert refused.exit_code == 1 and "wrong passphrase" in refused.output, refused.output
    assert not (machine / "refused.json").exists()
    ok(*sign, "--out", machine / "sig.json", "--passphrase-file", new)
    shutil.copy2(work.admin_key(3), machine / "admin-3.key")  # a key the change left alone
    ok("directory", "sign-draft", "--draft", draft, "--key", machine / "admin-3.key",
       "--out", machine / "sig-3.json")  # fmt: skip
    out = ok("directory", "merge-signatures", machine / "sig.json", machine / "sig-3.json",
             "--dir", work.admin)  # fmt: skip
    assert "2 of 2 required signatures: publishable" in out


def test_admin_passphrase_refuses_a_wrong_old_passphrase_or_an_agency_key(
    work: Work, tmp_path: Path
) -> None:
    """A wrong current passphrase: exit 1, the key file named, the file byte for byte as it
    was. An agency's key file is not an administrator key: refused the same way."""
    key = work.admin_key(1)
    before = key.read_bytes()
    wrong = secret(tmp_path, "wrong", "not the passphrase of this key")
    new = secret(tmp_path, "new", "a new passphrase for admin one")
    result = nrm("admin", "passphrase", "--key", key, "--old-file", wrong, "--new-file", new)
    assert result.exit_code == 1, result.output
    assert f"{key}: wrong passphrase" in result.output
    assert "Traceback" not in result.output
    assert key.read_bytes() == before

    agency_key = work.keys("police") / "agency.key"
    old = secret(tmp_path, "old", PASSPHRASE)
    result = nrm("admin", "passphrase", "--key", agency_key, "--old-file", old, "--new-file", new)
    assert result.exit_code == 1 and "not an nrm-admin-key/1 file" in result.output


def test_rotate_root_with_two_keys_each_opened_with_its_own_passphrase(
    work: Work, tmp_path: Path
) -> None:
    """admin-1 and admin-2 have passphrases of their own; `rotate-root` takes one
    --passphrase-file per --key (in order) and seals each new key with its own
    --new-passphrase-file. One passphrase for both keys is refused naming the key it does
    not open; passphrases per --key without new ones is a usage error; nothing is written."""
    old = secret(tmp_path, "old", PASSPHRASE)
    own = [secret(tmp_path, f"own-{n}", f"administrator {n}'s passphrase") for n in (1, 2)]
    for n, file in zip((1, 2), own, strict=True):
        ok("admin", "passphrase", "--key", work.admin_key(n), "--old-file", old,
           "--new-file", file)  # fmt: skip
    fresh = [secret(tmp_path, f"new-{n}", f"new root key {n} passphrase") for n in (1, 2)]
    keys = ("--key", work.admin_key(1), "--key", work.admin_key(2))
    shape = ("--admins", "2", "--threshold", "1", "--dir", work.admin)

    result = nrm("admin", "rotate-root", *keys, "--passphrase-file", own[0], *shape)
    assert result.exit_code == 1 and f"{work.admin_key(2)}: wrong passphrase" in result.output
    result = nrm("admin", "rotate-root", *keys, "--passphrase-file", own[0],
                 "--passphrase-file", own[1], *shape)  # fmt: skip
    assert result.exit_code == 2 and "--new-passphrase-file" in result.output, result.output
    assert not (work.admin / "root.2.json").exists()

    out = ok("admin", "rotate-root", *keys, "--passphrase-file", own[0],
             "--passphrase-file", own[1], "--new-passphrase-file", fresh[0],
             "--new-passphrase-file", fresh[1], *shape)  # fmt: skip
    assert "root version 2: 1-of-2" in out
    root = read_unverified_root((work.admin / "root.2.json").read_bytes())
    opened = {kid_of(work.admin / f"admin-{n}.r2.key", f"new root key {n} passphrase")
              for n in (1, 2)}  # fmt: skip
    assert opened == set(root.keys)
    with pytest.raises(KeyFileError):
        kid_of(work.admin / "admin-1.r2.key", "new root key 2 passphrase")
    assert ": publishable" in ok("directory", "sign", "--key", work.admin / "admin-2.r2.key",
                                 "--passphrase-file", fresh[1], "--dir", work.admin)  # fmt: skip


def test_admin_init_seals_each_key_with_its_own_passphrase(tmp_path: Path) -> None:
    """`admin init --passphrase-file` once per administrator: admin-n.key opens with the
    n-th only; the operator's key then needs its own (usage error without, nothing made)."""
    files = [secret(tmp_path, f"admin-{n}", f"administrator {n} passphrase") for n in (1, 2)]
    operator = secret(tmp_path, "operator", "the operator's own passphrase")
    each = ("--passphrase-file", files[0], "--passphrase-file", files[1])
    result = nrm("admin", "init", "--admins", "2", "--threshold", "2", *each,
                 "--dir", tmp_path / "b")  # fmt: skip
    assert result.exit_code == 2 and "--operator-passphrase-file" in result.output
    assert not (tmp_path / "b").exists()
    result = nrm("admin", "init", "--admins", "3", "--threshold", "2", *each,
                 "--operator-passphrase-file", operator, "--dir", tmp_path / "c")  # fmt: skip
    assert result.exit_code == 2 and "2 --passphrase-file for 3" in result.output

    out = ok("admin", "init", "--admins", "2", "--threshold", "2", *each,
             "--operator-passphrase-file", operator, "--dir", tmp_path / "a")  # fmt: skip
    assert "same passphrase" not in out
    root = read_unverified_root((tmp_path / "a" / "root.1.json").read_bytes())
    keys = [tmp_path / "a" / f"admin-{n}.key" for n in (1, 2)]
    assert {
        kid_of(k, f"administrator {n} passphrase") for n, k in zip((1, 2), keys, strict=True)
    } == set(root.keys)
    for wrong in (PASSPHRASE, "administrator 2 passphrase"):
        with pytest.raises(KeyFileError):
            kid_of(keys[0], wrong)
