"""An agency's key folder on disk: `agency.key` (sealed by keys.keyfile, 0600) and
`identity.json`, written atomically (runtime/files.py) and never overwritten by `init`.

Opening a key file derives its key with Argon2id (a quarter of a second and 256 MiB at the
default cost): a service that reloads one while running does it in a worker thread
(`asyncio.to_thread`), never on its event loop.
"""

from __future__ import annotations

import os
from pathlib import Path

from keys import AgencyKeys, KeyFileError, KeyFileExistsError
from keys.keyfile import (
    IDENTITY_FILE_NAME,
    KEY_FILE_NAME,
    MIN_PASSPHRASE_CHARS,
    MODERATE,
    PASSPHRASE_ENV,
    KdfCost,
    open_keys,
    seal_keys,
)

from .files import replace_file, write_new_file


def read_passphrase(*, file: Path | None = None, env: str = PASSPHRASE_ENV) -> bytes:
    """The key-file passphrase from `file` if given, else from the environment variable `env`."""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise KeyFileError(f"cannot read passphrase file {file}: {e.strerror}") from e
    else:
        value = os.environ.get(env)
        if value is None:
            raise KeyFileError(f"no passphrase: set {env} or give a passphrase file")
        text = value
    if len(text) < MIN_PASSPHRASE_CHARS:
        raise KeyFileError(f"the passphrase must be at least {MIN_PASSPHRASE_CHARS} characters")
    return text.encode("utf-8")


def init_key_dir(
    directory: Path, *, agency: str, name: str, passphrase: bytes, cost: KdfCost = MODERATE
) -> AgencyKeys:
    """Create fresh keys in `directory` (0700): `agency.key` (0600) and `identity.json`.

    Refuses to overwrite either file.
    """
    keys = AgencyKeys.generate(agency=agency, name=name)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for existing in (directory / KEY_FILE_NAME, directory / IDENTITY_FILE_NAME):
        if existing.exists():
            raise KeyFileExistsError(f"{existing} already exists; refusing to overwrite keys")
    try:
        write_new_file(directory / KEY_FILE_NAME, seal_keys(keys, passphrase=passphrase, cost=cost))
        write_new_file(directory / IDENTITY_FILE_NAME, keys.public.to_json().encode(), mode=0o644)
    except FileExistsError as e:  # made by another process since the check above
        raise KeyFileExistsError(str(e)) from e
    return keys


def load_key_dir(directory: Path, *, passphrase: bytes) -> AgencyKeys:
    path = directory / KEY_FILE_NAME
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from e
    return open_keys(data, passphrase=passphrase)


def rotate_key_dir(directory: Path, *, passphrase: bytes, cost: KdfCost = MODERATE) -> AgencyKeys:
    """Replace the agency's signing, encryption and NATS keys with new ones, keeping the old
    encryption key for mail still in flight and the old NATS seed until the directory naming
    the new NKey is published (§3.4); rewrite `identity.json` with the new public keys."""
    keys = load_key_dir(directory, passphrase=passphrase).rotated()
    replace_file(directory / KEY_FILE_NAME, seal_keys(keys, passphrase=passphrase, cost=cost))
    replace_file(directory / IDENTITY_FILE_NAME, keys.public.to_json().encode(), mode=0o644)
    return keys


def reseal_key_dir(
    directory: Path, *, old: bytes, new: bytes, cost: KdfCost = MODERATE
) -> AgencyKeys:
    """Seal the folder's `agency.key` again under the passphrase `new` (the keys unchanged);
    KeyFileError if `old` does not open it."""
    keys = load_key_dir(directory, passphrase=old)
    replace_file(directory / KEY_FILE_NAME, seal_keys(keys, passphrase=new, cost=cost))
    return keys
