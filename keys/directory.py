"""The signed trust directory: administrator roots, agencies and their keys, TUF-style checks.

docs/PROTOCOL.md section 7 is normative. A root lists the administrators' Ed25519 keys and the
threshold of them that must sign; a directory lists every agency with its roles and its
signing, encryption and NATS keys, each with a validity window and status. Both are canonical
JSON documents carried in a signed file `{"signed": ..., "signatures": [...]}`; verification
returns the verified object or raises. Pure and offline: no clock, no network, no files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from nacl.exceptions import BadSignatureError as NaclBadSignatureError
from nacl.public import PublicKey
from nacl.signing import SigningKey, VerifyKey

from .codec import HEX32, canonical_json, exact_b64, exact_members, load_canonical, to_b64
from .envelope import Recipient
from .errors import (
    BadSignatureError,
    ExpiredMetadataError,
    ExpiredRootError,
    MalformedError,
    NotEnoughSignaturesError,
    RetiredKeyError,
    RevokedKeyError,
    RollbackError,
    UnknownKeyError,
    UntrustedInputError,
)
from .identity import (
    ENCRYPTION_KID_LABEL,
    SIGNING_KID_LABEL,
    PublicIdentity,
    check_agency_id,
    check_encryption_key,
    key_id,
    signing_kid,
)
from .policy import Policy, policy_doc, policy_from_doc
from .roles import COMPETENT_AUTHORITY, DECIDES_VALUES, ROLES, SPEC1_ROLES
from .subjects import DIRECTORY_KEY, ROOT_KEY_PREFIX

#: Domain-separation labels of the two signatures (§7.4).
ROOT_LABEL: Final = b"nrm/v1/root"
DIRECTORY_LABEL: Final = b"nrm/v1/directory"
ROOT_TYPE: Final = "nrm-root"
DIRECTORY_TYPE: Final = "nrm-directory"
SPEC_VERSION: Final = 1
#: A directory with a national policy (and the roles of keys/roles.py SPEC2_ROLES).
POLICY_SPEC_VERSION: Final = 2

#: Bounds of the format (§7.2). Checked before parsing (size) or while parsing (counts).
MAX_METADATA_BYTES: Final = 1 << 20
MAX_SIGNATURES: Final = 64
MAX_ROOT_KEYS: Final = 64
MAX_AGENCIES: Final = 1024
MAX_KEYS_PER_KIND: Final = 32
MAX_NAME_CHARS: Final = 200
MAX_REASON_CHARS: Final = 500
#: Integers are kept inside the range every JSON implementation represents exactly.
MAX_INT: Final = (1 << 53) - 1


KeyStatus = Literal["active", "retiring", "revoked"]
KEY_STATUSES: Final = ("active", "retiring", "revoked")

#: A NATS user NKey public key: prefix "U", then base32 (RFC 4648 alphabet), 56 characters.
_NATS_USER_KEY = re.compile(r"^U[A-Z2-7]{55}$")


# --------------------------------------------------------------------------- values


def _check_int(value: object, what: str, *, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= MAX_INT:
        raise ValueError(f"{what} must be an integer from {minimum} to 2^53-1")
    return value


def _check_text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise ValueError(f"{what} must be a non-empty string of at most {limit} characters")
    return value


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One public key of an agency with its validity window and status (§7.3)."""

    kid: str
    public: bytes
    valid_from: int
    valid_until: int | None
    status: KeyStatus
    revoked_at: int | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kid, str) or not HEX32.fullmatch(self.kid):
            raise ValueError("kid must be 32 lowercase hex digits")
        if not isinstance(self.public, bytes) or len(self.public) != 32:
            raise ValueError("public keys are 32 bytes")
        _check_int(self.valid_from, "valid_from")
        if self.valid_until is not None:
            _check_int(self.valid_until, "valid_until")
            if self.valid_until < self.valid_from:
                raise ValueError("valid_until is before valid_from")
        if self.status not in KEY_STATUSES:
            raise ValueError(f"status must be one of {', '.join(KEY_STATUSES)}")
        if self.status == "revoked":
            _check_int(self.revoked_at, "revoked_at")
            _check_text(self.reason, "reason", MAX_REASON_CHARS)
        elif self.revoked_at is not None or self.reason is not None:
            raise ValueError("only a revoked key has revoked_at and reason")

    def revoked_by(self, at: int) -> bool:
        """Revoked at or before `at`."""
        return self.status == "revoked" and self.revoked_at is not None and at >= self.revoked_at

    def is_valid_at(self, at: int) -> bool:
        """Inside its window and not revoked by `at`."""
        if self.revoked_by(at):
            return False
        return self.valid_from <= at and (self.valid_until is None or at <= self.valid_until)


