"""A fixed set of trusted identities: the walking skeleton's stand-in for the trust directory."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nacl.signing import VerifyKey

from .envelope import Recipient
from .errors import UnknownKeyError
from .identity import PublicIdentity


@dataclass(frozen=True, slots=True)
class PeerBook:
    """Identities keyed by agency id. Implements `envelope.SignerKeys`."""

    identities: dict[str, PublicIdentity]

    @classmethod
    def of(cls, identities: Iterable[PublicIdentity]) -> PeerBook:
        book: dict[str, PublicIdentity] = {}
        for ident in identities:
            if ident.agency in book:
                raise ValueError(f"agency {ident.agency} is listed twice")
            book[ident.agency] = ident
        return cls(book)

    def signing_key(self, agency: str, kid: str, *, at: int) -> VerifyKey:
        ident = self.identities.get(agency)
        if ident is None:
            raise UnknownKeyError(f"agency {agency} is not known")
        if ident.signing_kid != kid:
            raise UnknownKeyError(f"key {kid} is not a signing key of {agency}")
        return ident.signing_key

    def recipient(self, agency: str) -> Recipient:
        ident = self.identities.get(agency)
        if ident is None:
            raise UnknownKeyError(f"agency {agency} is not known")
        return Recipient(agency=agency, key=ident.encryption_key)

    def __contains__(self, agency: object) -> bool:
        return agency in self.identities
