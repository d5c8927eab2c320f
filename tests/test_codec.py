"""Canonical strict msgpack (docs/PROTOCOL.md section 1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keys import MalformedError, codec
from keys.errors import OutOfRangeError, TooDeepError

VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


def test_known_encodings() -> None:
    """Values encode to the shortest msgpack form, with bin for bytes and str for text."""
    assert codec.pack([1, "a", b"a", None, True, -1, 128, 300]) == bytes.fromhex(
        "9801a161c40161c0c3ffcc80cd012c"
    )


@given(VALUES)
def test_round_trip(value: object) -> None:
    """Every allowed value decodes back to itself from its canonical encoding."""
    data = codec.pack(value)
    assert codec.unpack(data, max_bytes=len(data)) == value


@pytest.mark.parametrize(
    "data",
    [
        "cc05",  # 5 as uint8 instead of fixint
        "d000",  # 0 as int8
        "cd0001",  # 1 as uint16
        "d90161",  # "a" as str8 instead of fixstr
        "dc000101",  # [1] as array16 instead of fixarray
        "c50001ff",  # 1-byte bin as bin16
    ],
)
def test_non_canonical_refused(data: str) -> None:
    """A valid but not shortest encoding is refused as malformed."""
    with pytest.raises(MalformedError, match="canonical"):
        codec.unpack(bytes.fromhex(data), max_bytes=100)


@pytest.mark.parametrize(
    "data",
    [
        "81a16101",  # a map
        "80",  # an empty map
        "cb3ff0000000000000",  # a float64
        "ca3f800000",  # a float32
        "d40100",  # fixext1
        "c70001",  # ext8 of length 0
        "c1",  # the never-used byte
        "a2ff",  # str that is not UTF-8
        "92",  # truncated array
        "0101",  # trailing bytes
        "",  # nothing
    ],
)
def test_disallowed_or_invalid_refused(data: str) -> None:
    """Maps, floats, extension types, invalid bytes and trailing data are malformed."""
    with pytest.raises(MalformedError):
        codec.unpack(bytes.fromhex(data), max_bytes=100)


def test_size_checked_first() -> None:
    """Input over `max_bytes` is refused by its length alone."""
    with pytest.raises(MalformedError, match="limit"):
        codec.unpack(codec.pack(b"x" * 10), max_bytes=11)


def test_item_and_depth_limits() -> None:
    """Arrays longer than `max_items` and nesting deeper than 8 are malformed."""
    assert codec.unpack(codec.pack(list(range(4))), max_bytes=100, max_items=4) == [0, 1, 2, 3]
    with pytest.raises(MalformedError):
        codec.unpack(codec.pack(list(range(5))), max_bytes=100, max_items=4)
    nested: list[object] = []
    for _ in range(8):
        nested = [nested]
    assert codec.unpack(codec.pack(nested), max_bytes=100) == nested
    with pytest.raises(MalformedError, match="deeper"):
        codec.unpack(codec.pack([nested]), max_bytes=100)


def test_unpack_takes_bytes_only() -> None:
    """Passing text instead of bytes is a caller's TypeError, not untrusted input."""
    with pytest.raises(TypeError):
        codec.unpack("90", max_bytes=10)  # type: ignore[arg-type]


# --- the strict JSON body decoder (PROTOCOL.md §6.4) --------------------------------------------

JSON_LIMITS = {"max_bytes": 1 << 20, "max_depth": 16, "max_integer": (1 << 53) - 1}


@pytest.mark.parametrize(
    ("data", "depth"),
    [
        (b"1", 0),
        (b"[]", 1),
        (b'{"a":[{"b":[]}]}', 4),
        (b'["[[[[{{{{"]', 1),  # brackets inside a string are not structure
        (b'["\\"[[[["]', 1),  # nor after an escaped quote
        (b"[" * 100_000 + b"]" * 100_000, 100_000),
    ],
)
def test_json_depth_counts_structure_only(data: bytes, depth: int) -> None:
    """Nesting is measured outside strings, without parsing or recursion."""
    assert codec.json_depth(data) == depth


def test_parse_json_refuses_each_failure_with_its_own_class() -> None:
    """Too deep (before parsing), numbers out of range (on their digits), not JSON and not
    canonical are told apart; a canonical object within the limits comes back."""
    assert codec.parse_json(b'{"a":[1,-2]}', **JSON_LIMITS) == {"a": [1, -2]}
    assert codec.parse_json(b"[9007199254740991]", **JSON_LIMITS) == [2**53 - 1]
    with pytest.raises(TooDeepError):
        codec.parse_json(b"[" * 17 + b"]" * 17, **JSON_LIMITS)
    with pytest.raises(TooDeepError):
        codec.parse_json(b"[" * 100_000, **JSON_LIMITS)  # not even balanced: never parsed
    for number in (b"9007199254740992", b"-" + b"9" * 5000, b"1.5", b"1e3", b"NaN", b"-Infinity"):
        with pytest.raises(OutOfRangeError):
            codec.parse_json(b"[" + number + b"]", **JSON_LIMITS)
    for bad in (b"\xff", b"{", b'{ "a":1}', b'{"b":1,"a":2}', b'["\\ud800"]', b"x" * (1 << 21)):
        with pytest.raises(MalformedError) as refused:
            codec.parse_json(bad, **JSON_LIMITS)
        assert type(refused.value) is MalformedError