@dataclass(frozen=True, slots=True)
class AgencyEntry:
    """One agency: id, display name, roles and keys (§7.3). Roles are kept sorted."""

    agency: str
    name: str
    roles: tuple[str, ...]
    signing_keys: tuple[KeyEntry, ...]
    encryption_keys: tuple[KeyEntry, ...]
    nats_key: str
    #: For a `competent-authority` that decides one identification stage only, that stage;
    #: None for every other agency, and for an authority that decides both (§7.3).
    decides: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_agency_id(self.agency)
        _check_text(self.name, "name", MAX_NAME_CHARS)
        roles = tuple(self.roles)
        if not roles or len(set(roles)) != len(roles) or not set(roles) <= ROLES:
            raise ValueError(f"roles must be distinct and among {', '.join(sorted(ROLES))}")
        object.__setattr__(self, "roles", tuple(sorted(roles)))
        for keys, label, what in (
            (self.signing_keys, SIGNING_KID_LABEL, "signing"),
            (self.encryption_keys, ENCRYPTION_KID_LABEL, "encryption"),
        ):
            if not isinstance(keys, tuple) or not 0 < len(keys) <= MAX_KEYS_PER_KIND:
                raise ValueError(f"an agency has 1 to {MAX_KEYS_PER_KIND} {what} keys")
            if len({k.kid for k in keys}) != len(keys):
                raise ValueError(f"{what} key ids are not distinct")
            for k in keys:
                if not isinstance(k, KeyEntry) or k.kid != key_id(label, k.public):
                    raise ValueError(f"a {what} key id does not match its key")
        for k in self.encryption_keys:  # even a revoked one: no directory lists a weak key
            check_encryption_key(k.public, owner=self.agency)
        if not isinstance(self.nats_key, str) or not _NATS_USER_KEY.fullmatch(self.nats_key):
            raise ValueError("nats_key must be a NATS user public key (U..., 56 characters)")
        if self.decides is not None and (
            COMPETENT_AUTHORITY not in roles or tuple(self.decides) not in DECIDES_VALUES
        ):
            raise ValueError(
                'decides is ["first"] or ["second"], on a competent-authority only '
                "(absent, an authority decides both stages)"
            )

    def decides_stage(self, stage: str) -> bool:
        """Whether this agency may make identification decisions of `stage` (§8.7)."""
        return COMPETENT_AUTHORITY in self.roles and (self.decides is None or stage in self.decides)

    @classmethod
    def of(cls, identity: PublicIdentity, roles: Iterable[str], *, valid_from: int) -> AgencyEntry:
        """The entry admitting `identity` with `roles`: its signing and encryption keys active
        from `valid_from`, and its NATS key (ValueError if it has none)."""

        def active(kid: str, public: bytes) -> KeyEntry:
            return KeyEntry(kid, public, valid_from=valid_from, valid_until=None, status="active")

        return cls(
            agency=identity.agency,
            name=identity.name,
            roles=tuple(roles),
            signing_keys=(active(identity.signing_kid, bytes(identity.signing_key)),),
            encryption_keys=(active(identity.encryption_kid, bytes(identity.encryption_key)),),
            nats_key=identity.nats_key or "",
        )

    def key(self, kid: str) -> KeyEntry | None:
        for k in (*self.signing_keys, *self.encryption_keys):
            if k.kid == kid:
                return k
        return None


