"""Canonical msgpack: one encoder, one strict decoder.

docs/PROTOCOL.md section 1. A value is canonical when re-encoding the decoded value gives back
exactly the input bytes (msgpack-python always picks the shortest form and `bin` for bytes).
The decoder checks the total size before it looks at a single byte, bounds every container,
and refuses maps, extension types and floats, which no NRM wire format uses.
"""

from __future__ import annotations

import array
import base64
import binascii
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import msgpack

from .errors import MalformedError, OutOfRangeError, TooDeepError


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
    except msgpack.StackError as e:  # nested deeper than msgpack's own stack allows
        raise TooDeepError(f"{what} nests too deeply") from e
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
        raise MalformedError(f"{what} is not valid msgpack: {type(e).__name__}") from e
    _check_types(value, what)
    if pack(value) != bytes(data):
        raise MalformedError(f"{what} is not canonically encoded")
    return value


@dataclass(frozen=True, slots=True)
class Record:
    """A versioned wire record `[version, member, ...]`: `fields` names the members after the
    version in wire order, once for packing and unpacking; `types`, when given, the type of
    each (an int is never a bool). `what` names it in errors."""

    what: str
    version: int
    fields: tuple[str, ...]
    types: tuple[type, ...] | None = None

    def pack(self, record: object) -> bytes:
        """The canonical `[version, record.<name> for each name]` (tuples pack as arrays)."""
        return pack([self.version, *(getattr(record, name) for name in self.fields)])

    def unpack(
        self, data: bytes, *, max_bytes: int, max_items: int | None = None
    ) -> dict[str, Any]:
        """`data` decoded strictly (unpack) as this record, the version an int (never a bool),
        as a map from the field names, or MalformedError. `max_items` bounds every array
        (default: the record's own size); member types beyond `types` are the caller's."""
        size = len(self.fields) + 1
        items = size if max_items is None else max_items
        raw = unpack(data, max_bytes=max_bytes, max_items=items, what=self.what)
        types = self.types
        if not (
            isinstance(raw, list)
            and len(raw) == size
            and type(raw[0]) is int
            and raw[0] == self.version
            and (
                types is None  # every member is the caller's to check
                or all(_is(value, kind) for value, kind in zip(raw[1:], types, strict=True))
            )
        ):
            shape = ", ".join([str(self.version), *self.fields])
            raise MalformedError(f"{self.what} must be [{shape}]")
        return dict(zip(self.fields, raw[1:], strict=True))


class Encoded:
    """A value whose wire form is its class's record `WIRE`."""

    __slots__ = ()
    WIRE: ClassVar[Record]

    def encode(self) -> bytes:
        """The canonical encoding of this value as its WIRE record."""
        return self.WIRE.pack(self)

    @classmethod
    def decoded(cls, data: bytes, *, max_bytes: int, max_items: int | None = None) -> Self:
        """`data` strictly decoded as WIRE and built into this class, whose constructor
        checks the members; MalformedError naming the first problem otherwise."""
        fields = cls.WIRE.unpack(data, max_bytes=max_bytes, max_items=max_items)
        try:
            return cls(**fields)
        except (ValueError, TypeError) as e:
            raise MalformedError(str(e)) from e


def _is(value: Any, kind: type) -> bool:
    return type(value) is int if kind is int else isinstance(value, kind)


#: The types msgpack decodes to that are allowed besides arrays (`type(v) in`: a fast path).
_SCALARS = frozenset({int, str, bytes, bool, type(None)})


def _check_types(value: Any, what: str, depth: int = 0) -> None:
    if depth > 8:
        raise TooDeepError(f"{what} nests deeper than 8 levels")
    if isinstance(value, list):
        for item in value:
            # A scalar at an allowed depth passes without a call (every verified event's
            # fields go through here three times); anything else is checked by the rules.
            if depth >= 8 or type(item) not in _SCALARS:
                _check_types(item, what, depth + 1)
    elif not isinstance(value, int | str | bytes | bool | type(None)):
        raise MalformedError(f"{what} holds a {type(value).__name__}, which is not allowed")


def to_b64(raw: bytes) -> str:
    """`raw` as standard base64 text (the form of keys and signatures in JSON files)."""
    return base64.b64encode(raw).decode("ascii")


