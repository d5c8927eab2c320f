"""Canonical msgpack: one encoder, one strict decoder.

docs/PROTOCOL.md section 1. A value is canonical when re-encoding the decoded value gives back
exactly the input bytes (msgpack-python always picks the shortest form and `bin` for bytes).
The decoder checks the total size before it looks at a single byte, bounds every container,
and refuses maps, extension types and floats, which no NRM wire format uses.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

from .errors import MalformedError


def pack(value: Any) -> bytes:
    """The canonical encoding of `value` (arrays, ints, str, bytes, bool, None only)."""
    out: bytes = msgpack.packb(value, use_bin_type=True)
    return out


def unpack(data: bytes, *, max_bytes: int, max_items: int = 256, what: str = "value") -> Any:
    """Decode `data` strictly, or raise MalformedError naming `what` was wrong."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("unpack takes bytes")
    if len(data) > max_bytes:
        raise MalformedError(f"{what} is {len(data)} bytes, more than the limit of {max_bytes}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_array_len=max_items,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise MalformedError(f"{what} is not valid msgpack: {type(e).__name__}") from e
    _check_types(value, what)
    if pack(value) != bytes(data):
        raise MalformedError(f"{what} is not canonically encoded")
    return value


def _check_types(value: Any, what: str, depth: int = 0) -> None:
    if depth > 8:
        raise MalformedError(f"{what} nests deeper than 8 levels")
    if isinstance(value, list):
        for item in value:
            _check_types(item, what, depth + 1)
    elif not isinstance(value, int | str | bytes | bool | type(None)):
        raise MalformedError(f"{what} holds a {type(value).__name__}, which is not allowed")


def canonical_json(value: Any) -> bytes:
    """The one JSON encoding that is signed or sealed (PROTOCOL.md §6.1, §7.1): keys sorted
    by code point, no insignificant whitespace, UTF-8 not escaped."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
