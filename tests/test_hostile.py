"""Hostile input (issue 6, item 3): fuzzed decoders and validators, size limits before any
parsing work, fuzzed HTTP endpoints, and a participant with valid bus credentials sending
forged, re-addressed, replayed, expired and revoked-key envelopes.

Schemathesis against the OpenAPI documents is in tests/test_schemathesis.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import hypothesis
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from structlog.testing import capture_logs

from agents import consent as consent_module
from agents import referral as referral_schema
from agents.consent import ConsentInvalid, parse_receipt
from agents.referral import ReferralInvalid, validate_referral
from keys import (
    AgencyKeys,
    MalformedError,
    UntrustedInputError,
    codec,
    envelope_hash,
    open_envelope,
    verify_outer,
)
from keys.audit import AuditEvent, decode_signed_event, new_event_id, sign_event
from keys.codec import canonical_json
from keys.directory import read_unverified_directory, verify_directory
from keys.envelope import _outer_message
from keys.ledger_entry import LedgerEntry
from keys.subjects import inbox_subject
from nrm import admin

from . import samples
from .support import TEST_LIMITS, Mechanism, agency_keys, eventually, running_mechanism, sealed
from .test_agent import connect_as, delivered, rows, sent_envelope
from .test_directory import SIGNED_V3, TRUSTED_ROOT, fresh_store, snapshot
from .test_envelope import BOOK, ENVELOPE, POLICE, SHELTER, T0

MB = 1 << 20
#: No single decode or validation may take longer than this (a hang shows up as a failure).
BOUND_SECONDS = 2.0
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
)


def bounded(call: Callable[[], Any], allowed: tuple[type[BaseException], ...]) -> Any:
    """Run `call`; it may succeed or raise one of `allowed`, within BOUND_SECONDS."""
    start = time.perf_counter()
    try:
        return call()
    except allowed as e:
        return e
    finally:
        elapsed = time.perf_counter() - start
        assert elapsed < BOUND_SECONDS, f"took {elapsed:.2f}s"


# --------------------------------------------------------------------------- strategies

MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=40)
    | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=8),
    max_leaves=30,
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=15), inner, max_size=5)
    ),
    max_leaves=25,
)


@st.composite
def byte_mutation(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` with a few bytes flipped, inserted, deleted, or the tail cut off."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "splice":
            data[pos : pos + 5] = draw(
                st.sampled_from(
                    [
                        b"\xdd\xff\xff\xff\xff",
                        b"\xdb\xff\xff\xff\xff",
                        b"\xc6\xff\xff\xff\xff",
                        b"\xdf\x00\x00\x00\x01",
                        b"\xcb" + bytes(8),
                    ]
                )
            )
        else:
            del data[pos:]
    return bytes(data)


def garbage(
    valid: bytes, max_size: int, *crafted: st.SearchStrategy[bytes]
) -> st.SearchStrategy[bytes]:
    """Random bytes, byte mutations of `valid`, or one of `crafted`, each kind as likely."""
    return st.one_of(st.binary(max_size=max_size), byte_mutation(valid), *crafted)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into nested lists and dicts, the root included."""
    found = [prefix]
    if isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*prefix, i))
    elif isinstance(value, dict):
        for k, item in value.items():
            found += _paths(item, (*prefix, k))
    return found


@st.composite
def structural_mutation(draw: st.DrawFn, original: Any, values: st.SearchStrategy[Any]) -> Any:
    """A deep copy of `original` with one to three nodes replaced, removed or added to."""
    doc = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        if not path:
            doc = draw(values)
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(values)
        else:
            parent.append(draw(values))
    return doc


# --------------------------------------------------------------------------- 1. decoders


SHELTER_KEYS = {SHELTER.public.encryption_kid: SHELTER.encryption_key}
ENVELOPE_TREE = codec.unpack(ENVELOPE, max_bytes=MB, max_items=32)
ENVELOPE_TREE[1] = codec.unpack(ENVELOPE_TREE[1], max_bytes=8192, max_items=32)


def _resign(data: bytes) -> bytes:
    """Replace the outer signature by police's real one, so mutations get past it."""
    if len(data) < 66 or data[-66:-64] != b"\xc4\x40":
        return data
    signed = data[:-66]
    return signed + b"\xc4\x40" + POLICE.signing_key.sign(_outer_message(signed)).signature


@st.composite
def _resigned_leaf(draw: st.DrawFn) -> bytes:
    """A valid envelope with one field changed, same type, re-signed: reaches the crypto checks."""
    tree = copy.deepcopy(ENVELOPE_TREE)
    path = draw(st.sampled_from([p for p in _paths(tree) if p and p != (5,)]))
    parent = tree
    for step in path[:-1]:
        parent = parent[step]
    old = parent[path[-1]]
    if isinstance(old, bytes):
        new: Any = draw(st.binary(min_size=len(old), max_size=len(old)) | st.binary())
    elif isinstance(old, str):
        new = draw(st.text(max_size=40) | st.sampled_from(["shelter", "police", "a" * 32]))
    elif isinstance(old, int):
        new = draw(st.integers(0, 2**63 - 1) | st.sampled_from([0, T0, T0 + 10**9]))
    else:
        new = draw(MSGPACK_VALUES)
    parent[path[-1]] = new
    tree[1] = codec.pack(tree[1])
    return _resign(codec.pack(tree))