#: Lower-case hex of 16 bytes (message, referral and event ids, key ids) and of 32 (hashes).
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def from_b64(text: Any) -> bytes:
    """The bytes of base64 text; TypeError if `text` is no string, ValueError if it is not
    strictly base64 (binascii.Error)."""
    if not isinstance(text, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(text, validate=True)


def exact_b64(text: Any, size: int, what: str) -> bytes:
    """The `size` bytes whose canonical base64 is `text` (signed files: one encoding of each
    value); ValueError naming `what` otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be base64 text")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise ValueError(f"{what} is not base64") from e
    if len(raw) != size or to_b64(raw) != text:
        raise ValueError(f"{what} must be the canonical base64 of {size} bytes")
    return raw


def canonical_json(value: Any) -> bytes:
    """The one JSON encoding that is signed or sealed (PROTOCOL.md §6.1, §7.1): keys sorted
    by code point, no insignificant whitespace, UTF-8 not escaped."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


#: A JSON string token (RFC 8259 §7), brackets inside it are not structure.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
#: Every byte but the four brackets goes; an opening bracket counts +1, a closing one -1.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(data: bytes) -> int:
    """The deepest nesting of brackets in `data`, outside strings, without parsing it: in
    C-speed passes (a regex, a translation, an accumulation), so a megabyte of `[` costs
    milliseconds and no recursion. Unbalanced input gives some number; the parser refuses it."""
    brackets = _JSON_STRING.sub(b'""', data).translate(None, _NOT_BRACKETS)
    steps = array.array("b")
    steps.frombytes(brackets.translate(_BRACKET_STEPS))
    return max(itertools.accumulate(steps), default=0)


def _refuse_number(text: str) -> Any:
    raise OutOfRangeError("a JSON body holds a float, NaN or an infinity")


def parse_json(
    data: bytes, *, max_bytes: int, max_depth: int, max_integer: int, what: str = "body"
) -> Any:
    """The one strict decoder of canonical JSON bodies (PROTOCOL.md §6.4), or raise.

    In order: size before any work (MalformedError); nesting before parsing (TooDeepError);
    UTF-8 and JSON (MalformedError); integers within ±max_integer, checked on their digits
    before any conversion, and no floats (OutOfRangeError); canonical form (§6.1,
    MalformedError). The value is parsed without recursion deeper than `max_depth`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("parse_json takes bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise MalformedError(f"{what} is {len(data)} bytes, more than the limit of {max_bytes}")
    depth = json_depth(data)
    if depth > max_depth:
        raise TooDeepError(f"{what} nests {depth} levels deep, more than {max_depth}")
    digits = len(str(max_integer))

    def integer(text: str) -> int:
        if len(text.lstrip("-")) <= digits:  # never convert thousands of digits
            number = int(text)
            if abs(number) <= max_integer:
                return number
        raise OutOfRangeError(f"{what} holds an integer beyond ±{max_integer}")

    try:
        value = json.loads(
            data.decode("utf-8"),
            parse_int=integer,
            parse_float=_refuse_number,
            parse_constant=_refuse_number,
        )
    except (UnicodeDecodeError, ValueError) as e:  # the hooks' errors are not ValueErrors
        raise MalformedError(f"{what} is not JSON") from e
    try:
        canonical = canonical_json(value)
    except UnicodeEncodeError as e:  # a lone surrogate escaped as \ud800: not UTF-8 text
        raise MalformedError(f"{what} holds a string that is not Unicode text") from e
    if canonical != data:
        raise MalformedError(f"{what} is not canonical JSON")
    return value


def _refuse_float(text: str) -> Any:
    raise ValueError("numbers other than integers are not allowed")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate member")
    return out


def load_canonical(data: bytes, what: str) -> Any:
    """Parse signed JSON `data` (no floats, no duplicate members) and refuse it unless it is
    exactly its canonical form: MalformedError naming `what` otherwise."""
    try:
        obj = json.loads(
            data.decode("utf-8"),
            parse_float=_refuse_float,
            parse_constant=_refuse_float,
            object_pairs_hook=_refuse_duplicates,
        )
        canonical = canonical_json(obj)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeError are ValueErrors
        raise MalformedError(f"{what} is not valid JSON") from e
    if canonical != data:
        raise MalformedError(f"{what} is not canonical JSON")
    return obj


def bounded_int(value: object, what: str, *, minimum: int, maximum: int) -> int:
    """`value` if it is an integer (never a bool) from `minimum` to `maximum`; ValueError
    naming `what` and the range otherwise."""
    if type(value) is not int or not minimum <= value <= maximum:
        raise ValueError(f"{what} must be an integer from {minimum} to {maximum}")
    return value


def exact_members(obj: object, names: set[str] | frozenset[str], what: str) -> dict[str, Any]:
    """`obj` if it is a JSON object with exactly the members `names`; ValueError naming `what`
    and the expected members otherwise (decoders refuse unknown and missing members alike)."""
    if not isinstance(obj, dict) or set(obj) != names:
        raise ValueError(f"{what} must have exactly the members {', '.join(sorted(names))}")
    return obj