@dataclass(frozen=True, slots=True)
class Directory:
    """The agencies and their keys, at one version. Implements `envelope.SignerKeys`.

    Immutable: every update returns a new Directory with the same version and expiry;
    `bump(expires=...)` makes the next version.
    """

    version: int
    expires: int
    agencies: tuple[AgencyEntry, ...]
    #: The national policy (PROTOCOL §7.11); with it the document is spec_version 2.
    policy: Policy | None = None

    def __post_init__(self) -> None:
        _check_int(self.version, "version", minimum=1)
        _check_int(self.expires, "expires")
        if self.policy is not None and not isinstance(self.policy, Policy):
            raise TypeError("policy must be a Policy")
        if self.policy is None:
            for a in self.agencies:
                if not set(a.roles) <= SPEC1_ROLES:
                    raise ValueError(
                        f"agency {a.agency}: roles {', '.join(sorted(set(a.roles) - SPEC1_ROLES))} "
                        "need a directory with a national policy (spec_version 2)"
                    )
        agencies = tuple(sorted(self.agencies, key=lambda a: a.agency))
        if len(agencies) > MAX_AGENCIES:
            raise ValueError(f"a directory lists at most {MAX_AGENCIES} agencies")
        if len({a.agency for a in agencies}) != len(agencies):
            raise ValueError("agency ids are not distinct")
        if not all(isinstance(a, AgencyEntry) for a in agencies):
            raise TypeError("agencies must be AgencyEntry values")
        object.__setattr__(self, "agencies", agencies)

    # -- lookups

    def agency(self, agency: str) -> AgencyEntry:
        for entry in self.agencies:
            if entry.agency == agency:
                return entry
        raise UnknownKeyError(f"agency {agency} is not in directory version {self.version}")

    def __contains__(self, agency: object) -> bool:
        return any(entry.agency == agency for entry in self.agencies)

    def signing_key(self, agency: str, kid: str, *, at: int) -> VerifyKey:
        """The signing key `kid` of `agency` if it was valid at `at` (§7.6)."""
        entry = self.agency(agency)
        key = next((k for k in entry.signing_keys if k.kid == kid), None)
        if key is None:
            raise UnknownKeyError(f"key {kid} is not a signing key of {agency}")
        if key.revoked_by(at):
            raise RevokedKeyError(f"key {kid} of {agency} was revoked at {key.revoked_at}")
        if at < key.valid_from or (key.valid_until is not None and at > key.valid_until):
            raise RetiredKeyError(f"key {kid} of {agency} is not valid at {at}")
        return VerifyKey(key.public)

    def check_not_revoked(self, agency: str, kid: str, *, at: int) -> None:
        """Raise RevokedKeyError if the signing key `kid` of `agency` was revoked at or
        before `at`. Its validity window is not looked at: an audit event the bus stored
        after its key retired is appended, one stored after its key's revocation is not,
        whatever time it claims (§9.0). A key or agency not listed passes (the signature
        check before this one has found the key)."""
        entry = next((e for e in self.agencies if e.agency == agency), None)
        keys = () if entry is None else entry.signing_keys
        key = next((k for k in keys if k.kid == kid), None)
        if key is not None and key.revoked_by(at):
            raise RevokedKeyError(f"key {kid} of {agency} was revoked at {key.revoked_at}")

    def recipient(self, agency: str, *, at: int) -> Recipient:
        """The encryption key to seal to at `at`: of the keys not revoked and valid at `at`,
        the one with the latest valid_from (§7.6)."""
        entry = self.agency(agency)
        usable = [k for k in entry.encryption_keys if k.status != "revoked" and k.is_valid_at(at)]
        if not usable:
            raise UnknownKeyError(f"agency {agency} has no usable encryption key at {at}")
        best = max(usable, key=lambda k: (k.valid_from, k.status == "active", k.kid))
        return Recipient(agency=agency, key=PublicKey(best.public))

    # -- pure updates

    def bump(self, *, expires: int) -> Directory:
        """The same content as the next version, expiring at `expires`."""
        return replace(self, version=self.version + 1, expires=expires)

    @property
    def spec_version(self) -> int:
        """1, or 2 for a directory with a national policy (§7.2)."""
        return SPEC_VERSION if self.policy is None else POLICY_SPEC_VERSION

    def with_policy(self, policy: Policy | None) -> Directory:
        """The same agencies under `policy` (None: back to spec_version 1)."""
        return replace(self, policy=policy)

    def with_agency(self, entry: AgencyEntry) -> Directory:
        """Add `entry`, or replace the agency with the same id."""
        rest = tuple(a for a in self.agencies if a.agency != entry.agency)
        return replace(self, agencies=(*rest, entry))

    def without_agency(self, agency: str) -> Directory:
        if agency not in self:
            raise ValueError(f"agency {agency} is not in the directory")
        return replace(self, agencies=tuple(a for a in self.agencies if a.agency != agency))

    def rotate(
        self,
        agency: str,
        *,
        signing: tuple[str, bytes],
        encryption: tuple[str, bytes],
        now: int,
        overlap_seconds: int,
    ) -> Directory:
        """Announce new keys, active from `now`; the active ones become retiring and stay
        valid until `now + overlap_seconds` (§7.7)."""
        _check_int(now, "now")
        _check_int(overlap_seconds, "overlap_seconds")
        entry = self.agency(agency)
        end = now + overlap_seconds

        def rotated(keys: tuple[KeyEntry, ...], new: tuple[str, bytes]) -> tuple[KeyEntry, ...]:
            out = []
            for k in keys:
                if k.status == "active":
                    until = end if k.valid_until is None else min(k.valid_until, end)
                    k = replace(k, status="retiring", valid_until=max(until, k.valid_from))
                out.append(k)
            kid, public = new
            out.append(KeyEntry(kid, public, valid_from=now, valid_until=None, status="active"))
            return tuple(out)

        return self.with_agency(
            replace(
                entry,
                signing_keys=rotated(entry.signing_keys, signing),
                encryption_keys=rotated(entry.encryption_keys, encryption),
            )
        )

    def revoke(self, agency: str, kid: str, *, at: int, reason: str) -> Directory:
        """Mark key `kid` of `agency` revoked from time `at` (§7.7)."""
        entry = self.agency(agency)
        if entry.key(kid) is None:
            raise ValueError(f"key {kid} is not a key of {agency}")

        def revoked(keys: tuple[KeyEntry, ...]) -> tuple[KeyEntry, ...]:
            return tuple(
                replace(k, status="revoked", revoked_at=at, reason=reason) if k.kid == kid else k
                for k in keys
            )

        return self.with_agency(
            replace(
                entry,
                signing_keys=revoked(entry.signing_keys),
                encryption_keys=revoked(entry.encryption_keys),
            )
        )


