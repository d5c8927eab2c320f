"""Service catalogues and capacity records (docs/PROTOCOL.md §8.8): what a provider publishes
about the services it offers and how many places are free, so that a referrer's system can
find a provider that fits before it refers. Neither carries anything about a person; a
location is a coarse region code, never an address.

    catalogue (signed part) = canonical JSON {"type": "nrm-service-catalogue",
        "spec_version": 1, "agency", "version", "expires", "services": [service, ...]}
    signed file = {"signatures": [{"keyid", "sig"}], "signed": catalogue}
    sig         = Ed25519(provider signing key, "nrm/v1/service-catalogue" || 0x00 || signed)

    capacity  = canonical msgpack [1, agency, service_id, seq, free, total, as_of, expires]
    signed    = canonical msgpack [1, capacity (bin), signer kid, signature]
    signature = Ed25519(provider signing key, "nrm/v1/capacity" || 0x00 || capacity)

A catalogue changes rarely and is versioned like the directory; capacity changes often, so
each service's count is its own small signed record with a rising `seq` and a short life (an
hour at most: a provider that stops updating shows as unknown, never as free). Verification
returns the verified value or raises. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from nacl.signing import SigningKey

from . import codec
from .codec import bounded_int, canonical_json, exact_members, load_canonical
from .directory import Directory
from .errors import (
    ExpiredError,
    ExpiredMetadataError,
    MalformedError,
    NotForThisRoleError,
    RollbackError,
    UnexpectedMessageError,
    UntrustedInputError,
)
from .limits import DEFAULT_LIMITS
from .signed import check_signature, decode_file, decode_frame, sign_file, sign_frame
from .subjects import AGENCY_ID_PATTERN

CATALOGUE_TYPE: Final = "nrm-service-catalogue"
SPEC_VERSION: Final = 1
LABEL: Final = b"nrm/v1/service-catalogue"
CAPACITY_LABEL: Final = b"nrm/v1/capacity"
MAX_CATALOGUE_BYTES: Final = 65_536
MAX_SERVICES: Final = 64
MAX_SIGNED_CAPACITY_BYTES: Final = 256
#: A capacity record lives at most this long after `as_of` (seconds).
MAX_CAPACITY_LIFETIME: Final = 3600
MAX_PLACES: Final = 100_000
_MAX_INT: Final = (1 << 53) - 1

#: What a service is: the referral schema's `requested_services` codes (a test holds them equal).
SERVICE_TYPES: Final[tuple[str, ...]] = (
    "shelter",
    "medical",
    "psychological",
    "legal",
    "interpretation",
    "reflection_period",
    "return",
    "integration",
)
SUITABLE_FOR: Final[tuple[str, ...]] = (
    "children",
    "families",
    "lgbtiq",
    "men",
    "unaccompanied_children",
    "women",
)
ACCESSIBILITY: Final[tuple[str, ...]] = (
    "accessible_toilet",
    "hearing_loop",
    "sign_language",
    "step_free",
    "wheelchair",
)
CAPACITY_UNITS: Final[tuple[str, ...]] = ("places", "sessions")
#: The directory roles that provide services (§7.3).
PROVIDER_ROLES: Final = frozenset({"ngo", "social-services", "health", "child-protection"})

_SERVICE_ID: Final = re.compile(r"^[0-9a-f]{16}$")
_LANGUAGE: Final = re.compile(r"^[a-z]{2,3}$")
#: ISO 3166-1 alpha-2, or an ISO 3166-2 subdivision of it.
_REGION: Final = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")
_SERVICE_FIELDS: Final = frozenset(
    {
        "service_id",
        "type",
        "languages",
        "suitable_for",
        "accessibility",
        "regions",
        "capacity_unit",
    }
)
_CATALOGUE_FIELDS: Final = frozenset(
    {"type", "spec_version", "agency", "version", "expires", "services"}
)


def _codes(
    value: object, what: str, *, allowed: Sequence[str] | re.Pattern[str], most: int, least: int = 1
) -> tuple[str, ...]:
    """A sorted list of distinct codes, `least` to `most` of them, each allowed."""

    def ok(v: object) -> bool:
        if not isinstance(v, str):
            return False
        return bool(allowed.fullmatch(v)) if isinstance(allowed, re.Pattern) else v in allowed

    if (
        not isinstance(value, list | tuple)
        or not least <= len(value) <= most
        or not all(ok(v) for v in value)
        or list(value) != sorted(set(value))
    ):
        raise ValueError(f"{what} must be a sorted list of {least} to {most} distinct codes")
    return tuple(value)


def _int(value: object, what: str, *, minimum: int = 0, maximum: int = _MAX_INT) -> int:
    return bounded_int(value, what, minimum=minimum, maximum=maximum)


@dataclass(frozen=True, slots=True)
class Service:
    """One service a provider offers: coded, never about a person."""

    service_id: str
    type: str
    languages: tuple[str, ...]
    suitable_for: tuple[str, ...]
    accessibility: tuple[str, ...]
    regions: tuple[str, ...]
    capacity_unit: str

    def __post_init__(self) -> None:
        if not (isinstance(self.service_id, str) and _SERVICE_ID.fullmatch(self.service_id)):
            raise ValueError("service_id must be 16 lowercase hex digits")
        if self.type not in SERVICE_TYPES:
            raise ValueError("type must be one of " + ", ".join(SERVICE_TYPES))
        _codes(self.languages, "languages", allowed=_LANGUAGE, most=10)
        _codes(self.suitable_for, "suitable_for", allowed=SUITABLE_FOR, most=len(SUITABLE_FOR))
        _codes(
            self.accessibility,
            "accessibility",
            allowed=ACCESSIBILITY,
            most=len(ACCESSIBILITY),
            least=0,
        )
        _codes(self.regions, "regions", allowed=_REGION, most=16)
        if self.capacity_unit not in CAPACITY_UNITS:
            raise ValueError("capacity_unit must be one of " + ", ".join(CAPACITY_UNITS))


@dataclass(frozen=True, slots=True)
class Catalogue:
    """A provider's services at one version. Services are kept sorted by id."""

    agency: str
    version: int
    expires: int
    services: tuple[Service, ...]

    def __post_init__(self) -> None:
        if not (isinstance(self.agency, str) and AGENCY_ID_PATTERN.fullmatch(self.agency)):
            raise ValueError("agency must be an agency id")
        _int(self.version, "version", minimum=1)
        _int(self.expires, "expires")
        services = tuple(sorted(self.services, key=lambda s: s.service_id))
        if len(services) > MAX_SERVICES or not all(isinstance(s, Service) for s in services):
            raise ValueError(f"a catalogue lists at most {MAX_SERVICES} services")
        if len({s.service_id for s in services}) != len(services):
            raise ValueError("service ids are not distinct")
        object.__setattr__(self, "services", services)

    def service(self, service_id: str) -> Service | None:
        return next((s for s in self.services if s.service_id == service_id), None)


