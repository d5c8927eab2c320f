"""Private keys at rest: Argon2id-derived key + XSalsa20-Poly1305 (SecretBox), files 0600.

docs/PROTOCOL.md section 3. The format only: sealing and opening key files as bytes.
Reading and writing an agency's key folder, and the passphrase, are runtime/keydir.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.pwhash
import nacl.utils
import nkeys
from nacl.public import PrivateKey
from nacl.secret import SecretBox
from nacl.signing import SigningKey

from .codec import from_b64, to_b64
from .errors import KeyFileError
from .identity import AgencyKeys, check_agency_id, nats_public_key

KEYFILE_FORMAT = "nrm-keyfile/1"
PASSPHRASE_ENV = "NRM_PASSPHRASE"  # noqa: S105 - the variable's name, not a passphrase
MIN_PASSPHRASE_CHARS = 12
KEY_FILE_NAME = "agency.key"
IDENTITY_FILE_NAME = "identity.json"


@dataclass(frozen=True, slots=True)
class KdfCost:
    """Argon2id cost. Stored in each key file, so files made at any cost stay readable."""

    opslimit: int
    memlimit: int


#: libsodium's "moderate" profile (256 MiB): the default for real key files.
MODERATE = KdfCost(nacl.pwhash.argon2id.OPSLIMIT_MODERATE, nacl.pwhash.argon2id.MEMLIMIT_MODERATE)
#: libsodium's "interactive" profile (64 MiB): for tests and throw-away demo keys.
INTERACTIVE = KdfCost(
    nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE, nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
)


def _seal(
    secret: dict[str, Any], *, fmt: str, label: dict[str, str], passphrase: bytes, cost: KdfCost
) -> bytes:
    """The one sealed-file layout: Argon2id parameters, nonce and SecretBox ciphertext of
    the JSON `secret`, plus public `label` fields (PROTOCOL.md §3.1)."""
    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    sealed = SecretBox(_derive(passphrase, salt, cost)).encrypt(json.dumps(secret).encode())
    doc = {
        "format": fmt,
        **label,
        "kdf": {
            "alg": "argon2id13",
            "opslimit": cost.opslimit,
            "memlimit": cost.memlimit,
            "salt": to_b64(salt),
        },
        "nonce": to_b64(sealed.nonce),
        "ciphertext": to_b64(sealed.ciphertext),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def _open(data: bytes, *, fmt: str, passphrase: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(outer document, decrypted secret) of a sealed file; KeyFileError on any failure."""
    try:
        doc = json.loads(data)
        if doc.get("format") != fmt or doc["kdf"]["alg"] != "argon2id13":
            raise KeyFileError(f"not an {fmt} file")
        kdf = doc["kdf"]
        cost = KdfCost(int(kdf["opslimit"]), int(kdf["memlimit"]))
        if cost.memlimit > 4 * nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE:
            raise KeyFileError("key file asks for an unreasonable amount of memory")
        if cost.opslimit > 4 * nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE:
            raise KeyFileError("key file asks for an unreasonable amount of work")
        key = _derive(passphrase, from_b64(kdf["salt"]), cost)
        secret = json.loads(
            SecretBox(key).decrypt(from_b64(doc["ciphertext"]), from_b64(doc["nonce"]))
        )
    except nacl.exceptions.CryptoError as e:
        raise KeyFileError("wrong passphrase, or the key file is damaged") from e
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise KeyFileError(f"key file is not valid: {type(e).__name__}") from e
    if not isinstance(secret, dict):
        raise KeyFileError("key file is not valid: sealed contents are not an object")
    return doc, secret


def seal_keys(keys: AgencyKeys, *, passphrase: bytes, cost: KdfCost) -> bytes:
    """Encrypt an agency's private keys into key-file bytes."""
    secret = {
        "agency": keys.agency,
        "name": keys.name,
        "signing_seed": to_b64(bytes(keys.signing_key)),
        "x25519_secret": to_b64(bytes(keys.encryption_key)),
        "previous_x25519_secrets": [to_b64(bytes(k)) for k in keys.previous_encryption_keys],
        "nats_seed": None if keys.nats_seed is None else keys.nats_seed.decode("ascii"),
        "previous_nats_seed": (
            None if keys.previous_nats_seed is None else keys.previous_nats_seed.decode("ascii")
        ),
        "storage_key": None if keys.storage_key is None else to_b64(keys.storage_key),
    }
    return _seal(
        secret, fmt=KEYFILE_FORMAT, label={"agency": keys.agency}, passphrase=passphrase, cost=cost
    )


def open_keys(data: bytes, *, passphrase: bytes) -> AgencyKeys:
    """Decrypt key-file bytes; raises KeyFileError on a wrong passphrase or a damaged file."""
    doc, inner = _open(data, fmt=KEYFILE_FORMAT, passphrase=passphrase)
    if inner.get("agency") != doc.get("agency"):
        raise KeyFileError("key file agency does not match its sealed contents")
    try:
        return AgencyKeys(
            agency=check_agency_id(inner["agency"]),
            name=inner["name"],
            signing_key=SigningKey(from_b64(inner["signing_seed"])),
            encryption_key=PrivateKey(from_b64(inner["x25519_secret"])),
            nats_seed=_nats_seed(inner.get("nats_seed")),
            previous_nats_seed=_nats_seed(inner.get("previous_nats_seed")),
            previous_encryption_keys=tuple(
                PrivateKey(from_b64(k)) for k in inner.get("previous_x25519_secrets", [])
            ),
            storage_key=None
            if inner.get("storage_key") is None
            else from_b64(inner["storage_key"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise KeyFileError(f"key file is not valid: {type(e).__name__}") from e


ADMIN_KEY_FORMAT = "nrm-admin-key/1"


def seal_admin_key(key: SigningKey, *, passphrase: bytes, cost: KdfCost) -> bytes:
    """Encrypt an administrator's root signing key into key-file bytes (same scheme)."""
    return _seal(
        {"ed25519_seed": to_b64(bytes(key))},
        fmt=ADMIN_KEY_FORMAT,
        label={},
        passphrase=passphrase,
        cost=cost,
    )


def open_admin_key(data: bytes, *, passphrase: bytes) -> SigningKey:
    _, secret = _open(data, fmt=ADMIN_KEY_FORMAT, passphrase=passphrase)
    try:
        return SigningKey(from_b64(secret["ed25519_seed"]))
    except (KeyError, TypeError, ValueError) as e:
        raise KeyFileError(f"key file is not valid: {type(e).__name__}") from e


def _nats_seed(value: Any) -> bytes | None:
    """A NATS user seed from a key file ("SU..."), or None; TypeError/ValueError if not one."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("a NATS seed is text")
    seed = value.encode("ascii")
    try:
        public = nats_public_key(seed)
    except nkeys.NkeysError as e:
        raise ValueError("not a NATS seed") from e
    if not public.startswith("U"):
        raise ValueError("not a NATS user seed")
    return seed


def _derive(passphrase: bytes, salt: bytes, cost: KdfCost) -> bytes:
    return nacl.pwhash.argon2id.kdf(
        SecretBox.KEY_SIZE, passphrase, salt, opslimit=cost.opslimit, memlimit=cost.memlimit
    )