@dataclass(frozen=True, slots=True)
class Root:
    """The administrators' keys (by signing key id) and how many must sign (§7.2)."""

    version: int
    expires: int
    threshold: int
    keys: dict[str, VerifyKey]

    def __post_init__(self) -> None:
        _check_int(self.version, "version", minimum=1)
        _check_int(self.expires, "expires")
        keys = dict(self.keys)  # never share the caller's dict
        if not keys or len(keys) > MAX_ROOT_KEYS:
            raise ValueError(f"a root holds 1 to {MAX_ROOT_KEYS} keys")
        for kid, key in keys.items():
            if not isinstance(key, VerifyKey) or signing_kid(key) != kid:
                raise ValueError("a root key id does not match its key")
        if type(self.threshold) is not int or not 1 <= self.threshold <= len(keys):
            raise ValueError("threshold must be from 1 to the number of root keys")
        object.__setattr__(self, "keys", keys)

    @classmethod
    def of(cls, *, version: int, expires: int, threshold: int, keys: Iterable[VerifyKey]) -> Root:
        return cls(version, expires, threshold, {signing_kid(k): k for k in keys})


# --------------------------------------------------------------------------- encoding


def _key_doc(k: KeyEntry) -> dict[str, Any]:
    return {
        "kid": k.kid,
        "public": to_b64(k.public),
        "valid_from": k.valid_from,
        "valid_until": k.valid_until,
        "status": k.status,
        "revoked_at": k.revoked_at,
        "reason": k.reason,
    }


def _header_doc(
    kind: str, version: int, expires: int, *, spec_version: int = SPEC_VERSION
) -> dict[str, Any]:
    """The fields a root and a directory document both begin with (§7.2)."""
    return {"type": kind, "spec_version": spec_version, "version": version, "expires": expires}


def _root_doc(root: Root) -> dict[str, Any]:
    return {
        **_header_doc(ROOT_TYPE, root.version, root.expires),
        "threshold": root.threshold,
        "keys": {kid: to_b64(bytes(key)) for kid, key in root.keys.items()},
    }


def _directory_doc(d: Directory) -> dict[str, Any]:
    policy = {} if d.policy is None else {"policy": policy_doc(d.policy)}
    return {
        **_header_doc(DIRECTORY_TYPE, d.version, d.expires, spec_version=d.spec_version),
        **policy,
        "agencies": [
            {
                "agency": a.agency,
                "name": a.name,
                "roles": list(a.roles),
                "signing_keys": [_key_doc(k) for k in a.signing_keys],
                "encryption_keys": [_key_doc(k) for k in a.encryption_keys],
                "nats_key": a.nats_key,
                **({} if a.decides is None else {"decides": list(a.decides)}),
            }
            for a in d.agencies
        ],
    }


def encode_root(root: Root) -> bytes:
    """The canonical `signed` part of a root."""
    return canonical_json(_root_doc(root))


def encode_directory(d: Directory) -> bytes:
    """The canonical `signed` part of a directory."""
    return canonical_json(_directory_doc(d))


# --------------------------------------------------------------------------- strict decoding