def encode_catalogue(catalogue: Catalogue) -> bytes:
    """The canonical signed part of a catalogue."""
    return canonical_json(
        {
            "type": CATALOGUE_TYPE,
            "spec_version": SPEC_VERSION,
            "agency": catalogue.agency,
            "version": catalogue.version,
            "expires": catalogue.expires,
            "services": [
                {
                    "service_id": s.service_id,
                    "type": s.type,
                    "languages": list(s.languages),
                    "suitable_for": list(s.suitable_for),
                    "accessibility": list(s.accessibility),
                    "regions": list(s.regions),
                    "capacity_unit": s.capacity_unit,
                }
                for s in catalogue.services
            ],
        }
    )


def sign_catalogue(catalogue: Catalogue, key: SigningKey) -> bytes:
    """The signed catalogue file, with the provider's one signature."""
    return sign_file(LABEL, encode_catalogue(catalogue), key)


def verify_catalogue(
    data: bytes, *, directory: Directory, now: int, current: Catalogue | None
) -> Catalogue:
    """Decode a signed catalogue strictly and return it if its provider signed it.

    In order: shape (MalformedError); the agency in `directory` (UnknownKeyError) with a
    provider role (NotForThisRoleError); the signing key valid `now` (UnknownKeyError,
    RetiredKeyError, RevokedKeyError); the signature (BadSignatureError); not expired
    (ExpiredMetadataError); not older than `current`, the last one accepted from that
    agency, and at the same version the same content (RollbackError)."""
    doc, signed, kid, sig = decode_file(data, max_bytes=MAX_CATALOGUE_BYTES, what="catalogue")
    try:
        catalogue = _catalogue_from_doc(doc)
    except (ValueError, TypeError) as e:
        raise MalformedError(str(e)) from e
    entry = directory.agency(catalogue.agency)
    if not PROVIDER_ROLES & set(entry.roles):
        raise NotForThisRoleError(f"{catalogue.agency} holds no role that provides services")
    key = directory.signing_key(catalogue.agency, kid, at=now)
    check_signature(LABEL, signed, sig, key, failure="catalogue signature does not verify")
    if catalogue.expires <= now:
        raise ExpiredMetadataError(f"catalogue version {catalogue.version} has expired")
    if current is not None:
        if current.agency != catalogue.agency:
            raise ValueError("current must be the last catalogue accepted from that agency")
        if catalogue.version < current.version:
            raise RollbackError(
                f"catalogue version {catalogue.version} is older than {current.version}"
            )
        if catalogue.version == current.version and catalogue != current:
            raise RollbackError(f"catalogue version {catalogue.version} changed without a bump")
    return catalogue


def _catalogue_from_doc(doc: Any) -> Catalogue:
    f = exact_members(doc, _CATALOGUE_FIELDS, "catalogue")
    if f["type"] != CATALOGUE_TYPE or f["spec_version"] != SPEC_VERSION:
        raise ValueError(f"a catalogue has type {CATALOGUE_TYPE} and spec_version 1")
    items = f["services"]
    if not isinstance(items, list) or len(items) > MAX_SERVICES:
        raise ValueError(f"services must be a list of at most {MAX_SERVICES}")
    services = []
    for item in items:
        s = exact_members(item, _SERVICE_FIELDS, "service")
        services.append(Service(**{name: _tuple(s[name]) for name in _SERVICE_FIELDS}))
    catalogue = Catalogue(
        agency=f["agency"], version=f["version"], expires=f["expires"], services=tuple(services)
    )
    if [s.service_id for s in catalogue.services] != [s["service_id"] for s in items]:
        raise ValueError("services must be sorted by service_id")
    return catalogue


