"""A ledger entry: the Merkle leaf the ledger appends for each verified audit event.

    leaf = canonical msgpack [1, index, appended_at, signed_event]

Putting the index inside the leaf makes every row self-locating: an entry moved, dropped
or inserted anywhere is found at its exact index by a verifier (PROTOCOL.md §9).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import codec
from .audit import MAX_SIGNED_EVENT_BYTES
from .errors import MalformedError

VERSION = 1


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    index: int
    appended_at: int
    signed_event: bytes

    def encode(self) -> bytes:
        return codec.pack([VERSION, self.index, self.appended_at, self.signed_event])

    @classmethod
    def decode(cls, data: bytes) -> LedgerEntry:
        raw = codec.unpack(
            data, max_bytes=MAX_SIGNED_EVENT_BYTES + 64, max_items=4, what="ledger entry"
        )
        if not (
            isinstance(raw, list)
            and len(raw) == 4
            and raw[0] == VERSION
            and not isinstance(raw[0], bool)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in raw[1:3])
            and isinstance(raw[3], bytes)
        ):
            raise MalformedError("ledger entry must be [1, index, appended_at, signed event]")
        return cls(index=raw[1], appended_at=raw[2], signed_event=raw[3])