@st.composite
def _mutated_envelope(draw: st.DrawFn) -> bytes:
    """A re-encoded structural mutation (header included), re-signed half the time."""
    tree = draw(structural_mutation(ENVELOPE_TREE, MSGPACK_VALUES))
    if isinstance(tree, list) and len(tree) > 1 and isinstance(tree[1], list):
        try:
            tree[1] = codec.pack(tree[1])
        except (ValueError, TypeError, OverflowError):
            tree[1] = b""
    try:
        data = codec.pack(tree)
    except (ValueError, TypeError, OverflowError):
        return b""
    return _resign(data) if draw(st.booleans()) else data


#: Random bytes, mutated valid envelopes, random msgpack, structural mutations, and (a third
#: of the draws: it stands twice) re-signed one-field changes.
ENVELOPES = garbage(
    ENVELOPE,
    2048,
    MSGPACK_VALUES.map(codec.pack),
    _mutated_envelope(),
    _resigned_leaf(),
    _resigned_leaf(),
)


def _with_short_ciphertext(tree: list[Any], signer: SigningKey) -> bytes:
    """The envelope `tree` (header decoded) with a 15-byte ciphertext, outer re-signed."""
    tree = copy.deepcopy(tree)
    tree[1] = codec.pack(tree[1])
    tree[4] = b"\x01" * 15
    signed = codec.pack(tree)[:-66]
    return signed + b"\xc4\x40" + signer.sign(_outer_message(signed)).signature


def test_envelope_with_ciphertext_shorter_than_the_tag_is_untrusted_input() -> None:
    """A correctly signed envelope whose ciphertext is shorter than the AEAD tag is refused
    with an UntrustedInputError."""
    data = _with_short_ciphertext(ENVELOPE_TREE, POLICE.signing_key)
    with pytest.raises(UntrustedInputError):
        open_envelope(data, me="shelter", decryption_keys=SHELTER_KEYS, signers=BOOK, now=T0 + 60)


@FUZZ
@given(ENVELOPES)
def test_envelope_decoder_refuses_garbage_with_untrusted_input_errors(data: bytes) -> None:
    """The envelope decoder (open_envelope, verify_outer) answers any input within bounded
    time, and fails only with UntrustedInputError subclasses."""
    for call in (
        lambda: open_envelope(
            data, me="shelter", decryption_keys=SHELTER_KEYS, signers=BOOK, now=T0 + 60
        ),
        lambda: verify_outer(data, signers=BOOK),
    ):
        bounded(call, (UntrustedInputError,))


@st.composite
def _mutated_directory(draw: st.DrawFn) -> bytes:
    tree = draw(structural_mutation(json.loads(SIGNED_V3), JSON_VALUES))
    return json.dumps(tree, separators=(",", ":"), sort_keys=draw(st.booleans())).encode()


#: Random bytes, mutated signed directories, random JSON and mutated JSON documents.
DIRECTORIES = garbage(
    SIGNED_V3, 2048, JSON_VALUES.map(lambda v: json.dumps(v).encode()), _mutated_directory()
)


@FUZZ
@given(DIRECTORIES)
def test_directory_loader_refuses_garbage_and_keeps_trusted_state(data: bytes) -> None:
    """The directory loader (read_unverified_directory, verify_directory,
    TrustStore.update_directory) fails only with UntrustedInputError, in bounded time, and a
    refused update leaves the trusted state exactly as it was."""
    bounded(lambda: read_unverified_directory(data), (UntrustedInputError,))
    bounded(
        lambda: verify_directory(TRUSTED_ROOT, data, now=T0, current=None), (UntrustedInputError,)
    )
    store = fresh_store()
    before = snapshot(store)
    result = bounded(lambda: store.update_directory(data, T0), (UntrustedInputError,))
    if isinstance(result, UntrustedInputError):
        assert snapshot(store) == before


AUDIT_KEY = SigningKey(b"\x05" * 32)
VALID_EVENT = sign_event(
    AuditEvent(
        event_id=new_event_id(),
        agency="shelter",
        kind="message.rejected",
        time=T0,
        envelope_hash="ab" * 32,
        reason="malformed",
    ),
    AUDIT_KEY,
)
EVENT_TREE = codec.unpack(VALID_EVENT, max_bytes=4096, max_items=16)
EVENT_TREE[1] = codec.unpack(EVENT_TREE[1], max_bytes=4096, max_items=16)


@st.composite
def _mutated_event(draw: st.DrawFn) -> bytes:
    tree = draw(structural_mutation(EVENT_TREE, MSGPACK_VALUES))
    try:
        if isinstance(tree, list) and len(tree) > 1 and isinstance(tree[1], list):
            tree[1] = codec.pack(tree[1])
        return codec.pack(tree)
    except (ValueError, TypeError, OverflowError):
        return b""


