"""Private keys at rest (docs/PROTOCOL.md section 3)."""

from __future__ import annotations

import base64
import json
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import nacl.pwhash
import pytest

from keys import AgencyKeys, KeyFileError, KeyFileExistsError, PublicIdentity
from keys.keyfile import IDENTITY_FILE_NAME, INTERACTIVE, KEY_FILE_NAME, open_keys, seal_keys
from runtime.files import write_new_file
from runtime.keydir import init_key_dir, load_key_dir, read_passphrase, rotate_key_dir

PASS = b"correct horse battery staple"


@pytest.fixture(scope="module")
def keys() -> AgencyKeys:
    return AgencyKeys.generate(agency="shelter", name="NGO Shelter")


@pytest.fixture(scope="module")
def sealed(keys: AgencyKeys) -> bytes:
    return seal_keys(keys, passphrase=PASS, cost=INTERACTIVE)


def same(a: AgencyKeys, b: AgencyKeys) -> bool:
    return (a.agency, a.name, bytes(a.signing_key), bytes(a.encryption_key)) == (
        b.agency,
        b.name,
        bytes(b.signing_key),
        bytes(b.encryption_key),
    )


def test_round_trip(keys: AgencyKeys, sealed: bytes) -> None:
    """A sealed key file opens with its passphrase to the same keys."""
    assert same(open_keys(sealed, passphrase=PASS), keys)


def test_wrong_passphrase(sealed: bytes) -> None:
    """A wrong passphrase is a KeyFileError."""
    with pytest.raises(KeyFileError, match="passphrase"):
        open_keys(sealed, passphrase=b"not the right passphrase")


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "salt"])
def test_damaged_file(sealed: bytes, field: str) -> None:
    """A changed ciphertext, nonce or salt is a KeyFileError, never wrong keys."""
    doc = json.loads(sealed)
    holder = doc["kdf"] if field == "salt" else doc
    raw = bytearray(base64.b64decode(holder[field]))
    raw[0] ^= 1
    holder[field] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(KeyFileError):
        open_keys(json.dumps(doc).encode(), passphrase=PASS)


@pytest.mark.parametrize("kdf", [{"opslimit": 2**32 - 1}, {"memlimit": 2**40}])
def test_unreasonable_kdf_cost_is_refused(sealed: bytes, kdf: dict[str, int]) -> None:
    """A key file asking Argon2id for hours of work or terabytes of memory is refused."""
    doc = json.loads(sealed)
    doc["kdf"].update(kdf)
    with pytest.raises(KeyFileError, match="unreasonable"):
        open_keys(json.dumps(doc).encode(), passphrase=PASS)


@pytest.mark.parametrize(
    "data", [b"", b"[]", b"{}", b'{"format": "nrm-keyfile/1"}', b"\xff", b"[" * 100_000]
)
def test_not_a_key_file(data: bytes) -> None:
    """Bytes that are not a key file are a KeyFileError."""
    with pytest.raises(KeyFileError):
        open_keys(data, passphrase=PASS)


def test_key_file_hides_private_keys(keys: AgencyKeys, sealed: bytes) -> None:
    """The key file holds neither private key in raw, hex or base64 form."""
    for secret in (bytes(keys.signing_key), bytes(keys.encryption_key)):
        assert secret not in sealed
        assert secret.hex().encode() not in sealed
        assert base64.b64encode(secret) not in sealed
    doc = json.loads(sealed)
    assert doc["format"] == "nrm-keyfile/1"
    assert doc["kdf"]["alg"] == "argon2id13"


def test_init_key_dir_modes(tmp_path: Path) -> None:
    """The key directory is 0700, the key file 0600, and the keys load back."""
    directory = tmp_path / "keys"
    made = init_key_dir(
        directory, agency="police", name="Police", passphrase=PASS, cost=INTERACTIVE
    )
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / KEY_FILE_NAME).stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / IDENTITY_FILE_NAME).stat().st_mode) == 0o644
    assert same(load_key_dir(directory, passphrase=PASS), made)
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []


def test_init_key_dir_refuses_overwrite(tmp_path: Path) -> None:
    """A second init in the same directory fails and leaves the first keys unchanged."""
    init_key_dir(tmp_path, agency="police", name="Police", passphrase=PASS, cost=INTERACTIVE)
    before = (tmp_path / KEY_FILE_NAME).read_bytes()
    with pytest.raises(KeyFileExistsError):
        init_key_dir(tmp_path, agency="police", name="Police", passphrase=PASS, cost=INTERACTIVE)
    assert (tmp_path / KEY_FILE_NAME).read_bytes() == before


