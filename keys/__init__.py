"""The cryptographic and trust core of NRM Exchange. Pure and small; no network."""

from . import codec
from .envelope import (
    Header,
    Opened,
    Recipient,
    Sealed,
    SignerKeys,
    envelope_hash,
    new_message_id,
    open_envelope,
    seal,
    verify_outer,
)
from .errors import (
    BadSignatureError,
    DecryptionError,
    ExpiredError,
    KeyFileError,
    KeyFileExistsError,
    MalformedError,
    NotAddressedToMeError,
    NrmError,
    ReplayedError,
    RetiredKeyError,
    RevokedKeyError,
    UnexpectedMessageError,
    UnknownKeyError,
    UntrustedInputError,
)
from .identity import AgencyKeys, PublicIdentity, check_agency_id
from .limits import DEFAULT_LIMITS, Limits
from .peers import PeerBook

__all__ = [
    "DEFAULT_LIMITS",
    "AgencyKeys",
    "BadSignatureError",
    "DecryptionError",
    "ExpiredError",
    "Header",
    "KeyFileError",
    "KeyFileExistsError",
    "Limits",
    "MalformedError",
    "NotAddressedToMeError",
    "NrmError",
    "Opened",
    "PeerBook",
    "PublicIdentity",
    "Recipient",
    "ReplayedError",
    "RetiredKeyError",
    "RevokedKeyError",
    "Sealed",
    "SignerKeys",
    "UnexpectedMessageError",
    "UnknownKeyError",
    "UntrustedInputError",
    "check_agency_id",
    "codec",
    "envelope_hash",
    "new_message_id",
    "open_envelope",
    "seal",
    "verify_outer",
]