SIGNED_EVENTS = garbage(VALID_EVENT, 3000, MSGPACK_VALUES.map(codec.pack), _mutated_event())


@FUZZ
@given(SIGNED_EVENTS)
def test_audit_event_decoder_refuses_garbage_as_malformed(data: bytes) -> None:
    """decode_signed_event fails only with MalformedError, in bounded time."""
    bounded(lambda: decode_signed_event(data), (MalformedError,))


EXAMPLES = Path(__file__).parent.parent / "agents" / "schemas" / "examples" / "valid"


def _example(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    doc.pop("$comment", None)
    return dict(doc)


VALID_REFERRALS = [_example(p) for p in sorted(EXAMPLES.glob("*.json"))]
REFERRAL_KEYS = sorted({k for d in VALID_REFERRALS for k in d} | set(VALID_REFERRALS[0]["body"]))


@st.composite
def referral_documents(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        keys = st.sampled_from(REFERRAL_KEYS) | st.text(max_size=12)
        return draw(st.dictionaries(keys, JSON_VALUES, max_size=10))
    return draw(structural_mutation(draw(st.sampled_from(VALID_REFERRALS)), JSON_VALUES))


@FUZZ
@given(referral_documents())
def test_referral_validator_answers_valid_or_referral_invalid(doc: Any) -> None:
    """validate_referral on random and mutated documents either accepts or raises
    ReferralInvalid, in bounded time, and never changes the caller's document."""
    before = copy.deepcopy(doc)
    bounded(lambda: validate_referral(doc), (ReferralInvalid,))
    assert doc == before


#: Values close to what the schema allows: edge cases of the JSON types it checks.
NEAR_VALUES = (
    st.sampled_from([0, 1, -1, 1.0, 0.5, True, False, None, "", "x" * 300])
    | st.builds(list)  # fresh containers: a mutation may later add to them
    | st.builds(dict)
    | st.builds(lambda: [1, True])
    | st.sampled_from(["2026-02-30", "2026-13-01", "2026-01-01", "2026-01-01T00:00:00Z"])
    | st.sampled_from(["2026-01-01T24:00:00Z", "2026-01-01 00:00:00Z", "20260101", "2026-W01-1"])
    | st.sampled_from(["a" * 32, "A" * 32, "g" * 32, "urgent", "routine", "police", "shelter"])
    | st.text(max_size=12)
    | st.lists(st.sampled_from(["a", "a", "b", 1, True]), max_size=4)
)


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.sampled_from(VALID_REFERRALS).flatmap(lambda d: structural_mutation(d, NEAR_VALUES)))
def test_compiled_referral_schema_never_accepts_what_the_reference_refuses(doc: Any) -> None:
    """The compiled fast path (fastjsonschema) decides alone only when it accepts; that must
    never be a document the reference validator (jsonschema, Draft 2020-12) refuses, for
    either schema version."""
    for version in referral_schema.SCHEMA_VERSIONS:
        check = referral_schema._check(version)
        if check.accepts(copy.deepcopy(doc)):
            assert list(check.reference.iter_errors(doc)) == []


@pytest.mark.parametrize("path", sorted((EXAMPLES.parent / "invalid").glob("*.json")), ids=str)
def test_compiled_referral_schema_refuses_every_invalid_example(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.pop("$comment"), doc.pop("$expect", None)
    for version in referral_schema.SCHEMA_VERSIONS:
        check = referral_schema._check(version)
        if list(check.reference.iter_errors(doc)):  # invalid by the schema itself
            assert not check.accepts(doc)


VALID_CONSENT = samples.consent(str(uuid.uuid4()))


@st.composite
def consent_documents(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        keys = st.sampled_from(sorted(VALID_CONSENT)) | st.text(max_size=12)
        return draw(st.dictionaries(keys, JSON_VALUES, max_size=10))
    return draw(structural_mutation(VALID_CONSENT, JSON_VALUES))


@FUZZ
@given(consent_documents())
def test_consent_parser_answers_receipt_or_consent_invalid(doc: Any) -> None:
    """parse_receipt on random and mutated receipts either accepts or raises ConsentInvalid,
    in bounded time."""
    bounded(lambda: parse_receipt(doc), (ConsentInvalid,))


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(structural_mutation(VALID_CONSENT, NEAR_VALUES))
def test_compiled_consent_schema_never_accepts_what_the_reference_refuses(doc: Any) -> None:
    check = consent_module._check()
    if check.accepts(copy.deepcopy(doc)):
        assert list(check.reference.iter_errors(doc)) == []


# --------------------------------------------------------------------------- 2. size limits


BOMBS = {
    "depth bomb (100000 nested arrays)": b"\x91" * 100_000 + b"\xc0",
    "array32 header of 2^32-1 items": b"\xdd\xff\xff\xff\xff",
    "map32 header of 2^32-1 pairs": b"\xdf\xff\xff\xff\xff",
    "str32 header of 4 GB": b"\xdb\xff\xff\xff\xff",
    "bin32 header of 4 GB": b"\xc6\xff\xff\xff\xff",
    "envelope array whose header is an array32 bomb": b"\x96\x01\xc4\x05\xdd\xff\xff\xff\xff",
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_msgpack_bombs_are_malformed_quickly(name: str) -> None:
    """A msgpack depth bomb or a huge container/length header is refused as MalformedError
    by keys.codec.unpack and by open_envelope, in well under a second."""
    data = BOMBS[name]
    for call in (
        lambda: codec.unpack(data, max_bytes=MB),
        lambda: open_envelope(
            data, me="shelter", decryption_keys=SHELTER_KEYS, signers=BOOK, now=T0
        ),
        lambda: decode_signed_event(data),
    ):
        start = time.perf_counter()
        with pytest.raises(MalformedError):
            call()
        assert time.perf_counter() - start < 0.5


def test_100_mb_inputs_are_refused_by_size_before_decoding() -> None:
    """A 100 MB envelope, signed event or directory is refused by its size, before a byte is
    decoded: quickly, and with a message naming the limit."""
    huge = b"\x96" + b"\xc0" * (100 * MB)
    for call in (
        lambda: open_envelope(
            huge, me="shelter", decryption_keys=SHELTER_KEYS, signers=BOOK, now=T0
        ),
        lambda: verify_outer(huge, signers=BOOK),
        lambda: decode_signed_event(huge),
        lambda: read_unverified_directory(huge),
    ):
        start = time.perf_counter()
        with pytest.raises(MalformedError, match=r"limit|more than"):
            call()
        assert time.perf_counter() - start < 0.1


def _rss() -> int:
    """This process's resident set size in bytes (the agents run in-process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


COUNTED = ("outbox", "referrals", "history", "consents", "consent_uses", "idempotency", "data_keys")


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # noqa: S608
            for t in COUNTED
        }


async def test_100_mb_request_body_is_refused_413_without_being_read(mechanism: Mechanism) -> None:
    """A 100 MB POST /v1/referrals is answered 413 problem+json fast, long before the body
    has been sent, and the agent's memory does not grow by anything like its size."""
    m = mechanism
    agent = m.agents["police"]
    db = m.database("police")
    before_rows = counts(db)
    size = 100 * MB
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.api_port)
    writer.write(
        (
            "POST /v1/referrals HTTP/1.1\r\nHost: agent\r\n"
            f"Authorization: Bearer {m.setups['police'].token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        ).encode()
    )
    chunk = b" " * (256 * 1024)
    sent = 0
    rss_before = peak = _rss()

    async def pump() -> None:
        nonlocal sent, peak
        try:
            while sent < size:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                peak = max(peak, _rss())
        except (ConnectionError, OSError):
            return

    start = time.monotonic()
    pumping = asyncio.create_task(pump())
    status_line = await asyncio.wait_for(reader.readline(), 15)
    elapsed = time.monotonic() - start
    sent_at_answer = sent
    peak = max(peak, _rss())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += await asyncio.wait_for(reader.readline(), 5)
    pumping.cancel()
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
    assert status_line.split()[1] == b"413", status_line
    assert b"content-type: application/problem+json" in head.lower()
    assert elapsed < 3.0, f"413 took {elapsed:.2f}s"
    assert sent_at_answer < size // 4, f"{sent_at_answer} bytes were sent before the answer"
    assert peak - rss_before < 40 * MB, f"RSS grew by {(peak - rss_before) / MB:.0f} MB"
    assert counts(db) == before_rows


# --------------------------------------------------------------------------- 3. HTTP fuzzing


QUERY_NAMES = [
    "limit",
    "cursor",
    "since",
    "state",
    "format",
    "q",
    "size",
    "start",
    "end",
    "first",
    "second",
]
QUERY_VALUES = (
    st.text(max_size=30)
    | st.integers(-(2**70), 2**70).map(str)
    | st.sampled_from(["", "0", "1", "500", "501", "-1", "1e3", "0x10", "9" * 5000, "%00", "١٢"])
)
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
).map(str.strip)
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=latin-1",
    "text/plain",
    "application/problem+json",
    "image/png",
    "application/pdf",
    "multipart/form-data; boundary=x",
    "",
]


@st.composite
def bodies(draw: st.DrawFn) -> bytes | None:
    choice = draw(st.sampled_from(["none", "json", "referral", "consent", "transition", "bytes"]))
    if choice == "none":
        return None
    if choice == "bytes":
        return draw(st.binary(max_size=600))
    if choice == "json":
        doc: Any = draw(JSON_VALUES)
    elif choice == "referral":
        doc = draw(
            structural_mutation(
                {"recipients": ["shelter"], "referral": samples.referral()}, JSON_VALUES
            )
        )
    elif choice == "consent":
        doc = draw(structural_mutation(samples.consent(str(uuid.uuid4())), JSON_VALUES))
    else:
        doc = draw(
            structural_mutation({"to": "acknowledged", "counterpart": "shelter"}, JSON_VALUES)
        )
    return json.dumps(doc).encode()


@st.composite
def requests_for(
    draw: st.DrawFn, routes: list[tuple[str, str]], ids: dict[str, str]
) -> dict[str, Any]:
    method, template = draw(st.sampled_from(routes))
    path = template
    for name, real in ids.items():
        if "{" + name + "}" in path:
            value = draw(
                st.just(real)
                | st.text(max_size=40)
                | st.sampled_from(["..", "%2e%2e", "0", "-1", "9" * 300, real + "'", "x" * 5000])
            )
            path = path.replace("{" + name + "}", quote(value, safe="") or "x")
    headers: dict[str, str] = {}
    auth = draw(st.sampled_from(["valid", "valid", "valid", "none", "garbage"]))
    if auth == "valid":
        headers["Authorization"] = "Bearer {token}"
    elif auth == "garbage":
        headers["Authorization"] = draw(HEADER_TEXT)
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(CONTENT_TYPES) | HEADER_TEXT)
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(HEADER_TEXT)
    return {
        "method": method,
        "path": path,
        "params": draw(
            st.dictionaries(
                st.sampled_from(QUERY_NAMES) | st.text(max_size=8), QUERY_VALUES, max_size=4
            )
        ),
        "headers": headers,
        "body": draw(bodies()) if method == "POST" else None,
    }


AGENT_ROUTES = [
    ("POST", "/v1/referrals"),
    ("POST", "/v1/referrals/{rid}/transitions"),
    ("POST", "/v1/consents"),
    ("POST", "/v1/consents/{cid}/withdraw"),
    ("POST", "/v1/attachments"),
    ("GET", "/v1/referrals"),
    ("GET", "/v1/referrals/{rid}"),
    ("GET", "/v1/referrals/{rid}/history"),
    ("GET", "/v1/referrals/{rid}/attachments/{aid}"),
    ("GET", "/v1/inbox"),
    ("GET", "/v1/consents/{cid}"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/openapi.json"),
]
LEDGER_ROUTES = [
    ("GET", "/v1/checkpoint"),
    ("GET", "/v1/checkpoints"),
    ("GET", "/v1/entries"),
    ("GET", "/v1/entries/{index}/proof"),
    ("GET", "/v1/events"),
    ("GET", "/v1/events/{event_id}"),
    ("GET", "/v1/proof/consistency"),
    ("GET", "/v1/referrals/{rid}/timeline"),
    ("GET", "/v1/directories"),
    ("GET", "/v1/stats"),
]


def fuzz_http(
    base: str,
    token: str,
    routes: list[tuple[str, str]],
    ids: dict[str, str],
    db: Path | None,
    examples: int,
) -> list[str]:
    """Send generated requests; the failures found (5xx, non-problem errors, writes on a
    refusal), one line each."""
    session = requests.Session()
    failures: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[hypothesis.Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(requests_for(routes, ids))
    def run(req: dict[str, Any]) -> None:
        headers = {k: v.replace("{token}", token) for k, v in req["headers"].items()}
        url = requests.Request("GET", base + req["path"], params=req["params"]).prepare().url
        # Request lines over aiohttp's 8190-byte limit: test_oversized_request_line_*.
        hypothesis.assume(url is not None and len(url) < 8000)
        before = None if db is None else counts(db)
        r = session.request(
            req["method"],
            base + req["path"],
            params=req["params"],
            headers=headers,
            data=req["body"],
            timeout=10,
        )
        what = (
            f"{req['method']} {req['path'][:80]} {req['params']!r:.80}"
            f" {req['headers']!r:.200} body={(req['body'] or b'')[:60]!r} -> {r.status_code}"
        )
        if r.status_code >= 500:
            failures.append(f"5xx: {what}: {r.text[:200]}")
        if r.status_code >= 400:
            ctype = r.headers.get("Content-Type", "").split(";")[0].strip()
            if ctype != "application/problem+json":
                failures.append(f"not problem+json ({ctype}): {what}")
            else:
                doc = r.json()
                if doc.get("status") != r.status_code or not doc.get("title"):
                    failures.append(f"bad problem document: {what}: {doc}")
        if db is not None and not 200 <= r.status_code < 300:
            after = counts(db)
            if after != before:
                failures.append(f"rows written on a refusal: {what}: {before} -> {after}")

    run()
    return failures


async def test_agent_endpoints_survive_fuzzed_requests(mechanism: Mechanism) -> None:
    """Generated bodies, headers, query strings and path ids for every agent route never
    get a 5xx, every error is problem+json, and a refusal writes no row."""
    m = mechanism
    police = m.api("police")
    consent_id = str(uuid.uuid4())
    status, body, _ = await police.call("POST", "/v1/consents", json=samples.consent(consent_id))
    assert status == 201, body
    rid = await police.refer(["shelter"], samples.referral())
    await delivered(m, "police", rid)
    failures: list[str] = []
    for agency in ("police", "shelter"):
        api = m.api(agency)
        failures += await asyncio.to_thread(
            fuzz_http,
            api.base,
            api.token,
            AGENT_ROUTES,
            {"rid": rid, "cid": consent_id, "aid": "0" * 32},
            m.database(agency),
            150,
        )
    assert not failures, "\n".join(failures[:20])


async def test_ledger_endpoints_survive_fuzzed_requests(ledger_with_data: Any) -> None:
    """Generated query strings, headers and path ids for every ledger GET route never get a
    5xx, and every error is problem+json."""
    ledger = ledger_with_data
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            ledger.url + "/v1/events?limit=1",
            headers={"Authorization": f"Bearer {ledger.token}"},
        ) as r,
    ):
        event_id = (await r.json())["items"][0]["event_id"]
    failures = await asyncio.to_thread(
        fuzz_http,
        ledger.url,
        ledger.token,
        LEDGER_ROUTES,
        {"index": "0", "event_id": event_id, "rid": "0" * 32},
        None,
        150,
    )
    assert not failures, "\n".join(failures[:20])


async def test_405_names_the_allowed_methods_and_huge_integers_are_a_named_400(
    mechanism: Mechanism,
) -> None:
    """Agent and ledger: a method a route does not take is 405 problem+json with `Allow`
    (RFC 9110 §15.5.6); a JSON body integer beyond ±(2^53 - 1), up to one of 5000 digits
    (which Python's int() refuses outright), is a 400 problem naming the I-JSON limit."""
    m = mechanism
    ledger = m.sandbox.ledger
    assert ledger is not None
    agent = (m.api("police").base, m.setups["police"].token)
    led = (ledger.url, m.sandbox.auditor_token)
    for (base, token), method, path, allowed in (
        (agent, "DELETE", "/v1/inbox", {"GET"}),
        (agent, "PUT", "/v1/referrals", {"GET", "POST"}),
        (led, "POST", "/v1/checkpoint", {"GET"}),
        (led, "GET", "/v1/proofs", {"POST"}),
    ):
        auth = {"Authorization": f"Bearer {token}"}
        async with m.http.request(method, base + path, headers=auth) as r:
            assert r.status == 405 and r.content_type == "application/problem+json", path
            assert {x.strip() for x in r.headers["Allow"].split(",")} - {"HEAD"} == allowed
            assert (await r.json())["status"] == 405
    limit = (1 << 53) - 1
    for (base, token), path, template in (
        (agent, "/v1/referrals", '{"recipients": ["shelter"], "referral": {"n": %s}}'),
        (agent, "/v1/consents", '{"consent_id": %s}'),
        (led, "/v1/proofs", '{"size": %s, "event_ids": []}'),
    ):
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for number in ("9" * 5000, "-" + "9" * 5000, str(limit + 1), str(-limit - 1)):
            body = (template % number).encode()
            async with m.http.post(base + path, data=body, headers=headers) as r:
                assert r.status == 400, (path, number[:20], r.status)
                assert r.content_type == "application/problem+json"
                assert "2^53" in (await r.json())["detail"], path
        # At the limit the number parses; what follows refuses it for its own reason.
        async with m.http.post(base + path, data=(template % limit).encode(), headers=headers) as r:
            assert r.status in (400, 404, 422) and "2^53" not in (await r.json())["detail"], path


OVERSIZED = {
    "request line over 8190 bytes": ("/v1/inbox?cursor=" + "9" * 9000, {}, "request line"),
    "header field over 8190 bytes": ("/v1/inbox", {"Idempotency-Key": "k" * 9000}, "header"),
    "over 128 header fields": (
        "/v1/inbox",
        {f"X-Extra-{i}": "9" for i in range(128)},
        "too many header fields",
    ),
}


@pytest.mark.parametrize("case", list(OVERSIZED))
async def test_oversized_request_line_or_header_is_problem_json(
    mechanism: Mechanism, case: str
) -> None:
    """A request line or header field beyond the HTTP parser's limit, or more header fields
    than it takes, is refused 400 as problem+json naming what was too long by the agent and
    by the ledger, like every other error, quoting nothing of the request."""
    m = mechanism
    ledger = m.sandbox.ledger
    assert ledger is not None
    path, headers, named = OVERSIZED[case]
    for base, token in (
        (m.api("police").base, m.setups["police"].token),
        (ledger.url, m.sandbox.auditor_token),
    ):
        async with m.http.get(
            base + path, headers={"Authorization": f"Bearer {token}", **headers}
        ) as r:
            assert r.status == 400, (base, r.status)
            assert r.content_type == "application/problem+json", (base, r.status)
            body = await r.json()
            assert body["status"] == 400 and named in body["detail"], body
            assert "999" not in body["detail"] and "kkk" not in body["detail"]


# --------------------------------------------------------------------------- 4. hostile bus


@pytest.fixture
async def strict(tmp_path: Path) -> AsyncIterator[Mechanism]:
    """The three-agency mechanism, with a one-second unknown-key grace (so a forged kid is
    refused for good quickly) and a one-second clock skew (so an envelope can be expired
    while its signing key is still valid: the keys here are seconds old)."""
    limits = {**TEST_LIMITS, "unknown_key_grace_seconds": 1, "clock_skew_seconds": 1}
    async with running_mechanism(tmp_path, limits=limits) as m:
        yield m


def _sealed_to_shelter(
    m: Mechanism, sender: AgencyKeys, *, created: int, expires: int, body: bytes | None = None
) -> bytes:
    body = json.dumps({"hostile": True}).encode() if body is None else body
    return sealed(m, sender, "shelter", "referral", body, created=created, expires=expires)


def _readdressed(m: Mechanism, data: bytes, attacker: SigningKey) -> bytes:
    """`data` (sealed by police to the co-ordinator) with its header re-addressed to the
    shelter, and the outer signature redone by `attacker` (police's kid left in place)."""
    directory = m.agents["shelter"].trust.directory
    assert directory is not None
    top = codec.unpack(data, max_bytes=MB, max_items=32)
    header = codec.unpack(top[1], max_bytes=8192, max_items=32)
    header[4] = ["shelter"]
    header[6] = [directory.recipient("shelter", at=int(time.time())).kid]
    top[1] = codec.pack(header)
    unsigned = codec.pack(top)
    signed = unsigned[:-66]
    return signed + b"\xc4\x40" + attacker.sign(_outer_message(signed)).signature


async def _rejections_in_ledger(m: Mechanism, reason: str) -> set[str]:
    """Envelope hashes of the shelter's message.rejected events with `reason`, found by
    searching the ledger's API with the auditor token."""
    ledger = m.sandbox.ledger
    assert ledger is not None
    auth = {"Authorization": f"Bearer {m.sandbox.auditor_token}"}
    hashes = set()
    async with m.http.get(
        f"{ledger.url}/v1/events", params={"q": reason, "limit": "500"}, headers=auth
    ) as r:
        assert r.status == 200
        items = (await r.json())["items"]
    for item in items:
        if (item["kind"], item["agency"], item["reason"]) != (
            "message.rejected",
            "shelter",
            reason,
        ):
            continue
        async with m.http.get(f"{ledger.url}/v1/events/{item['event_id']}", headers=auth) as r:
            leaf = base64.b64decode((await r.json())["leaf"])
        event = decode_signed_event(LedgerEntry.decode(leaf).signed_event)[0]
        assert event.envelope_hash is not None
        hashes.add(event.envelope_hash)
    return hashes


async def test_hostile_participant_envelopes_are_rejected_and_recorded(strict: Mechanism) -> None:
    """Forged (unknown key, another agency's kid), re-addressed, replayed, expired and
    revoked-key envelopes published by police with its own bus credentials are each rejected,
    nothing is stored in the shelter's inbox, and each is logged and audited in the ledger
    with its own reason."""
    m = strict
    police = agency_keys(m, "police")
    coordinator = agency_keys(m, "coordinator")
    shelter_db = m.database("shelter")
    to_shelter = await m.api("police").refer(["shelter"], samples.referral())
    to_coordinator = await m.api("police").refer(["coordinator"], samples.referral())
    await delivered(m, "police", to_shelter)
    await delivered(m, "police", to_coordinator)
    inbox_before = rows(shelter_db, "inbox")
    referrals_before = rows(shelter_db, "referrals")

    now = int(time.time())
    directory = m.agents["shelter"].trust.directory
    assert directory is not None
    police_key = directory.agency("police").signing_keys[0]
    stranger = AgencyKeys.generate(agency="police", name="Police")
    borrowed = AgencyKeys(
        agency="police",
        name="Police",
        signing_key=coordinator.signing_key,
        encryption_key=coordinator.encryption_key,
    )
    valid_from = police_key.valid_from
    # expired beyond the one-second skew, yet signed while the key was valid
    await asyncio.sleep(max(0.0, valid_from + 3.5 - time.time()))
    hostile = {
        "unknown-key": [
            _sealed_to_shelter(m, stranger, created=now, expires=now + 3600),
            _sealed_to_shelter(m, borrowed, created=now, expires=now + 3600),
        ],
        "bad-signature": [
            _readdressed(m, sent_envelope(m, "police", to_coordinator), SigningKey.generate())
        ],
        "replayed": [sent_envelope(m, "police", to_shelter)],
        "expired": [_sealed_to_shelter(m, police, created=valid_from, expires=valid_from + 1)],
    }

    async def publish(envelopes: list[bytes]) -> None:
        async with connect_as(m, "police") as nc:
            js = nc.jetstream()
            for data in envelopes:
                await js.publish(
                    inbox_subject("shelter"), data, headers={"Nats-Msg-Id": uuid.uuid4().hex}
                )

    with capture_logs() as logs:
        await publish([d for ds in hostile.values() for d in ds])

        async def all_rejected() -> bool:
            return sum(1 for e in logs if e["event"] == "message_rejected") >= 5

        await eventually(all_rejected, timeout=30, what="the five envelopes to be rejected")

        # Revoke police's signing key, then police signs with it anyway.
        admin.revoke_key(
            m.sandbox.admin, "police", police.public.signing_kid, reason="key compromised"
        )
        m.sandbox.sign_draft()
        await m.sandbox.publish()

        async def revoked() -> bool:
            d = m.agents["shelter"].trust.directory
            return d is not None and d.version == 2

        await eventually(revoked, what="the revocation to reach the shelter")
        await asyncio.sleep(1.1)  # sign strictly after the revocation time
        t = int(time.time())
        hostile["revoked-key"] = [_sealed_to_shelter(m, police, created=t, expires=t + 3600)]
        await publish(hostile["revoked-key"])

        async def revoked_rejected() -> bool:
            return sum(1 for e in logs if e["event"] == "message_rejected") >= 6

        await eventually(revoked_rejected, timeout=30, what="the revoked-key envelope rejection")

    logged = {(e["reason"], e["envelope_hash"]) for e in logs if e["event"] == "message_rejected"}
    expected = {(reason, envelope_hash(d)) for reason, ds in hostile.items() for d in ds}
    assert logged == expected
    assert rows(shelter_db, "inbox") == inbox_before
    assert rows(shelter_db, "referrals") == referrals_before

    async def audited() -> bool:
        for reason, ds in hostile.items():
            found = await _rejections_in_ledger(m, reason)
            if not {envelope_hash(d) for d in ds} <= found:
                return False
        return True

    await eventually(audited, timeout=30, what="every rejection in the ledger with its reason")


async def test_short_ciphertext_from_a_participant_is_rejected_and_the_agent_goes_on(
    mechanism: Mechanism,
) -> None:
    """An envelope police really signed, but with a ciphertext shorter than the AEAD tag, is
    rejected and recorded by the shelter, which then still receives the next referral."""
    m = mechanism
    police = agency_keys(m, "police")
    now = int(time.time())
    sealed = _sealed_to_shelter(m, police, created=now, expires=now + 3600)
    tree = codec.unpack(sealed, max_bytes=MB, max_items=32)
    tree[1] = codec.unpack(tree[1], max_bytes=8192, max_items=32)
    data = _with_short_ciphertext(tree, police.signing_key)
    try:
        with capture_logs() as logs:
            async with connect_as(m, "police") as nc:
                await nc.jetstream().publish(
                    inbox_subject("shelter"), data, headers={"Nats-Msg-Id": uuid.uuid4().hex}
                )

            async def rejected() -> bool:
                return any(e["event"] == "message_rejected" for e in logs)

            await eventually(rejected, timeout=8, what="the short ciphertext to be rejected")
        rid = await m.api("police").refer(["shelter"], samples.referral())
        await delivered(m, "police", rid)
    finally:
        # Let the fixture stop the shelter: drop the transport task the bug killed, whose
        # exception group stop() would re-raise.
        transport = m.agents["shelter"].transport
        for task in transport._tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved, so asyncio does not report it again
        transport._tasks = [t for t in transport._tasks if not t.done()]


def _citing(attachment: Any, *, with_key: bool = True) -> bytes:
    """A referral body citing one attachment, canonical, with or without its key."""
    doc: dict[str, Any] = {
        "referral": {"referral_id": "a" * 32, "body": {"attachments": [attachment]}}
    }
    if with_key:
        doc["attachment_key"] = base64.b64encode(bytes(32)).decode()
    return canonical_json(doc)


GOOD_CITATION = {
    "attachment_id": "b" * 32,
    "media_type": "application/pdf",
    "size": 10,
    "sha256": "c" * 64,
}
#: Broken referral bodies and the reason each is refused with (PROTOCOL.md §6.4): not
#: canonical JSON is malformed, JSON that is no valid referral message schema-invalid.
BROKEN_BODIES = [
    (b"\xff not json", "malformed"),
    (b"[]", "schema-invalid"),
    (b'{"referral": 1}', "malformed"),
    (b'{"referral":1}', "schema-invalid"),
    (b'{ "a": 1 }', "malformed"),
    (_citing({"attachment_id": 5}), "schema-invalid"),
    (_citing({**GOOD_CITATION, "size": "10"}), "schema-invalid"),
    (_citing({**GOOD_CITATION, "media_type": "text/html"}), "schema-invalid"),
    (_citing(GOOD_CITATION, with_key=False), "schema-invalid"),
]


@pytest.mark.parametrize(("body", "reason"), BROKEN_BODIES)
async def test_signed_referral_with_a_broken_body_is_rejected_with_its_reason(
    mechanism: Mechanism, body: bytes, reason: str
) -> None:
    """A referral police really signed but whose body is not a canonical JSON referral is
    rejected, malformed or schema-invalid, stores nothing, and the shelter goes on
    receiving."""
    m = mechanism
    now = int(time.time())
    data = _sealed_to_shelter(
        m, agency_keys(m, "police"), created=now, expires=now + 3600, body=body
    )
    with capture_logs() as logs:
        async with connect_as(m, "police") as nc:
            await nc.jetstream().publish(
                inbox_subject("shelter"), data, headers={"Nats-Msg-Id": uuid.uuid4().hex}
            )

        def at_shelter() -> list[dict[str, Any]]:
            return [
                e for e in logs if (e["event"], e.get("agency")) == ("message_rejected", "shelter")
            ]

        async def rejected() -> bool:
            return bool(at_shelter())

        await eventually(rejected, timeout=10, what="the broken referral to be rejected")
    reasons = {e["reason"] for e in at_shelter()}
    assert reasons == {reason}
    assert rows(m.database("shelter"), "inbox") == 0
    rid = await m.api("police").refer(["shelter"], samples.referral())
    await delivered(m, "police", rid)
