"""A ledger entry: the Merkle leaf the ledger appends for each verified audit event.

    leaf = canonical msgpack [1, index, appended_at, signed_event]

Putting the index inside the leaf makes every row self-locating: an entry moved, dropped
or inserted anywhere is found at its exact index by a verifier (PROTOCOL.md §9).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import codec
from .audit import MAX_SIGNED_EVENT_BYTES
from .errors import MalformedError

VERSION = 1


@dataclass(frozen=True, slots=True)
class LedgerEntry(codec.Encoded):
    WIRE: ClassVar[codec.Record] = codec.Record(
        "ledger entry", VERSION, ("index", "appended_at", "signed_event"), (int, int, bytes)
    )

    index: int
    appended_at: int
    signed_event: bytes

    @classmethod
    def decode(cls, data: bytes) -> LedgerEntry:
        fields = cls.WIRE.unpack(data, max_bytes=MAX_SIGNED_EVENT_BYTES + 64)
        if fields["index"] < 0 or fields["appended_at"] < 0:
            raise MalformedError("ledger entry index and appended_at must not be negative")
        return cls(**fields)