def _load_canonical(data: bytes, what: str) -> Any:
    """Parse `data` as JSON and refuse it unless it is exactly its canonical form."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes")
    data = bytes(data)
    if len(data) > MAX_METADATA_BYTES:
        raise MalformedError(f"{what} is {len(data)} bytes, more than {MAX_METADATA_BYTES}")
    return load_canonical(data, what)


def _list(obj: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(obj, list) or len(obj) > limit:
        raise ValueError(f"{what} must be a list of at most {limit} items")
    return obj


def _opt_int(value: Any, what: str) -> int | None:
    return None if value is None else _check_int(value, what)


def _opt_text(value: Any, what: str) -> str | None:
    return None if value is None else _check_text(value, what, MAX_REASON_CHARS)


_KEY_FIELDS = {"kid", "public", "valid_from", "valid_until", "status", "revoked_at", "reason"}
_AGENCY_FIELDS = {"agency", "name", "roles", "signing_keys", "encryption_keys", "nats_key"}
_ROOT_FIELDS = {"type", "spec_version", "version", "expires", "threshold", "keys"}
_DIRECTORY_FIELDS = {"type", "spec_version", "version", "expires", "agencies"}


def _key_from_doc(doc: Any) -> KeyEntry:
    f = exact_members(doc, _KEY_FIELDS, "key")
    status = f["status"]
    if status not in KEY_STATUSES:
        raise ValueError("unknown key status")
    return KeyEntry(
        kid=_check_text(f["kid"], "kid", 32),
        public=exact_b64(f["public"], 32, "public"),
        valid_from=_check_int(f["valid_from"], "valid_from"),
        valid_until=_opt_int(f["valid_until"], "valid_until"),
        status=status,
        revoked_at=_opt_int(f["revoked_at"], "revoked_at"),
        reason=_opt_text(f["reason"], "reason"),
    )


def _check_header(
    f: dict[str, Any], kind: str, *, versions: tuple[int, ...] = (SPEC_VERSION,)
) -> int:
    """Check the type and spec_version members; the spec_version."""
    if f["type"] != kind:
        raise ValueError(f"expected a {kind} document")
    if type(f["spec_version"]) is not int or f["spec_version"] not in versions:
        raise ValueError(f"spec_version must be {' or '.join(map(str, versions))}")
    return int(f["spec_version"])


def _root_from_doc(doc: Any) -> Root:
    f = exact_members(doc, _ROOT_FIELDS, "root")
    _check_header(f, ROOT_TYPE)
    keys = f["keys"]
    if not isinstance(keys, dict) or len(keys) > MAX_ROOT_KEYS:
        raise ValueError(f"keys must be an object of at most {MAX_ROOT_KEYS} members")
    return Root(
        version=_check_int(f["version"], "version", minimum=1),
        expires=_check_int(f["expires"], "expires"),
        threshold=_check_int(f["threshold"], "threshold", minimum=1),
        keys={kid: VerifyKey(exact_b64(pub, 32, "root key")) for kid, pub in keys.items()},
    )


def _directory_from_doc(doc: Any) -> Directory:
    spec = doc.get("spec_version") if isinstance(doc, dict) else None
    names = _DIRECTORY_FIELDS | ({"policy"} if spec == POLICY_SPEC_VERSION else set())
    f = exact_members(doc, names, "directory")
    _check_header(f, DIRECTORY_TYPE, versions=(SPEC_VERSION, POLICY_SPEC_VERSION))
    policy = policy_from_doc(f["policy"]) if "policy" in f else None
    agencies = []
    for item in _list(f["agencies"], "agencies", MAX_AGENCIES):
        optional = {"decides"} & set(item) if isinstance(item, dict) else set()
        a = exact_members(item, _AGENCY_FIELDS | optional, "agency")
        decides = _list(a["decides"], "decides", 1) if "decides" in a else None
        roles = _list(a["roles"], "roles", len(ROLES))
        if not all(isinstance(r, str) for r in roles):
            raise ValueError("roles must be strings")
        agencies.append(
            AgencyEntry(
                agency=_check_text(a["agency"], "agency", 64),
                name=_check_text(a["name"], "name", MAX_NAME_CHARS),
                roles=tuple(roles),
                signing_keys=tuple(
                    _key_from_doc(k)
                    for k in _list(a["signing_keys"], "signing_keys", MAX_KEYS_PER_KIND)
                ),
                encryption_keys=tuple(
                    _key_from_doc(k)
                    for k in _list(a["encryption_keys"], "encryption_keys", MAX_KEYS_PER_KIND)
                ),
                nats_key=_check_text(a["nats_key"], "nats_key", 56),
                decides=None if decides is None else tuple(decides),
            )
        )
    return Directory(
        version=_check_int(f["version"], "version", minimum=1),
        expires=_check_int(f["expires"], "expires"),
        agencies=tuple(agencies),
        policy=policy,
    )


@dataclass(frozen=True, slots=True)
class _SignedFile:
    """A parsed signed file: the canonical signed part and its (keyid, signature) pairs."""

    kind: str
    signed: Any
    signed_bytes: bytes
    signatures: tuple[tuple[str, bytes], ...]

    @property
    def label(self) -> bytes:
        return ROOT_LABEL if self.kind == ROOT_TYPE else DIRECTORY_LABEL

    def to_bytes(self) -> bytes:
        sigs = [{"keyid": kid, "sig": to_b64(sig)} for kid, sig in self.signatures]
        return canonical_json({"signed": self.signed, "signatures": sigs})


_DECODERS: Final[dict[str, tuple[Callable[[Any], Any], Callable[[Any], bytes]]]] = {
    ROOT_TYPE: (_root_from_doc, encode_root),
    DIRECTORY_TYPE: (_directory_from_doc, encode_directory),
}


def _parse(data: bytes, *, allow_bare: bool) -> tuple[_SignedFile, Root | Directory]:
    """Strictly parse a signed file (or, if `allow_bare`, an unsigned `signed` part)."""
    obj = _load_canonical(data, "metadata")
    try:
        if allow_bare and isinstance(obj, dict) and "type" in obj:
            obj = {"signed": obj, "signatures": []}
        f = exact_members(obj, {"signed", "signatures"}, "signed file")
        signatures = []
        for item in _list(f["signatures"], "signatures", MAX_SIGNATURES):
            s = exact_members(item, {"keyid", "sig"}, "signature")
            if not isinstance(s["keyid"], str) or not HEX32.fullmatch(s["keyid"]):
                raise ValueError("keyid must be 32 lowercase hex digits")
            signatures.append((s["keyid"], exact_b64(s["sig"], 64, "sig")))
        signed = f["signed"]
        kind = signed.get("type") if isinstance(signed, dict) else None
        if kind not in _DECODERS:
            raise ValueError("signed part has an unknown type")
        decode, encode = _DECODERS[kind]
        value = decode(signed)
    except (ValueError, TypeError) as e:
        raise MalformedError(f"metadata is not valid: {e}") from e
    signed_bytes = canonical_json(signed)
    if encode(value) != signed_bytes:
        raise MalformedError("metadata signed part is not in canonical order")
    return _SignedFile(kind, signed, signed_bytes, tuple(signatures)), value


def read_unverified_root(data: bytes) -> Root:
    """Parse a root (signed file or bare document) WITHOUT checking any signature."""
    value = _parse(data, allow_bare=True)[1]
    if not isinstance(value, Root):
        raise MalformedError("metadata is not a root")
    return value


def read_unverified_directory(data: bytes) -> Directory:
    """Parse a directory (signed file or bare document) WITHOUT checking any signature."""
    value = _parse(data, allow_bare=True)[1]
    if not isinstance(value, Directory):
        raise MalformedError("metadata is not a directory")
    return value


# --------------------------------------------------------------------------- signing


def sign(data: bytes, key: SigningKey) -> bytes:
    """Add `key`'s signature to a signed file, or make one from an unsigned document (§7.4).

    A key that already signed is not added twice (its entry is replaced by a fresh one).
    The returned file lists signatures sorted by key id.
    """
    if not isinstance(key, SigningKey):
        raise TypeError("sign takes a nacl SigningKey")
    parsed, _ = _parse(data, allow_bare=True)
    kid = signing_kid(key.verify_key)
    sig = key.sign(parsed.label + b"\x00" + parsed.signed_bytes).signature
    others = [(k, s) for k, s in parsed.signatures if k != kid]
    return replace(parsed, signatures=tuple(sorted([*others, (kid, sig)]))).to_bytes()


def signed_part(data: bytes) -> bytes:
    """The canonical signed part of a signed file (or an unsigned document): what each
    administrator signs (after its label), and what a detached signature is for."""
    return _parse(data, allow_bare=True)[0].signed_bytes


def detached_signature(data: bytes, key: SigningKey) -> tuple[str, bytes]:
    """`key`'s (key id, signature) over the signed part of `data`, made apart from the file
    (an administrator signing a draft on another machine)."""
    parsed, _ = _parse(data, allow_bare=True)
    signature = key.sign(parsed.label + b"\x00" + parsed.signed_bytes).signature
    return signing_kid(key.verify_key), signature


def add_signature(data: bytes, kid: str, sig: bytes, *, key: VerifyKey) -> bytes:
    """`data` with the detached signature `(kid, sig)` added, once it verifies under `key`
    (the key `kid` names in the trusted root); BadSignatureError if it does not."""
    parsed, _ = _parse(data, allow_bare=True)
    if signing_kid(key) != kid:
        raise BadSignatureError("the signature's key id is not the key it is checked with")
    try:
        key.verify(parsed.label + b"\x00" + parsed.signed_bytes, sig)
    except NaclBadSignatureError as e:
        raise BadSignatureError(f"the signature of {kid} is not over this draft") from e
    others = [(k, s) for k, s in parsed.signatures if k != kid]
    return replace(parsed, signatures=tuple(sorted([*others, (kid, sig)]))).to_bytes()


def signature_count(data: bytes, *, keys: Root | Mapping[str, VerifyKey] | None) -> int:
    """Distinct key ids whose signature verifies under `keys` (a root or a kid->key map), or,
    with `keys=None`, distinct key ids present (nothing verified)."""
    parsed, _ = _parse(data, allow_bare=True)
    if keys is None:
        return len({kid for kid, _ in parsed.signatures})
    trusted = keys.keys if isinstance(keys, Root) else keys
    return len(_valid_signers(parsed, trusted)[0])


def _valid_signers(parsed: _SignedFile, keys: Mapping[str, VerifyKey]) -> tuple[set[str], bool]:
    """(key ids in `keys` with a valid signature, whether any of their signatures was bad)."""
    message = parsed.label + b"\x00" + parsed.signed_bytes
    valid: set[str] = set()
    bad = False
    for kid, sig in parsed.signatures:
        key = keys.get(kid)
        if key is None:
            continue
        try:
            key.verify(message, sig)
        except NaclBadSignatureError:
            bad = True
        else:
            valid.add(kid)
    return valid, bad


def _require_threshold(
    parsed: _SignedFile, keys: Mapping[str, VerifyKey], threshold: int, what: str
) -> None:
    valid, bad = _valid_signers(parsed, keys)
    if len(valid) >= threshold:
        return
    message = f"{what}: {len(valid)} valid signatures of the {threshold} required"
    if bad:
        raise BadSignatureError(message + ", and at least one signature is invalid")
    raise NotEnoughSignaturesError(message)


# --------------------------------------------------------------------------- verification


def verify_initial_root(data: bytes) -> Root:
    """Check a root obtained out of band (the trust anchor): signed by a threshold of its
    own keys (§7.5). Its expiry is not checked here: the pinned root may have expired once
    later roots exist; only the newest root of the chain must be current
    (`check_root_current`, `verify_root_chain`)."""
    parsed, value = _parse(data, allow_bare=False)
    if not isinstance(value, Root):
        raise MalformedError("metadata is not a root")
    _require_threshold(parsed, value.keys, value.threshold, f"root version {value.version}")
    return value


def verify_root_update(trusted: Root, new_bytes: bytes) -> Root:
    """Verify the root that follows `trusted` (§7.5, steps R1-R4). Neither root's expiry is
    checked: an intermediate root may have expired (TUF's rule); the newest is checked
    where it is used (`check_root_current`)."""
    parsed, new = _parse(new_bytes, allow_bare=False)
    if not isinstance(new, Root):
        raise MalformedError("metadata is not a root")
    what = f"root version {new.version}"
    _require_threshold(parsed, trusted.keys, trusted.threshold, what + " (trusted root keys)")
    _require_threshold(parsed, new.keys, new.threshold, what + " (its own keys)")
    if new.version != trusted.version + 1:
        raise RollbackError(
            f"root version {new.version} does not follow trusted version {trusted.version}"
        )
    return new


def check_root_current(root: Root, *, now: int) -> Root:
    """The newest trusted root, if it has not expired at `now` (§7.5, step C1)."""
    if now >= root.expires:
        raise ExpiredRootError(
            f"root version {root.version} has expired; a newer root must be published"
        )
    return root


def walk_root_chain(pinned: bytes, later: Iterable[bytes]) -> Root:
    """Walk the root chain from the pinned root through each later root in version order,
    every step verified (R1-R4), expired or not; returns the newest root. What may be done
    with an expired newest root: sign its successor (a root rotation), nothing else."""
    root = verify_initial_root(pinned)
    for data in later:
        root = verify_root_update(root, data)
    return root


def verify_root_chain(pinned: bytes, later: Iterable[bytes], *, now: int) -> Root:
    """Walk the root chain from the pinned root through each later root in version order
    (§7.5): every step must verify (R1-R4); the pinned and intermediate roots may have
    expired; the newest must be current at `now` (C1). Returns the newest root."""
    return check_root_current(walk_root_chain(pinned, later), now=now)


def verify_directory(root: Root, data: bytes, *, now: int, current: Directory | None) -> Directory:
    """Verify a directory against `root` and the currently trusted one (§7.5, steps D1-D5).

    The same version with byte-identical content is accepted as no change. `root` must be
    the newest trusted root and current at `now` (D5).
    """
    parsed, new = _parse(data, allow_bare=False)
    if not isinstance(new, Directory):
        raise MalformedError("metadata is not a directory")
    what = f"directory version {new.version}"
    _require_threshold(parsed, root.keys, root.threshold, what)
    if current is not None and (
        new.version < current.version
        or (new.version == current.version and parsed.signed_bytes != encode_directory(current))
    ):
        raise RollbackError(f"{what} does not follow trusted version {current.version}")
    if now >= new.expires:
        raise ExpiredMetadataError(f"{what} has expired")
    check_root_current(root, now=now)
    return new


class TrustStore:
    """The newest trusted root and the trusted directory (§7.5). State changes only after an
    update fully verifies. Roots are taken whether or not they have expired (an expired root
    may be followed by a current one); a directory only under a current root, and it is
    trusted only while both are current (`directory_at`)."""

    def __init__(self, root: Root, directory: Directory | None = None) -> None:
        self._root = root
        self._directory = directory
        self._directory_bytes: bytes | None = None
        self._root_bytes: bytes | None = None

    @classmethod
    def pinned(cls, data: bytes) -> TrustStore:
        """A store trusting the pinned root (the anchor), expired or not."""
        return cls(verify_initial_root(data))

    @property
    def root(self) -> Root:
        return self._root

    @property
    def directory(self) -> Directory | None:
        """The last verified directory, current or not (see `directory_at`)."""
        return self._directory

    @property
    def root_bytes(self) -> bytes | None:
        """The signed file of the current root, if it came through `update_root`."""
        return self._root_bytes

    @property
    def directory_bytes(self) -> bytes | None:
        """The signed file of the current directory, for persisting (temp file + os.replace)."""
        return self._directory_bytes

    def directory_at(self, now: int) -> Directory | None:
        """The directory, if there is one and both it and the newest root are current at
        `now`; None otherwise (a frozen copy stops being trusted)."""
        d = self._directory
        if d is None or now >= d.expires or now >= self._root.expires:
            return None
        return d

    def update_root(self, data: bytes) -> Root:
        """Take the root that follows the trusted one (R1-R4; expired or not)."""
        root = verify_root_update(self._root, data)
        self._root, self._root_bytes = root, bytes(data)
        return root

    def update_directory(self, data: bytes, now: int) -> Directory:
        directory = verify_directory(self._root, data, now=now, current=self._directory)
        self._directory, self._directory_bytes = directory, bytes(data)
        return directory


@dataclass(frozen=True, slots=True)
class Refused:
    """Why the last root or directory offered was not taken: its bucket key, the failure's
    reason code (`malformed` for what does not parse) and a description."""

    key: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Offered:
    """What one offer to a `TrustFeed` changed: the roots taken (oldest first) and the
    directory taken, each with its signed bytes; or why the offer was refused."""

    roots: tuple[tuple[Root, bytes], ...] = ()
    directory: tuple[Directory, bytes] | None = None
    refused: Refused | None = None

    @property
    def changed(self) -> bool:
        """Whether what is trusted changed."""
        return len(self.roots) > 0 or self.directory is not None


class TrustFeed:
    """A TrustStore fed the entries of the directory bucket (`root.<n>`, `directory`), the one
    way every party (agents, bus authority, ledger) builds its chain of trust (§7.5).

    A root is taken if it follows the trusted one (an older or equal version is ignored); a
    directory that does not verify is kept and tried again once a later root is taken, since
    administrators may publish the directory before the root that signs it. The last refusal
    is kept until a directory is taken. Pure: the caller passes `now`, logs and persists.
    """

    def __init__(self, pinned: bytes) -> None:
        self.store = TrustStore.pinned(pinned)
        #: The last refusal, until a directory is taken.
        self.refused: Refused | None = None
        self._pending: bytes | None = None

    def offer(self, key: str, value: bytes, *, now: int) -> Offered:
        """Verify and take a bucket entry if it changes what is trusted."""
        try:
            if key.startswith(ROOT_KEY_PREFIX):
                if int(key[len(ROOT_KEY_PREFIX) :]) <= self.store.root.version:
                    return Offered()  # an old root, already gone past
                root = self.store.update_root(value)
                taken = ((root, bytes(value)),)
                if self._pending is None:
                    return Offered(roots=taken)
                pending, self._pending = self._pending, None  # it may verify under this root
                after = self.offer(DIRECTORY_KEY, pending, now=now)
                return replace(after, roots=taken + after.roots)
            if key == DIRECTORY_KEY:
                before = self.store.directory
                directory = self.store.update_directory(value, now=now)
                self.refused = None
                changed = directory != before
                return Offered(directory=(directory, bytes(value)) if changed else None)
        except UntrustedInputError as e:
            if key == DIRECTORY_KEY:
                self._pending = bytes(value)
            self.refused = Refused(key, e.reason, str(e))
            return Offered(refused=self.refused)
        except ValueError as e:
            self.refused = Refused(key, "malformed", str(e))
            return Offered(refused=self.refused)
        return Offered()  # neither a root nor the directory

    def offer_root(self, data: bytes, *, now: int) -> Offered:
        """Offer a root file whose bucket key is not known (a cache, a served list): its
        version is read from it first."""
        try:
            version = read_unverified_root(data).version
        except (UntrustedInputError, ValueError) as e:
            self.refused = Refused(ROOT_KEY_PREFIX, "malformed", str(e))
            return Offered(refused=self.refused)
        return self.offer(f"{ROOT_KEY_PREFIX}{version}", data, now=now)


def directory_from_files(
    pinned: bytes, later_roots: Iterable[bytes], directory: bytes, *, now: int
) -> Directory:
    """A signed directory verified under the chain of trust from a pinned root through the
    later roots in version order (each verified by the one before, the newest current at
    `now`), §7.5: the start of a bus, a command-line check. Raises on any failure."""
    store = TrustStore(verify_root_chain(pinned, later_roots, now=now))
    return store.update_directory(directory, now=now)