def _tuple(value: object) -> Any:
    return tuple(value) if isinstance(value, list) else value


# --------------------------------------------------------------------------- capacity


@dataclass(frozen=True, slots=True)
class Capacity(codec.Encoded):
    """How much of one service is free, as of a moment, until `expires`."""

    #: A capacity record's wire form (see the module docstring).
    WIRE: ClassVar[codec.Record] = codec.Record(
        "capacity", 1, ("agency", "service_id", "seq", "free", "total", "as_of", "expires")
    )

    agency: str
    service_id: str
    seq: int
    free: int
    total: int
    as_of: int
    expires: int

    def __post_init__(self) -> None:
        if not (isinstance(self.agency, str) and AGENCY_ID_PATTERN.fullmatch(self.agency)):
            raise ValueError("agency must be an agency id")
        if not (isinstance(self.service_id, str) and _SERVICE_ID.fullmatch(self.service_id)):
            raise ValueError("service_id must be 16 lowercase hex digits")
        _int(self.seq, "seq", minimum=1)
        _int(self.total, "total", maximum=MAX_PLACES)
        _int(self.free, "free", maximum=MAX_PLACES)
        if self.free > self.total:
            raise ValueError("free must not exceed total")
        _int(self.as_of, "as_of")
        _int(self.expires, "expires")
        if not self.as_of < self.expires <= self.as_of + MAX_CAPACITY_LIFETIME:
            raise ValueError(
                f"expires must be after as_of and at most {MAX_CAPACITY_LIFETIME} s later"
            )


def sign_capacity(record: Capacity, key: SigningKey) -> bytes:
    """The signed capacity record bytes."""
    return sign_frame(CAPACITY_LABEL, record.encode(), key)


def verify_capacity(
    data: bytes,
    *,
    directory: Directory,
    catalogue: Catalogue,
    now: int,
    last_seq: int | None,
    max_skew: int = DEFAULT_LIMITS.clock_skew_seconds,
) -> Capacity:
    """Decode a signed capacity record strictly and return it if the provider of `catalogue`
    signed it for one of its services, with a `seq` above `last_seq`, not expired.

    Raises MalformedError; UnexpectedMessageError (another agency, or a service not in the
    catalogue); UnknownKeyError, RetiredKeyError, RevokedKeyError; BadSignatureError;
    RollbackError (a `seq` not above the last one); ExpiredError; UnexpectedMessageError for a
    record dated more than `max_skew` ahead (its short life must not be moved into the
    future)."""
    body, kid, signature = decode_frame(
        data,
        max_bytes=MAX_SIGNED_CAPACITY_BYTES,
        max_items=8,
        what="capacity",
        body_name="capacity",
    )
    record = Capacity.decoded(body, max_bytes=MAX_SIGNED_CAPACITY_BYTES, max_items=8)
    if record.agency != catalogue.agency or catalogue.service(record.service_id) is None:
        raise UnexpectedMessageError("capacity of a service that is not in its catalogue")
    key = directory.signing_key(record.agency, kid, at=now)
    check_signature(
        CAPACITY_LABEL, body, signature, key, failure="capacity signature does not verify"
    )
    if last_seq is not None and record.seq <= last_seq:
        raise RollbackError(f"capacity seq {record.seq} is not above {last_seq}")
    if record.expires <= now:
        raise ExpiredError("the capacity record has expired")
    if record.as_of > now + max_skew:
        raise UnexpectedMessageError("a capacity record dated in the future")
    return record


def claimed_number(data: bytes, *, capacity: bool) -> int | None:
    """The `version` a signed catalogue names (or with `capacity` the `seq` of a signed
    capacity record), unverified; None if it names none. Only for a provider reading back
    its own key of the services bucket, which no one else may write (PROTOCOL §5.1): the
    next one it signs must be numbered above it even if that one no longer verifies (it
    expired while the provider's agent was stopped, say)."""
    try:
        if capacity:
            body, _, _ = decode_frame(
                data,
                max_bytes=MAX_SIGNED_CAPACITY_BYTES,
                max_items=8,
                what="capacity",
                body_name="capacity",
            )
            number = Capacity.decoded(body, max_bytes=MAX_SIGNED_CAPACITY_BYTES, max_items=8).seq
        else:
            number = load_canonical(bytes(data), "catalogue")["signed"]["version"]
    except (UntrustedInputError, ValueError, TypeError, KeyError):
        return None
    return number if isinstance(number, int) and not isinstance(number, bool) else None


__all__: Sequence[str] = [
    "CAPACITY_LABEL",
    "LABEL",
    "Capacity",
    "Catalogue",
    "Service",
    "claimed_number",
    "encode_catalogue",
    "sign_capacity",
    "sign_catalogue",
    "verify_capacity",
    "verify_catalogue",
]