def test_write_new_file_refuses_overwrite(tmp_path: Path) -> None:
    """Writing over an existing file fails, keeps its content and leaves no temporary file."""
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_new_file(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_passphrase_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The passphrase is read from NRM_PASSPHRASE when no file is given."""
    monkeypatch.setenv("NRM_PASSPHRASE", PASS.decode())
    assert read_passphrase() == PASS
    monkeypatch.delenv("NRM_PASSPHRASE")
    with pytest.raises(KeyFileError):
        read_passphrase()


def test_passphrase_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A passphrase file wins over the environment and loses only its line ending."""
    monkeypatch.setenv("NRM_PASSPHRASE", "the environment passphrase")
    path = tmp_path / "pass"
    path.write_text(PASS.decode() + "\n", encoding="utf-8")
    assert read_passphrase(file=path) == PASS
    with pytest.raises(KeyFileError):
        read_passphrase(file=tmp_path / "missing")


def test_short_passphrase_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A passphrase shorter than 12 characters is refused from either source."""
    monkeypatch.setenv("NRM_PASSPHRASE", "x" * 11)
    with pytest.raises(KeyFileError, match="12"):
        read_passphrase()
    path = tmp_path / "pass"
    path.write_text("y" * 11 + "\n", encoding="utf-8")
    with pytest.raises(KeyFileError, match="12"):
        read_passphrase(file=path)
    monkeypatch.setenv("NRM_PASSPHRASE", "z" * 12)
    assert read_passphrase() == b"z" * 12


def test_agency_field_must_match(sealed: bytes) -> None:
    """A key file whose visible agency is changed or missing is a KeyFileError."""
    for change in ({"agency": "police"}, {}):
        doc = {k: v for k, v in json.loads(sealed).items() if k != "agency"} | change
        with pytest.raises(KeyFileError, match="agency"):
            open_keys(json.dumps(doc).encode(), passphrase=PASS)


def test_rotate_key_dir_rotates_the_nats_key(tmp_path: Path) -> None:
    """`rotate_key_dir` writes a new NATS seed into the sealed key file and its public NKey
    into identity.json; the old seed is kept as the previous one, and a second rotation
    drops it (only the last NATS seed before a rotation is kept)."""
    first = init_key_dir(tmp_path, agency="police", name="Police", passphrase=PASS,
                         cost=INTERACTIVE)  # fmt: skip
    second = rotate_key_dir(tmp_path, passphrase=PASS, cost=INTERACTIVE)
    assert second.nats_seed not in (None, first.nats_seed)
    assert second.previous_nats_seed == first.nats_seed
    identity = PublicIdentity.from_json((tmp_path / IDENTITY_FILE_NAME).read_bytes())
    assert identity.nats_key == second.public.nats_key != first.public.nats_key
    reopened = load_key_dir(tmp_path, passphrase=PASS)
    assert (reopened.nats_seed, reopened.previous_nats_seed) == (
        second.nats_seed,
        first.nats_seed,
    )
    assert first.public.nats_key is not None
    assert reopened.nats_seed_for(first.public.nats_key) == first.nats_seed
    third = rotate_key_dir(tmp_path, passphrase=PASS, cost=INTERACTIVE)
    assert third.previous_nats_seed == second.nats_seed
    assert third.nats_seed_for(first.public.nats_key) is None
    assert third.nats_seed is not None
    assert third.nats_seed not in (tmp_path / KEY_FILE_NAME).read_bytes()  # sealed


@pytest.mark.parametrize(
    "seed",
    ["not a seed", 42, "SAANJC3HH2ROLMRPIL5RQOTMHXHB2BOKDCY67DVBEJBTZQUBEKYZLVJCSE"],
    ids=["garbage", "a number", "an account seed, not a user seed"],
)
def test_bad_nats_seed_in_a_key_file_is_refused(keys: AgencyKeys, seed: object) -> None:
    """A sealed key file whose previous NATS seed is not a NATS user seed is a KeyFileError."""
    sealed = seal_keys(replace(keys, previous_nats_seed=b"placeholder"), passphrase=PASS,
                       cost=INTERACTIVE)  # fmt: skip
    doc = json.loads(sealed)
    box_key = _derive_for_test(doc)
    from nacl.secret import SecretBox

    inner = json.loads(
        SecretBox(box_key).decrypt(
            base64.b64decode(doc["ciphertext"]), base64.b64decode(doc["nonce"])
        )
    )
    inner["previous_nats_seed"] = seed
    resealed = SecretBox(box_key).encrypt(json.dumps(inner).encode())
    doc["nonce"] = base64.b64encode(resealed.nonce).decode()
    doc["ciphertext"] = base64.b64encode(resealed.ciphertext).decode()
    with pytest.raises(KeyFileError, match="not valid"):
        open_keys(json.dumps(doc).encode(), passphrase=PASS)


def _derive_for_test(doc: dict[str, Any]) -> bytes:
    kdf = doc["kdf"]
    return bytes(
        nacl.pwhash.argon2id.kdf(
            32,
            PASS,
            base64.b64decode(kdf["salt"]),
            opslimit=kdf["opslimit"],
            memlimit=kdf["memlimit"],
        )
    )
