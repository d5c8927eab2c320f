"""Test vectors of every signed or encoded format but the envelope (docs/PROTOCOL.md §4.9).

Imported by generate.py, which writes them; deterministic like it (fixed keys, times and
nonces; Ed25519 signatures are deterministic). Every file is UTF-8: `name: value` lines, a
blank line, then the bytes under test in base64 wrapped at 76 columns. Hex is lowercase,
numbers decimal, `none` stands for an absent or null value.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import textwrap
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import nkeys
from nacl.public import PrivateKey
from nacl.secret import SecretBox
from nacl.signing import SigningKey

from agents.consent import SignedReceipt, encode_stored, parse_receipt, sign_receipt
from agents.lifecycle import Transition
from agents.messages import DeliveryReceipt
from agents.referral import categories_for_roles, minimise
from agents.referral_versions import as_v2
from keys import codec
from keys.audit import AuditEvent, decode_signed_event, sign_event
from keys.catalogue import (
    CAPACITY_LABEL,
    Capacity,
    Catalogue,
    Service,
    encode_catalogue,
    sign_capacity,
    sign_catalogue,
)
from keys.catalogue import LABEL as CATALOGUE_LABEL
from keys.checkpoint import (
    COSIGNATURE_TYPE,
    ED25519_TYPE,
    Checkpoint,
    ledger_origin,
    sign_checkpoint,
)
from keys.checkpoint import key_id as note_key_id
from keys.codec import canonical_json
from keys.decision import LABEL as DECISION_LABEL
from keys.decision import Decision, reason_digest, sign_decision
from keys.directory import (
    AgencyEntry,
    Directory,
    KeyEntry,
    Root,
    encode_directory,
    encode_root,
)
from keys.identity import (
    ENCRYPTION_KID_LABEL,
    SIGNING_KID_LABEL,
    PublicIdentity,
    encryption_kid,
    fingerprint,
    key_id,
    nats_public_key,
    proof_statement,
    signing_kid,
)
from keys.keyfile import INTERACTIVE, _derive
from keys.ledger_entry import LedgerEntry
from keys.merkle import leaf_hash
from keys.policy import Policy, policy_doc
from keys.protection import LABEL as PROTECTION_LABEL
from keys.protection import Notice, sign_notice
from keys.report import LABEL as REPORT_LABEL
from keys.report import Report, ReportCell, encode_report, report_id, sign_report
from nrm import examples

CREATED = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 24 * 3600


def fixed(label: str) -> bytes:
    """32 fixed bytes named by `label` (the same rule as generate.py)."""
    return hashlib.sha256(b"nrm test vector: " + label.encode()).digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def render(header: list[tuple[str, object]], data: bytes) -> str:
    def shown(value: object) -> str:
        if value is None:
            return "none"
        if isinstance(value, bytes):
            return value.hex()
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    lines = [f"{name}: {shown(value)}" for name, value in header]
    return "\n".join([*lines, "", *textwrap.wrap(b64(data), 76)]) + "\n"


def rendered(
    prefix: str,
    vectors: Iterable[tuple[str, str, str, bytes]],
    ok: Callable[[bytes], list[tuple[str, object]]],
) -> Iterator[tuple[str, str]]:
    """Each `(name, comment, expect, bytes)` as the file `prefix-name`; when it is ok its
    header adds the fields `ok` reads from the bytes."""
    for name, comment, expect, data in vectors:
        header: list[tuple[str, object]] = [("expect", expect), ("comment", comment)]
        if expect == "ok":
            header += ok(data)
        yield f"{prefix}-{name}", render(header, data)


# --- canonical JSON (§1.3) -------------------------------------------------------------------
#
# canonical-json-encode-*: `input` is base64 of any JSON text; parsed and encoded canonically
#     it MUST give exactly the bytes of the file (which also decode as `ok`).
# canonical-json-decode-*: the bytes, judged by the strict body decoder of §6.4 (size 786 432,
#     depth 16, integers within ±(2^53 - 1)): `expect` ok or the reason.

ENCODE: list[tuple[str, str, bytes]] = [
    (
        "member-order-ascii",
        "members sorted by code point: uppercase before lowercase, a prefix first",
        b'{"b": 1, "aa": 3, "a": 2, "A": 4, "_": 5}',
    ),
    (
        "member-order-non-bmp",
        "U+E000 sorts before U+1F600 by code point (RFC 8785, by UTF-16 units, would not); "
        "U+00E9 after z",
        b'{"\\ud83d\\ude00": 1, "\\ue000": 2, "z": 3, "\\u00e9": 4}',
    ),
    (
        "string-escapes",
        "only quote, backslash and U+0000-U+001F are escaped; short forms for b t n f r, "
        "lowercase \\u00xx otherwise; /, U+007F, U+2028, non-ASCII and non-BMP raw",
        b'["\\"\\\\", "\\b\\t\\n\\f\\r", "\\u0000\\u0001\\u001F", "\\/\\u007f", '
        b'"\\u2028\\u2029", "\\u00e9\\u4e2d", "\\ud83d\\ude00"]',
    ),
    (
        "integers-whitespace",
        "whitespace between tokens removed; integers as plain decimals",
        b" [ 0 , -1 , 10 , 9007199254740991 , -9007199254740991 ] \n",
    ),
    (
        "nested-empty-literals",
        "empty object and array, nested members sorted at every level, true false null",
        b'{"z": {"y": [], "b": {}}, "a": [[], {}], "m": null, "t": true, "f": false}',
    ),
]

_DEEP_16 = b"[" * 16 + b"]" * 16
_DEEP_17 = b"[" * 17 + b"]" * 17

DECODE: list[tuple[str, str, str, bytes]] = [
    ("ok-object", "a canonical object", "ok", b'{"a":[1,-2,"\xc3\xa9"],"b":null,"c":true}'),
    ("ok-depth-16", "brackets 16 deep, the limit", "ok", _DEEP_16),
    ("ok-max-integer", "2^53 - 1", "ok", b"[9007199254740991,-9007199254740991]"),
    ("too-deep", "brackets 17 deep", "too-deep", _DEEP_17),
    ("whitespace", "a space after a comma", "malformed", b'{"a":1, "b":2}'),
    ("trailing-newline", "a newline after the value", "malformed", b'{"a":1}\n'),
    ("unsorted", "members out of order", "malformed", b'{"b":1,"a":2}'),
    ("duplicate-member", "the same name twice", "malformed", b'{"a":1,"a":1}'),
    ("escaped-non-ascii", "U+00E9 escaped", "malformed", b'["\\u00e9"]'),
    ("uppercase-escape", "U+001F escaped with uppercase hex", "malformed", b'["\\u001F"]'),
    ("escaped-slash", "a solidus escaped", "malformed", b'["\\/"]'),
    ("raw-control", "U+0001 unescaped", "malformed", b'["\x01"]'),
    ("lone-surrogate", "an escaped lone surrogate", "malformed", b'["\\ud800"]'),
    ("surrogate-pair-escaped", "U+1F600 as two escapes", "malformed", b'["\\ud83d\\ude00"]'),
    ("invalid-utf8", "a lone continuation byte", "malformed", b'["\x80"]'),
    ("bom", "a UTF-8 byte order mark first", "malformed", b'\xef\xbb\xbf{"a":1}'),
    ("negative-zero", "-0", "malformed", b"[-0]"),
    ("leading-zero", "01", "malformed", b"[01]"),
    ("float", "1.0", "out-of-range", b"[1.0]"),
    ("exponent", "1e2", "out-of-range", b"[1e2]"),
    ("nan", "NaN", "out-of-range", b"[NaN]"),
    ("integer-2-53", "2^53, one beyond the limit", "out-of-range", b"[9007199254740992]"),
    ("integer-5000-digits", "an integer of 5000 digits", "out-of-range", b"[" + b"9" * 5000 + b"]"),
]


def canonical_json_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, text in ENCODE:
        value = json.loads(text)
        header: list[tuple[str, object]] = [
            ("expect", "ok"),
            ("comment", comment),
            ("input", b64(text)),
        ]
        yield f"canonical-json-encode-{name}", render(header, canonical_json(value))
    for name, comment, expect, data in DECODE:
        yield (
            f"canonical-json-decode-{name}",
            render([("expect", expect), ("comment", comment)], data),
        )


# --- roots and directories (§7.2-§7.5) -------------------------------------------------------
#
# root-*: `trusted_root` is base64 of the trusted signed root file, or `none` for the initial
#     root (checked with its own keys, §7.5); the bytes are the root offered. When ok:
#     `version`, `threshold`, `key_ids` (comma-separated, sorted).
# directory-*: `root` is base64 of the signed root the directory is verified against (itself
#     verified as an initial root), `current` base64 of the currently trusted signed directory
#     or `none`, `now` the verifier's time. When ok: `version`, `agencies` (comma-separated),
#     `spec_version` and `policy_country` (the policy's `country`, or `none`; §7.11).

ADMINS = [SigningKey(fixed(f"admin {n}")) for n in (1, 2, 3)]
NEW_ADMINS = [SigningKey(fixed(f"admin {n} root 2")) for n in (1, 2, 3)]
ROOT_1 = Root.of(
    version=1, expires=CREATED + 365 * DAY, threshold=2, keys=[k.verify_key for k in ADMINS]
)
ROOT_2 = Root.of(
    version=2, expires=CREATED + 730 * DAY, threshold=2, keys=[k.verify_key for k in NEW_ADMINS]
)


def signed_file(signed: bytes, keys: list[SigningKey]) -> bytes:
    """`signed` (canonical JSON of a root or directory, valid or not) signed by `keys` under
    the label of its `type`, signatures sorted by key id (§7.4)."""
    label = b"nrm/v1/root" if json.loads(signed)["type"] == "nrm-root" else b"nrm/v1/directory"
    return _raw_signed(json.loads(signed), sorted(_sig(label, signed, k) for k in keys))


def _raw_signed(signed: Any, signatures: list[tuple[str, bytes]]) -> bytes:
    """A signed file with exactly these signatures, in this order (nothing checked)."""
    return canonical_json(
        {"signatures": [{"keyid": k, "sig": b64(s)} for k, s in signatures], "signed": signed}
    )


def _sig(label: bytes, signed: bytes, key: SigningKey) -> tuple[str, bytes]:
    return signing_kid(key.verify_key), key.sign(label + b"\x00" + signed).signature


ROOT_1_FILE = signed_file(encode_root(ROOT_1), ADMINS)
ROOT_2_SIGNED = encode_root(ROOT_2)


def _root_vectors() -> list[tuple[str, str, str, bytes | None, bytes]]:
    root1 = encode_root(ROOT_1)
    bad_sig = bytearray(_sig(b"nrm/v1/root", root1, ADMINS[0])[1])
    bad_sig[0] ^= 1
    unknown_member = json.loads(root1)
    unknown_member["comment"] = "x"
    skipped = json.loads(ROOT_2_SIGNED)
    skipped["version"] = 3
    skipped_bytes = canonical_json(skipped)
    return [
        ("initial-ok", "root 1, 2-of-3, signed by all three", "ok", None, ROOT_1_FILE),
        (
            "initial-under-signed",
            "root 1 signed by one of its keys, threshold 2",
            "under-signed",
            None,
            signed_file(root1, ADMINS[:1]),
        ),
        (
            "initial-same-key-twice",
            "the same key's signature listed twice counts once",
            "under-signed",
            None,
            _raw_signed(
                json.loads(root1),
                [_sig(b"nrm/v1/root", root1, ADMINS[0]), _sig(b"nrm/v1/root", root1, ADMINS[0])],
            ),
        ),
        (
            "initial-bad-signature",
            "one valid signature and one invalid under a trusted key id",
            "bad-signature",
            None,
            _raw_signed(
                json.loads(root1),
                [
                    (signing_kid(ADMINS[0].verify_key), bytes(bad_sig)),
                    _sig(b"nrm/v1/root", root1, ADMINS[1]),
                ],
            ),
        ),
        (
            "initial-directory-label",
            "signed under the directory label instead of the root label",
            "bad-signature",
            None,
            _raw_signed(
                json.loads(root1),
                [_sig(b"nrm/v1/directory", root1, k) for k in ADMINS],
            ),
        ),
        (
            "initial-unknown-member",
            "a member the root format does not define, correctly signed",
            "malformed",
            None,
            signed_file(canonical_json(unknown_member), ADMINS),
        ),
        (
            "initial-non-canonical",
            "a space after the first colon",
            "malformed",
            None,
            ROOT_1_FILE.replace(b'"signatures":', b'"signatures": ', 1),
        ),
        (
            "update-ok",
            "root 2 with new keys, signed by 2 old and 2 new keys",
            "ok",
            ROOT_1_FILE,
            signed_file(ROOT_2_SIGNED, [*ADMINS[:2], *NEW_ADMINS[:2]]),
        ),
        (
            "update-only-old-keys",
            "root 2 signed by the old keys only: its own threshold is not met (R3)",
            "under-signed",
            ROOT_1_FILE,
            signed_file(ROOT_2_SIGNED, ADMINS),
        ),
        (
            "update-only-new-keys",
            "root 2 signed by the new keys only: the trusted threshold is not met (R2)",
            "under-signed",
            ROOT_1_FILE,
            signed_file(ROOT_2_SIGNED, NEW_ADMINS),
        ),
        (
            "update-skips-a-version",
            "version 3 over trusted version 1, correctly signed (R4)",
            "rolled-back",
            ROOT_1_FILE,
            signed_file(skipped_bytes, [*ADMINS[:2], *NEW_ADMINS[:2]]),
        ),
        (
            "update-same-version",
            "root 1 offered again over root 1",
            "rolled-back",
            ROOT_1_FILE,
            ROOT_1_FILE,
        ),
    ]


POLICE_SIGN = SigningKey(fixed("police ed25519 1"))
POLICE_ENC = PrivateKey(fixed("police x25519 1"))
SHELTER_SIGN = SigningKey(fixed("shelter ed25519 1"))
SHELTER_ENC = PrivateKey(fixed("shelter x25519 1"))


def nats_seed(label: str) -> bytes:
    return bytes(nkeys.encode_seed(fixed(label), nkeys.PREFIX_BYTE_USER))


def _key(public: bytes, label: bytes, **kw: Any) -> KeyEntry:
    return KeyEntry(
        kid=key_id(label, public),
        public=public,
        valid_from=kw.get("valid_from", CREATED - 30 * DAY),
        valid_until=kw.get("valid_until"),
        status=kw.get("status", "active"),
        revoked_at=kw.get("revoked_at"),
        reason=kw.get("reason"),
    )


def _agency(agency: str, name: str, roles: tuple[str, ...], sk: SigningKey, ek: PrivateKey) -> Any:
    return AgencyEntry(
        agency=agency,
        name=name,
        roles=roles,
        signing_keys=(_key(bytes(sk.verify_key), SIGNING_KID_LABEL),),
        encryption_keys=(_key(bytes(ek.public_key), ENCRYPTION_KID_LABEL),),
        nats_key=nats_public_key(nats_seed(f"{agency} nats 1")),
    )


DIRECTORY = Directory(
    version=1,
    expires=CREATED + 30 * DAY,
    agencies=(
        _agency("police", "National Police", ("police",), POLICE_SIGN, POLICE_ENC),
        _agency("shelter", "Shelter \u00e9\u00e9n", ("ngo",), SHELTER_SIGN, SHELTER_ENC),
    ),
)
DIRECTORY_FILE = signed_file(encode_directory(DIRECTORY), ADMINS[:2])
NOW = CREATED + 3600
#: Spec 2: the same agencies under a national policy (PROTOCOL §7.11), police also the
#: competent authority.
POLICY = Policy(
    country="LT",
    without_consent={"competent-authority": ("legal_obligation", "public_task")},
    child_legal_bases=("children_act_s5",),
)
POLICY_DIRECTORY = DIRECTORY.with_policy(POLICY).with_agency(
    _agency(
        "police",
        "National Police",
        ("competent-authority", "police"),
        POLICE_SIGN,
        POLICE_ENC,
    )
)


def _directory_vectors() -> list[tuple[str, str, str, bytes | None, int, bytes]]:
    doc = json.loads(encode_directory(DIRECTORY))
    v2 = signed_file(encode_directory(DIRECTORY.bump(expires=CREATED + 40 * DAY)), ADMINS[:2])
    unsorted = json.loads(encode_directory(DIRECTORY))
    unsorted["agencies"].reverse()
    kid_mismatch = json.loads(encode_directory(DIRECTORY))
    kid_mismatch["agencies"][0]["signing_keys"][0]["kid"] = "0" * 32
    extra = json.loads(encode_directory(DIRECTORY))
    extra["agencies"][0]["email"] = "x@example.org"
    unsorted_roles = json.loads(encode_directory(DIRECTORY))
    unsorted_roles["agencies"][0]["roles"] = ["police", "coordinator"]
    long_lived = Directory(version=1, expires=CREATED + 2 * 365 * DAY, agencies=DIRECTORY.agencies)
    with_policy = json.loads(encode_directory(POLICY_DIRECTORY))
    short_reflection = json.loads(encode_directory(POLICY_DIRECTORY))
    short_reflection["policy"]["reflection_min_days"] = 29
    no_glass_reasons = json.loads(encode_directory(POLICY_DIRECTORY))
    no_glass_reasons["policy"]["break_glass"]["reasons"] = []
    policy_in_spec_1 = json.loads(encode_directory(POLICY_DIRECTORY))
    policy_in_spec_1["spec_version"] = 1
    no_policy = dict(with_policy)
    del no_policy["policy"]
    new_role_in_spec_1 = dict(policy_in_spec_1)
    del new_role_in_spec_1["policy"]

    def deciding(index: int, stages: list[str]) -> bytes:
        doc = json.loads(encode_directory(POLICY_DIRECTORY))
        doc["agencies"][index]["decides"] = stages  # 0: the police (the authority), 1: shelter
        return signed_file(canonical_json(doc), ADMINS[:2])

    after_root = ROOT_1.expires + DAY
    return [
        ("ok", "version 1, two agencies, 2 of 3 root keys", "ok", None, NOW, DIRECTORY_FILE),
        (
            "ok-same-version-unchanged",
            "the trusted version offered again, byte-identical",
            "ok",
            DIRECTORY_FILE,
            NOW,
            DIRECTORY_FILE,
        ),
        ("ok-newer", "version 2 over version 1", "ok", DIRECTORY_FILE, NOW, v2),
        (
            "under-signed",
            "one root key of the two required",
            "under-signed",
            None,
            NOW,
            signed_file(encode_directory(DIRECTORY), ADMINS[:1]),
        ),
        (
            "signed-by-unknown-keys",
            "signed by root-2 keys the verifier's root does not hold: ignored",
            "under-signed",
            None,
            NOW,
            signed_file(encode_directory(DIRECTORY), NEW_ADMINS),
        ),
        (
            "root-label",
            "signed under the root label instead of the directory label",
            "bad-signature",
            None,
            NOW,
            _raw_signed(
                doc, [_sig(b"nrm/v1/root", encode_directory(DIRECTORY), k) for k in ADMINS[:2]]
            ),
        ),
        ("rolled-back", "version 1 over version 2", "rolled-back", v2, NOW, DIRECTORY_FILE),
        (
            "expired",
            "opened one second after it expired (D4)",
            "expired-metadata",
            None,
            DIRECTORY.expires,
            DIRECTORY_FILE,
        ),
        (
            "expired-root",
            "a directory still current, but the root expired (D5)",
            "expired-root",
            None,
            after_root,
            signed_file(encode_directory(long_lived), ADMINS[:2]),
        ),
        (
            "agencies-unsorted",
            "agencies not sorted by id, correctly signed",
            "malformed",
            None,
            NOW,
            signed_file(canonical_json(unsorted), ADMINS[:2]),
        ),
        (
            "roles-unsorted",
            "roles not sorted, correctly signed",
            "malformed",
            None,
            NOW,
            signed_file(canonical_json(unsorted_roles), ADMINS[:2]),
        ),
        (
            "kid-mismatch",
            "a signing key whose kid is not its key id, correctly signed",
            "malformed",
            None,
            NOW,
            signed_file(canonical_json(kid_mismatch), ADMINS[:2]),
        ),
        (
            "unknown-member",
            "an agency with a member the format does not define, correctly signed",
            "malformed",
            None,
            NOW,
            signed_file(canonical_json(extra), ADMINS[:2]),
        ),
        (
            "ok-policy",
            "spec_version 2: a national policy (§7.11); police also the competent authority",
            "ok",
            None,
            NOW,
            signed_file(canonical_json(with_policy), ADMINS[:2]),
        ),
        (
            "ok-decides-first-stage",
            "spec_version 2: the competent authority decides the first stage only",
            "ok",
            None,
            NOW,
            deciding(0, ["first"]),
        ),
        (
            "decides-not-an-authority",
            "decides on an agency that is not a competent-authority",
            "malformed",
            None,
            NOW,
            deciding(1, ["first"]),
        ),
        (
            "decides-both-stages",
            "decides naming both stages (the absent member means that)",
            "malformed",
            None,
            NOW,
            deciding(0, ["first", "second"]),
        ),
        (
            "policy-reflection-29-days",
            "a policy whose reflection period is 29 days (CETS 197 Art 13: at least 30)",
            "malformed",
            None,
            NOW,
            signed_file(canonical_json(short_reflection), ADMINS[:2]),
        ),
        (
            "policy-break-glass-without-reasons",
            "a policy whose break_glass lists no reason (break-glass would be closed silently)",
            "malformed",
            None,
            NOW,
            signed_file(canonical_json(no_glass_reasons), ADMINS[:2]),
        ),
        (
            "policy-in-spec-1",
            "spec_version 1 with a policy member, correctly signed",
            "malformed",
            None,
            NOW,
            signed_file(canonical_json(policy_in_spec_1), ADMINS[:2]),
        ),
        (
            "spec-2-without-policy",
            "spec_version 2 without its policy member, correctly signed",
            "malformed",
            None,
            NOW,
            signed_file(canonical_json(no_policy), ADMINS[:2]),
        ),
        (
            "spec-2-role-in-spec-1",
            "the competent-authority role (spec_version 2) in a spec_version 1 directory",
            "malformed",
            None,
            NOW,
            signed_file(canonical_json(new_role_in_spec_1), ADMINS[:2]),
        ),
    ]


def trust_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, expect, trusted, data in _root_vectors():
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            ("trusted_root", None if trusted is None else b64(trusted)),
        ]
        if expect == "ok":
            root = ROOT_2 if trusted is not None else ROOT_1
            header += [
                ("version", root.version),
                ("threshold", root.threshold),
                ("key_ids", ",".join(sorted(root.keys))),
            ]
        yield f"root-{name}", render(header, data)
    for name, comment, expect, current, now, data in _directory_vectors():
        header = [
            ("expect", expect),
            ("comment", comment),
            ("root", b64(ROOT_1_FILE)),
            ("current", None if current is None else b64(current)),
            ("now", now),
        ]
        if expect == "ok":
            signed = json.loads(data)["signed"]
            header += [
                ("version", signed["version"]),
                ("agencies", "police,shelter"),
                ("spec_version", signed["spec_version"]),
                ("policy_country", signed["policy"]["country"] if "policy" in signed else None),
            ]
        yield f"directory-{name}", render(header, data)


# --- audit events and ledger entries (§9.0) ----------------------------------------------------
#
# audit-event-*: the verifier trusts exactly one signing key, `signer_ed25519_public` of
#     `agency`, valid from `key_valid_from` to `key_valid_until` (`none`: open-ended), status
#     `key_status`, `key_revoked_at`. The bytes are a signed event. When ok, every field of
#     the event: `event_id`, `agency`, `kind`, `referral_id`, `counterpart`, `envelope_hash`,
#     `key_ids` (comma-separated), `reason`, `labels` (name=value, comma-separated, in order),
#     `time`, and `signer_kid`.
#     With `signer_roles` (comma-separated), `agency` holds those roles and the ledger's
#     check of the kinds one role signs (§9.0: `statistics.*`, `identification.decided`)
#     runs after the signature (`not-for-this-role`).
# ledger-entry-*: the bytes are a ledger entry; when ok `index`, `appended_at`, `leaf_hash`
#     (hex SHA-256(0x00 || entry)) and `event_id` of the signed event in it (verified as above
#     under the police key of audit-event-ok).

EVENT = AuditEvent(
    event_id=fixed("audit event 1")[:16].hex(),
    agency="police",
    kind="referral.sent",
    time=NOW,
    referral_id=fixed("referral 1")[:16].hex(),
    counterpart="shelter",
    envelope_hash=fixed("envelope 1").hex(),
    key_ids=(signing_kid(POLICE_SIGN.verify_key), encryption_kid(SHELTER_ENC.public_key)),
    labels=(("referral_type", "nrm_full"), ("urgency", "urgent")),
)
SIGNED_EVENT = sign_event(EVENT, POLICE_SIGN)


def _event_fields(event: AuditEvent) -> list[object]:
    return list(codec.unpack(event.encode(), max_bytes=2048, max_items=16))


def _signed_raw(fields: list[object], key: SigningKey = POLICE_SIGN) -> bytes:
    body = codec.pack(fields)
    sig = key.sign(b"nrm/v1/audit-event\x00" + body).signature
    return codec.pack([1, body, signing_kid(key.verify_key), sig])


def _audit_vectors() -> list[tuple[str, str, str, dict[str, object], bytes]]:
    tampered = bytearray(SIGNED_EVENT)
    tampered[-1] ^= 1
    free_text = _event_fields(EVENT)
    free_text[8] = "Anna Petrova"
    count_label = _event_fields(EVENT)
    count_label[9] = [["envelopes", "3"]]
    twelve = [*_event_fields(EVENT), None]
    bool_time = _event_fields(EVENT)
    bool_time[10] = True
    purged = AuditEvent(
        event_id=fixed("audit event 2")[:16].hex(),
        agency="police",
        kind="retention.purged",
        time=NOW,
        labels=(("envelopes", "12"), ("history", "0")),
    )
    accessed = AuditEvent(
        event_id=fixed("audit event 3")[:16].hex(),
        agency="police",
        kind="record.accessed",
        time=NOW,
        referral_id=EVENT.referral_id,
        counterpart="shelter",
        labels=(
            ("categories", "contact,identity,language"),
            ("client", "case-management"),
            ("reads", "3"),
            ("record", "body"),
        ),
    )
    overdue = AuditEvent(
        event_id=fixed("audit event 4")[:16].hex(),
        agency="police",
        kind="clock.overdue",
        time=NOW,
        referral_id=EVENT.referral_id,
        counterpart="coordinator",
        envelope_hash=fixed("envelope 2").hex(),
        key_ids=EVENT.key_ids,
        labels=(("clock", "respond"), ("urgency", "routine")),
    )
    decided = AuditEvent(
        event_id=fixed("audit event 5")[:16].hex(),
        agency="police",
        kind="identification.decided",
        time=NOW,
        referral_id=EVENT.referral_id,
        counterpart="ngo",
        envelope_hash=None,
        key_ids=(),
        reason="no-indicators",
        labels=(("age_route", "adult"), ("outcome", "negative"), ("stage", "first")),
    )
    left = AuditEvent(
        event_id=fixed("audit event 8")[:16].hex(),
        agency="police",
        kind="case.left",
        time=NOW,
        referral_id=EVENT.referral_id,
        counterpart="ngo",
        reason="lost-contact",
    )
    step_received = AuditEvent(
        event_id=fixed("audit event 9")[:16].hex(),
        agency="police",
        kind="transfer-step.received",
        time=NOW,
        referral_id=EVENT.referral_id,
        counterpart="ngo",
        envelope_hash=fixed("envelope 3").hex(),
        key_ids=EVENT.key_ids[:1],
        reason="in-progress-here",
        labels=(("to_state", "refused"), ("transfer_kind", "transfer-request")),
    )
    step_label = _event_fields(EVENT)
    step_label[9] = [["to_state", "refused"]]
    contributed = AuditEvent(
        event_id=fixed("audit event 10")[:16].hex(),
        agency="police",
        kind="statistics.contributed",
        time=NOW,
        counterpart="ngo",
        envelope_hash=fixed("envelope 4").hex(),
        key_ids=EVENT.key_ids,
        labels=(("period", "2026-12"),),
    )
    received = dataclasses.replace(  # the rapporteur's of the same envelope, its sender_kid
        contributed,
        event_id=fixed("audit event 11")[:16].hex(),
        kind="statistics.received",
        key_ids=EVENT.key_ids[:1],
    )
    period_label = _event_fields(EVENT)
    period_label[9] = [["period", "2026-12"]]
    period_13 = _event_fields(contributed)
    period_13[9] = [["period", "2026-13"]]
    outcomeless = _event_fields(decided)
    outcomeless[3] = "identification.sent"
    outcomeless[9] = [["stage", "first"]]
    published = AuditEvent(
        event_id=fixed("audit event 6")[:16].hex(),
        agency="police",
        kind="catalogue.published",
        time=NOW,
    )
    confirmed = AuditEvent(
        event_id=fixed("audit event 7")[:16].hex(),
        agency="police",
        kind="break-glass.confirmed",
        time=NOW,
        referral_id=EVENT.referral_id,
        reason="imminent-danger",
        labels=(("client", "duty-officer"),),
    )
    clientless = _event_fields(confirmed)
    clientless[9] = []
    glass_received = _event_fields(EVENT)
    glass_received[3] = "referral.received"
    glass_received[9] = [["break_glass", "yes"], ["urgency", "emergency"]]
    glass_transition = _event_fields(EVENT)
    glass_transition[3] = "transition.sent"
    glass_transition[9] = [["break_glass", "yes"], ["state", "accepted"]]
    clockless = _event_fields(overdue)
    clockless[9] = [["urgency", "routine"]]
    access_label = _event_fields(EVENT)
    access_label[9] = [["client", "case-management"]]
    ownerless = _event_fields(accessed)
    ownerless[5] = None  # no counterpart: its owner could never find it
    body = EVENT.encode()
    other_label = codec.pack(
        [
            1,
            body,
            signing_kid(POLICE_SIGN.verify_key),
            POLICE_SIGN.sign(b"nrm/v1/ledger-restore\x00" + body).signature,
        ]
    )
    retired: dict[str, object] = {"key_valid_until": NOW - 1}
    revoked: dict[str, object] = {"key_status": "revoked", "key_revoked_at": NOW - 60}
    return [
        ("ok", "a referral.sent event with key ids and labels", "ok", {}, SIGNED_EVENT),
        (
            "ok-retention-purged",
            "retention.purged with count labels only",
            "ok",
            {},
            sign_event(purged, POLICE_SIGN),
        ),
        (
            "ok-record-accessed",
            "record.accessed with its four labels only",
            "ok",
            {},
            sign_event(accessed, POLICE_SIGN),
        ),
        (
            "ok-clock-overdue",
            "clock.overdue with its clock and urgency labels",
            "ok",
            {},
            sign_event(overdue, POLICE_SIGN),
        ),
        (
            "ok-identification-decided",
            "identification.decided with its reason and its three labels",
            "ok",
            {},
            sign_event(decided, POLICE_SIGN),
        ),
        (
            "ok-case-left",
            "case.left under the case's opening referral, the leaving reason as its reason",
            "ok",
            {},
            sign_event(left, POLICE_SIGN),
        ),
        (
            "ok-transfer-step-received",
            "transfer-step.received: a refused transfer request, the refusal reason as its"
            " reason, its two labels",
            "ok",
            {},
            sign_event(step_received, POLICE_SIGN),
        ),
        (
            "ok-statistics-contributed",
            "statistics.contributed: one copy to the rapporteur, its envelope hash and month",
            "ok",
            {"signer_roles": "competent-authority"},
            sign_event(contributed, POLICE_SIGN),
        ),
        (
            "ok-statistics-received",
            "statistics.received: the rapporteur took the authority's contribution of a month",
            "ok",
            {"signer_roles": "rapporteur"},
            sign_event(received, POLICE_SIGN),
        ),
        (
            "statistics-contributed-not-an-authority",
            "statistics.contributed signed by an agency that is no competent authority: the "
            "ledger refuses it",
            "not-for-this-role",
            {"signer_roles": "police"},
            sign_event(contributed, POLICE_SIGN),
        ),
        (
            "statistics-received-not-a-rapporteur",
            "statistics.received signed by a competent authority, no rapporteur: the ledger "
            "refuses it",
            "not-for-this-role",
            {"signer_roles": "competent-authority"},
            sign_event(received, POLICE_SIGN),
        ),
        (
            "period-label-on-other-kind",
            "a statistics contribution's period label on referral.sent, correctly signed",
            "malformed",
            {},
            _signed_raw(period_label),
        ),
        (
            "statistics-contributed-month-13",
            "statistics.contributed for a thirteenth month, correctly signed",
            "malformed",
            {},
            _signed_raw(period_13),
        ),
        (
            "transfer-step-label-on-other-kind",
            "transfer-step's to_state label on referral.sent, correctly signed",
            "malformed",
            {},
            _signed_raw(step_label),
        ),
        (
            "identification-sent-without-outcome",
            "identification.sent with its stage but not its outcome, correctly signed",
            "malformed",
            {},
            _signed_raw(outcomeless),
        ),
        (
            "ok-catalogue-published",
            "catalogue.published with nothing but its agency and time",
            "ok",
            {},
            sign_event(published, POLICE_SIGN),
        ),
        (
            "ok-break-glass-confirmed",
            "break-glass.confirmed: the referral, its break-glass reason, the confirming client",
            "ok",
            {},
            sign_event(confirmed, POLICE_SIGN),
        ),
        (
            "break-glass-without-client",
            "break-glass.confirmed without its client label, correctly signed",
            "malformed",
            {},
            _signed_raw(clientless),
        ),
        (
            "break-glass-label-on-received",
            "the break_glass label on referral.received: the receiver's record of a"
            " break-glass referral",
            "ok",
            {},
            _signed_raw(glass_received),
        ),
        (
            "break-glass-label-on-transition",
            "the break_glass label on transition.sent (referral.sent and .received only),"
            " correctly signed",
            "malformed",
            {},
            _signed_raw(glass_transition),
        ),
        (
            "overdue-without-clock",
            "clock.overdue without its clock label, correctly signed",
            "malformed",
            {},
            _signed_raw(clockless),
        ),
        ("bad-signature", "last signature byte flipped", "bad-signature", {}, bytes(tampered)),
        (
            "other-label",
            "signed under the restore-declaration label",
            "bad-signature",
            {},
            other_label,
        ),
        (
            "unknown-signer",
            "signed by a police key the verifier does not trust",
            "unknown-key",
            {},
            sign_event(EVENT, SigningKey(fixed("police ed25519 2"))),
        ),
        ("retired-key", "made after the key's valid_until", "retired-key", retired, SIGNED_EVENT),
        ("revoked-key", "made after the key was revoked", "revoked-key", revoked, SIGNED_EVENT),
        (
            "free-text-reason",
            "a reason that is not a code, correctly signed",
            "malformed",
            {},
            _signed_raw(free_text),
        ),
        (
            "count-label-on-other-kind",
            "a count label on referral.sent, correctly signed",
            "malformed",
            {},
            _signed_raw(count_label),
        ),
        (
            "access-label-on-other-kind",
            "record.accessed's client label on referral.sent, correctly signed",
            "malformed",
            {},
            _signed_raw(access_label),
        ),
        (
            "access-without-owner",
            "record.accessed without its counterpart (the referral's owner), correctly signed",
            "malformed",
            {},
            _signed_raw(ownerless),
        ),
        (
            "twelve-fields",
            "an event of 12 fields, correctly signed",
            "malformed",
            {},
            _signed_raw(twelve),
        ),
        ("time-bool", "time is a bool, correctly signed", "malformed", {}, _signed_raw(bool_time)),
        (
            "oversized",
            "a signed event of 2049 bytes",
            "malformed",
            {},
            SIGNED_EVENT + bytes(2049 - len(SIGNED_EVENT)),
        ),
    ]


def _ledger_vectors() -> list[tuple[str, str, str, bytes]]:
    entry = LedgerEntry(index=41, appended_at=NOW + 2, signed_event=SIGNED_EVENT).encode()
    return [
        ("ok", "entry 41 holding audit-event-ok", "ok", entry),
        (
            "index-bool",
            "index is a bool",
            "malformed",
            codec.pack([1, True, NOW + 2, SIGNED_EVENT]),
        ),
        (
            "five-fields",
            "an entry of 5 fields",
            "malformed",
            codec.pack([1, 41, NOW + 2, SIGNED_EVENT, None]),
        ),
        (
            "version-2",
            "version 2",
            "malformed",
            codec.pack([2, 41, NOW + 2, SIGNED_EVENT]),
        ),
    ]


def audit_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, expect, key, data in _audit_vectors():
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            ("agency", "police"),
            ("signer_ed25519_public", bytes(POLICE_SIGN.verify_key)),
            ("key_valid_from", key.get("key_valid_from", CREATED - 30 * DAY)),
            ("key_valid_until", key.get("key_valid_until")),
            ("key_status", key.get("key_status", "active")),
            ("key_revoked_at", key.get("key_revoked_at")),
        ]
        if "signer_roles" in key:
            header.append(("signer_roles", key["signer_roles"]))
        if expect == "ok":
            event = decode_signed_event(data)[0]
            header += event_header(event)
            header.append(("signer_kid", signing_kid(POLICE_SIGN.verify_key)))
        yield f"audit-event-{name}", render(header, data)

    def entry_header(data: bytes) -> list[tuple[str, object]]:
        decoded = LedgerEntry.decode(data)
        return [
            ("index", decoded.index),
            ("appended_at", decoded.appended_at),
            ("leaf_hash", leaf_hash(data)),
            ("event_id", EVENT.event_id),
        ]

    yield from rendered("ledger-entry", _ledger_vectors(), entry_header)


def event_header(event: AuditEvent) -> list[tuple[str, object]]:
    return [
        ("event_id", event.event_id),
        ("event_agency", event.agency),
        ("kind", event.kind),
        ("referral_id", event.referral_id),
        ("counterpart", event.counterpart),
        ("envelope_hash", event.envelope_hash),
        ("key_ids", ",".join(event.key_ids)),
        ("reason", event.reason),
        ("labels", ",".join(f"{a}={b}" for a, b in event.labels)),
        ("time", event.time),
    ]


# --- checkpoints (§9.3) -----------------------------------------------------------------------
#
# checkpoint-*: `origin` and `ledger_ed25519_public` are what the verifier expects (the key name
#     is the origin); `key_id_ed25519` and `key_id_cosignature` are the signed-note key IDs it
#     derives from them (types 0x01 and 0x04). The bytes are the note (UTF-8). When ok: `size`,
#     `root` (hex), `timestamp` (the time in the ledger's cosignature).

LEDGER_KEY = SigningKey(fixed("ledger ed25519 1"))
ORIGIN = ledger_origin("national")
CHECKPOINT = Checkpoint(origin=ORIGIN, size=42, root=fixed("tree root 42"), timestamp=NOW + 5)
WITNESS_KEY = SigningKey(fixed("witness 1"))
WITNESS_NAME = "witness.example/w1"


def _sig_line(text: str, name: str, key: SigningKey) -> str:
    blob = note_key_id(name, ED25519_TYPE, key.verify_key) + key.sign(text.encode()).signature
    return f"\u2014 {name} {b64(blob)}\n"


def _cosig_line(text: str, t: int, name: str, key: SigningKey) -> str:
    message = f"cosignature/v1\ntime {t}\n{text}".encode()
    blob = note_key_id(name, COSIGNATURE_TYPE, key.verify_key) + t.to_bytes(8, "big")
    return f"\u2014 {name} {b64(blob + key.sign(message).signature)}\n"


def _flip(line: str, at: int) -> str:
    head, blob = line.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[at] ^= 1
    return f"{head} {b64(bytes(raw))}\n"


def _checkpoint_vectors() -> list[tuple[str, str, str, str]]:
    note = sign_checkpoint(CHECKPOINT, key=LEDGER_KEY)
    body = note[: note.index("\n\n") + 1]
    sig, cosig = (line + "\n" for line in note[len(body) + 1 :].splitlines())
    witness = _cosig_line(body, NOW + 7, WITNESS_NAME, WITNESS_KEY)
    t = CHECKPOINT.timestamp

    def resigned(text: str, name: str = ORIGIN) -> str:
        return (
            text + "\n" + _sig_line(text, name, LEDGER_KEY) + _cosig_line(text, t, name, LEDGER_KEY)
        )

    lines = body.split("\n")
    return [
        ("ok", "size 42, signed and cosigned by the ledger key", "ok", note),
        (
            "ok-with-witness",
            "a witness's cosignature line under another key name, ignored",
            "ok",
            body + "\n" + sig + witness + cosig,
        ),
        (
            "bad-signature",
            "last byte of the Ed25519 signature flipped",
            "bad-signature",
            body + "\n" + _flip(sig, -1) + cosig,
        ),
        (
            "bad-cosignature",
            "last byte of the cosignature flipped",
            "bad-signature",
            body + "\n" + sig + _flip(cosig, -1),
        ),
        (
            "cosignature-time-changed",
            "the time in the cosignature changed by one second",
            "bad-signature",
            body + "\n" + sig + _flip(cosig, 11),
        ),
        (
            "no-cosignature",
            "the Ed25519 signature alone: no signed time",
            "bad-signature",
            body + "\n" + sig,
        ),
        ("no-signature", "the cosignature alone", "bad-signature", body + "\n" + cosig),
        (
            "other-origin",
            "a valid checkpoint of another ledger",
            "bad-signature",
            resigned(body.replace(ORIGIN, ledger_origin("national-2"), 1)),
        ),
        (
            "key-name-not-origin",
            "signed and cosigned under the key name national (the former key name)",
            "bad-signature",
            resigned(body, name="national"),
        ),
        (
            "only-witness",
            "cosigned only by another key name",
            "bad-signature",
            body + "\n" + witness,
        ),
        (
            "size-leading-zero",
            "tree size 042, re-signed",
            "malformed",
            resigned("\n".join([lines[0], "042", lines[2], ""])),
        ),
        (
            "timestamp-extension",
            "the former timestamp extension line, re-signed: no extension line is allowed",
            "malformed",
            resigned(body + f"timestamp {t}\n"),
        ),
        ("crlf", "lines ending in CR LF", "malformed", note.replace("\n", "\r\n")),
        (
            "root-non-canonical-base64",
            "root hash base64 without padding, re-signed",
            "malformed",
            resigned("\n".join([lines[0], lines[1], lines[2].rstrip("="), ""])),
        ),
    ]


def checkpoint_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, expect, note in _checkpoint_vectors():
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            ("origin", ORIGIN),
            ("ledger_ed25519_public", bytes(LEDGER_KEY.verify_key)),
            ("key_id_ed25519", note_key_id(ORIGIN, ED25519_TYPE, LEDGER_KEY.verify_key)),
            ("key_id_cosignature", note_key_id(ORIGIN, COSIGNATURE_TYPE, LEDGER_KEY.verify_key)),
        ]
        if expect == "ok":
            header += [
                ("size", CHECKPOINT.size),
                ("root", CHECKPOINT.root),
                ("timestamp", CHECKPOINT.timestamp),
            ]
        yield f"checkpoint-{name}", render(header, note.encode())


# --- consent receipts (§8.3) ------------------------------------------------------------------
#
# consent-receipt-*: the bytes are a receipt in its stored form (canonical JSON `{"agency",
#     "body", "kid", "signature"}`); the verifier holds `signer_ed25519_public` as the key of
#     `agency`. When ok: `receipt_id` and `body_sha256` (hex SHA-256 of the signed body).

RECEIPT_DOC = examples.receipt(
    str(uuid.UUID(bytes=fixed("consent receipt 1")[:16], version=4)), CREATED
)


def _consent_vectors() -> list[tuple[str, str, str, bytes]]:
    signed = sign_receipt(parse_receipt(RECEIPT_DOC), POLICE_SIGN, agency="police")
    kid = signing_kid(POLICE_SIGN.verify_key)

    def stored(body: bytes, agency: str = "police", key: SigningKey = POLICE_SIGN) -> bytes:
        sig = key.sign(b"nrm/v1/consent\x00" + body).signature
        return encode_stored(SignedReceipt(agency=agency, body=body, signature=sig, kid=kid))

    altered = signed.body.replace(b'"P2Y"', b'"P9Y"')
    spaced = json.dumps(json.loads(signed.body), sort_keys=True).encode()
    not_controller = dict(
        RECEIPT_DOC, controllers=[dict(RECEIPT_DOC["controllers"][0], agency="shelter")]
    )
    return [
        ("ok", "recorded and signed by the police", "ok", encode_stored(signed)),
        (
            "body-altered",
            "retention changed after signing, old signature kept",
            "bad-signature",
            encode_stored(SignedReceipt("police", altered, signed.signature, kid)),
        ),
        (
            "other-label",
            "signed under the envelope label",
            "bad-signature",
            encode_stored(
                SignedReceipt(
                    "police",
                    signed.body,
                    POLICE_SIGN.sign(b"nrm/v1/envelope\x00" + signed.body).signature,
                    kid,
                )
            ),
        ),
        (
            "non-canonical-body",
            "the body with spaces, correctly signed",
            "malformed",
            stored(spaced),
        ),
        (
            "not-a-controller",
            "signed by the police, but only the shelter is a controller",
            "consent-invalid",
            stored(canonical_json(not_controller)),
        ),
    ]


def consent_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, expect, data in _consent_vectors():
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            ("agency", "police"),
            ("signer_ed25519_public", bytes(POLICE_SIGN.verify_key)),
        ]
        if expect == "ok":
            body = base64.b64decode(json.loads(data)["body"])
            header += [
                ("receipt_id", RECEIPT_DOC["receipt_id"]),
                ("body_sha256", hashlib.sha256(body).digest()),
            ]
        yield f"consent-receipt-{name}", render(header, data)


# --- message bodies: transitions (§8.4), delivery receipts (§6.2), JSON kinds (§8.5) ----------
#
# transition-*, receipt-*: the bytes are the body of a `transition` / `delivery-receipt`
#     message, judged by the receiver's body checks (§6.4); when ok, every field by name.
# body-*: `kind` and `roles` (comma-separated: the receiver's own roles); the bytes are the
#     body of that kind, judged by §6.4; `expect` ok or the reason. With `policy` (base64 of
#     the canonical JSON of a directory's policy, §7.11) and `sender_roles`, judged under it.

RID = fixed("referral 1")[:16].hex()


def _transition_vectors() -> list[tuple[str, str, str, list[object]]]:
    good: list[object] = [
        1,
        RID,
        "shelter",
        "acknowledged",
        "declined",
        "recipient",
        "no-capacity",
        None,
        NOW,
    ]
    return [
        ("ok-declined", "declined by the recipient with a reason", "ok", good),
        (
            "ok-closed",
            "closed with an outcome, no reason",
            "ok",
            [1, RID, "shelter", "in_progress", "closed", "recipient", None, "completed", NOW],
        ),
        *(
            (
                f"ok-closed-{outcome.replace('_', '-')}",
                f"closed with the outcome {outcome} (this release; 0.3.0: malformed)",
                "ok",
                [1, RID, "shelter", "in_progress", "closed", "recipient", None, outcome, NOW],
            )
            for outcome in (
                "service_provided",
                "service_partly_provided",
                "person_declined",
                "person_left",
                "transferred",
            )
        ),
        (
            "unknown-outcome",
            "closed with an outcome that is no code of the vocabulary",
            "unknown-outcome-code",
            [1, RID, "shelter", "in_progress", "closed", "recipient", None, "rehoused", NOW],
        ),
        (
            "closed-without-outcome",
            "closed without an outcome",
            "malformed",
            [1, RID, "shelter", "in_progress", "closed", "recipient", None, None, NOW],
        ),
        (
            "unknown-outcome-off-closed",
            "an unknown outcome on a step that is not to closed: misplaced before unknown",
            "malformed",
            [*good[:7], "rehoused", NOW],
        ),
        (
            "ok-withdrawn-by-sender",
            "withdrawn by the sender",
            "ok",
            [1, RID, "shelter", "delivered", "withdrawn", "sender", None, None, NOW],
        ),
        (
            "outside-table",
            "the sender cannot accept on the recipient's behalf",
            "unexpected",
            [1, RID, "shelter", "acknowledged", "accepted", "sender", None, None, NOW],
        ),
        (
            "reason-free-text",
            "a reason that is not a code of the vocabulary",
            "unknown-reason-code",
            [*good[:6], "She said no", *good[7:]],
        ),
        (
            "declined-without-reason",
            "declined without a reason",
            "malformed",
            [*good[:6], None, *good[7:]],
        ),
        (
            "outcome-off-closed",
            "an outcome on a step that is not to closed",
            "malformed",
            [*good[:7], "completed", NOW],
        ),
        ("at-bool", "at is a bool", "malformed", [*good[:8], True]),
        (
            "unknown-state",
            "a state the table does not know",
            "malformed",
            [1, RID, "shelter", "lost", *good[4:]],
        ),
        ("version-2", "version 2", "malformed", [2, *good[1:]]),
        ("at-too-large", "at is 2^63, past the bound", "malformed", [*good[:8], 2**63]),
        (
            "reason-wrong-type-off-table",
            "an integer reason on a step the table does not list: its type first (malformed)",
            "malformed",
            [1, RID, "shelter", "acknowledged", "accepted", "sender", 7, None, NOW],
        ),
    ]


def _receipt_vectors() -> list[tuple[str, str, str, bytes]]:
    mid = fixed("message 1")[:16].hex()
    digest = fixed("envelope 1").hex()
    return [
        ("ok", "a receipt", "ok", codec.pack([1, mid, digest, NOW])),
        (
            "short-hash",
            "an envelope hash of 63 hex digits",
            "schema-invalid",
            codec.pack([1, mid, digest[:63], NOW]),
        ),
        (
            "uppercase-id",
            "a message id in uppercase",
            "schema-invalid",
            codec.pack([1, mid.upper(), digest, NOW]),
        ),
        ("version-2", "version 2", "malformed", codec.pack([2, mid, digest, NOW])),
        (
            "four-byte-time",
            "received_at as uint32 0xce for 5",
            "malformed",
            b"\x94\x01" + codec.pack(mid) + codec.pack(digest) + b"\xce\x00\x00\x00\x05",
        ),
    ]


#: An adult's referral under public_task, for a co-ordinator (the demo's example).
_PUBLIC_TASK_REFERRAL = canonical_json(
    {
        "referral": {
            **(doc := examples.referral(created="2026-01-01T00:00:00Z")),
            "referral_id": fixed("basis referral")[:16].hex(),
            "body": {k: v for k, v in doc["body"].items() if k != "attachments"},
        }
    }
)


def _service_referral(agency: str, service_id: str) -> bytes:
    """The demo's referral as its sender's agent sends it to a shelter (role ngo: minimised,
    no attachments), naming `service_id` of `agency` (PROTOCOL §8.2 step 5)."""
    doc = examples.referral(created="2026-01-01T00:00:00Z")
    body = minimise(doc["body"], categories_for_roles(["ngo"]))
    return canonical_json(
        {
            "referral": {
                **doc,
                "service": {"agency": agency, "service_id": service_id},
                "referral_id": fixed("service referral")[:16].hex(),
                "body": {k: v for k, v in body.items() if k != "attachments"},
            }
        }
    )


SERVICE_ID = "5e1f0a2b3c4d5e6f"


def _service_vectors() -> list[tuple[str, str, str, str, str, bytes]]:
    """body-referral-service-*: received by the shelter (role ngo) whose own catalogues listed
    `own_services` within a message's life (comma-separated; `none`: it published none) and
    whose directory lists
    `providers` (comma-separated) with a provider role (§6.4).
    (name, comment, own services, providers, expect, body)."""
    return [
        (
            "referral-service",
            "a referral naming a service of the shelter's own catalogue",
            SERVICE_ID,
            "health,shelter",
            "ok",
            _service_referral("shelter", SERVICE_ID),
        ),
        (
            "referral-service-of-another-provider",
            "naming another provider's service: its catalogue is the sender's check",
            SERVICE_ID,
            "health,shelter",
            "ok",
            _service_referral("health", "0123456789abcdef"),
        ),
        (
            "referral-service-not-listed",
            "naming the shelter and a service its own catalogue does not list",
            SERVICE_ID,
            "health,shelter",
            "unknown-service",
            _service_referral("shelter", "0123456789abcdef"),
        ),
        (
            "referral-service-no-catalogue",
            "naming the shelter, which published no catalogue",
            "none",
            "health,shelter",
            "unknown-service",
            _service_referral("shelter", SERVICE_ID),
        ),
        (
            "referral-service-not-a-provider",
            "naming a service of an agency the directory lists with no provider role",
            SERVICE_ID,
            "health,shelter",
            "unknown-service",
            _service_referral("coordinator", SERVICE_ID),
        ),
        (
            "referral-service-upper-case",
            "a service_id in upper case (16 lowercase hex)",
            SERVICE_ID,
            "health,shelter",
            "schema-invalid",
            _service_referral("shelter", SERVICE_ID.upper()),
        ),
    ]


def _break_glass_referral(legal_basis: str = "vital_interests", **member: object) -> bytes:
    """An adult's referral for a co-ordinator with the routing member `break_glass` =
    `member` (PROTOCOL §8.2 step 2)."""
    doc = examples.referral(created="2026-01-01T00:00:00Z")
    return canonical_json(
        {
            "referral": {
                **doc,
                "legal_basis": legal_basis,
                "break_glass": member,
                "referral_id": fixed("break-glass referral")[:16].hex(),
                "body": {k: v for k, v in doc["body"].items() if k != "attachments"},
            }
        }
    )


def _child_referral(legal_basis: str, keep: tuple[str, ...]) -> bytes:
    """The demo's referral about a child (a guardian named), under `legal_basis`, its body
    cut to the fields `keep` (as a sender minimises it for one recipient)."""
    doc = examples.referral(created="2026-01-01T00:00:00Z")
    body = {
        **doc["body"],
        "age_category": "child",
        "guardian": {"guardian_type": "local_authority"},
    }
    routing = {"legal_basis": legal_basis}
    if legal_basis == "consent":
        routing["consent_receipt_id"] = RECEIPT_DOC["receipt_id"]
    return canonical_json(
        {
            "referral": {
                **doc,
                **routing,
                "referral_id": fixed("child referral")[:16].hex(),
                "body": {k: v for k, v in body.items() if k in keep},
            }
        }
    )


def _child_referral_v2(
    legal_basis: str, keep: tuple[str, ...] | None = None, **routing: str
) -> bytes:
    """The demo's referral about a child in schema v2 (HTCDS 2.0 codes, a guardian named),
    under `legal_basis`, with the routing fields `routing` (`legal_basis_ref`), its body cut
    to the fields `keep` (default: what a co-ordinator gets; PROTOCOL §8.2 step 4)."""
    doc = examples.referral(created="2026-01-01T00:00:00Z", schema_version="2")
    body = {
        **{k: v for k, v in doc["body"].items() if k != "attachments"},
        "age_category": "child",
        "guardian": {"guardian_type": "local_authority"},
    }
    if keep is not None:
        body = {k: v for k, v in body.items() if k in keep}
    if legal_basis == "consent":
        routing = {**routing, "consent_receipt_id": RECEIPT_DOC["receipt_id"]}
    return canonical_json(
        {
            "referral": {
                **doc,
                "legal_basis": legal_basis,
                **routing,
                "referral_id": fixed("child referral v2")[:16].hex(),
                "body": body,
            }
        }
    )


#: What a health service may receive of the child's referral (its roles' categories).
_HEALTH_FIELDS = ("age_category", "names", "languages", "health_needs", "requested_services")


def _basis_vectors() -> list[tuple[str, str, str, str, str, bytes]]:
    """body-referral-*basis*, body-referral-child-*: also `sender_roles` (comma-separated) and
    `policy` (base64 of the canonical JSON of the directory's policy, §7.11).
    (name, comment, receiver roles, sender roles, expect, body)."""
    return [
        (
            "referral-lawful-basis",
            "public_task for an adult from a competent authority, which the policy allows",
            "coordinator",
            "competent-authority,police",
            "ok",
            _PUBLIC_TASK_REFERRAL,
        ),
        (
            "referral-unlawful-basis",
            "public_task for an adult from police, which the policy does not open to it",
            "coordinator",
            "police",
            "unlawful-basis",
            _PUBLIC_TASK_REFERRAL,
        ),
        (
            "referral-break-glass",
            "vital_interests from police without consent, break-glass with a policy reason, "
            "confirmed",
            "coordinator",
            "police",
            "ok",
            _break_glass_referral(reason="imminent-danger", confirmed=True),
        ),
        (
            "referral-break-glass-unconfirmed",
            "the same break-glass referral without confirmed: its sender never sends one",
            "coordinator",
            "police",
            "unlawful-basis",
            _break_glass_referral(reason="imminent-danger"),
        ),
        (
            "referral-break-glass-unknown-reason",
            "a break-glass reason the policy does not list",
            "coordinator",
            "police",
            "unlawful-basis",
            _break_glass_referral(reason="medical-emergency", confirmed=True),
        ),
        (
            "referral-break-glass-public-task",
            "break-glass under public_task: only vital_interests",
            "coordinator",
            "police",
            "unlawful-basis",
            _break_glass_referral("public_task", reason="imminent-danger", confirmed=True),
        ),
        (
            "referral-child-consent-alone",
            "a child's referral under consent alone, which is no child basis",
            "coordinator",
            "police",
            "unlawful-basis",
            _child_referral("consent", (*examples.referral()["body"], "guardian")),
        ),
        (
            "referral-child-consent-to-health",
            "a child's names to a health service, under consent alone: the basis is judged first",
            "health",
            "police",
            "unlawful-basis",
            _child_referral("consent", _HEALTH_FIELDS),
        ),
        (
            "referral-child-identity-to-health",
            "a child's names to a health service, outside the policy's child_identity_roles "
            "(schema v2: the policy lists child_legal_bases)",
            "health",
            "police",
            "category-not-allowed",
            _child_referral_v2(
                "child_protection", _HEALTH_FIELDS, legal_basis_ref="children_act_s5"
            ),
        ),
        (
            "referral-child-without-identity-to-health",
            "the same child's referral to a health service without names",
            "health",
            "police",
            "ok",
            _child_referral_v2(
                "child_protection",
                tuple(f for f in _HEALTH_FIELDS if f != "names"),
                legal_basis_ref="children_act_s5",
            ),
        ),
        (
            "referral-v1-child-under-listed-bases",
            "a schema v1 child's referral under child_protection: it cannot name one of the "
            "child_legal_bases the policy lists",
            "health",
            "police",
            "child-route-incomplete",
            _child_referral("child_protection", tuple(f for f in _HEALTH_FIELDS if f != "names")),
        ),
        (
            "referral-v2-child",
            "schema v2: a child's referral under child_protection naming a provision the "
            "policy lists in child_legal_bases",
            "coordinator",
            "police",
            "ok",
            _child_referral_v2("child_protection", legal_basis_ref="children_act_s5"),
        ),
        (
            "referral-v2-child-without-ref",
            "schema v2: the same without legal_basis_ref",
            "coordinator",
            "police",
            "child-route-incomplete",
            _child_referral_v2("child_protection"),
        ),
        (
            "referral-v2-child-ref-not-listed",
            "schema v2: a legal_basis_ref the policy's child_legal_bases does not list",
            "coordinator",
            "police",
            "child-route-incomplete",
            _child_referral_v2("child_protection", legal_basis_ref="children_act_s99"),
        ),
        (
            "referral-v2-child-consent-alone",
            "schema v2: a child's referral under consent alone (the child route, not the "
            "basis rule of v1, refuses it)",
            "coordinator",
            "police",
            "child-route-incomplete",
            _child_referral_v2("consent", legal_basis_ref="children_act_s5"),
        ),
    ]


def _overdue_body(**changes: object) -> bytes:
    """An overdue notice of a routine referral's respond clock under POLICY, with `changes`."""
    due = POLICY.priority["routine"].due_seconds
    doc = {
        "clock": "respond",
        "due_at": CREATED + due,
        "recipient": "shelter",
        "referral_id": RID,
        "started_at": CREATED,
        "urgency": "routine",
    }
    return canonical_json({**doc, **changes})


def _overdue_vectors() -> list[tuple[str, str, str, bool, str, bytes]]:
    """body-overdue-*: (name, comment, roles, under POLICY, expect, body)."""
    return [
        (
            "ok",
            "a respond clock overdue, at a coordinator",
            "coordinator",
            True,
            "ok",
            _overdue_body(),
        ),
        (
            "not-coordinator",
            "an overdue notice at an NGO",
            "ngo",
            True,
            "not-for-this-role",
            _overdue_body(),
        ),
        (
            "no-policy",
            "without a national policy there is no respond clock",
            "coordinator",
            False,
            "schema-invalid",
            _overdue_body(),
        ),
        (
            "acknowledge-clock",
            "the acknowledge clock escalates with escalation, never overdue",
            "coordinator",
            True,
            "schema-invalid",
            _overdue_body(clock="acknowledge"),
        ),
        (
            "due-not-the-policy-s",
            "due_at a day earlier than the routine tier's due_seconds after started_at",
            "coordinator",
            True,
            "schema-invalid",
            _overdue_body(due_at=CREATED + POLICY.priority["routine"].due_seconds - DAY),
        ),
        (
            "due-before-start",
            "due_at not after started_at",
            "coordinator",
            True,
            "schema-invalid",
            _overdue_body(due_at=CREATED),
        ),
        (
            "extra-member",
            "a member the kind does not define",
            "coordinator",
            True,
            "unknown-member",
            _overdue_body(holder="police"),
        ),
    ]


def _body_vectors() -> list[tuple[str, str, str, str, str, bytes]]:
    receipt_id = RECEIPT_DOC["receipt_id"]
    return [
        (
            "consent-withdrawal-ok",
            "a withdrawal of two referrals",
            "consent-withdrawal",
            "ngo",
            "ok",
            canonical_json(
                {"receipt_id": receipt_id, "referral_ids": [RID, fixed("referral 2")[:16].hex()]}
            ),
        ),
        (
            "consent-withdrawal-extra-member",
            "a member the kind does not define",
            "consent-withdrawal",
            "ngo",
            "unknown-member",
            canonical_json({"note": "x", "receipt_id": receipt_id, "referral_ids": [RID]}),
        ),
        (
            "consent-withdrawal-duplicate-ids",
            "the same referral id twice",
            "consent-withdrawal",
            "ngo",
            "schema-invalid",
            canonical_json({"receipt_id": receipt_id, "referral_ids": [RID, RID]}),
        ),
        (
            "erasure-confirmation-ok",
            "an erasure confirmed",
            "erasure-confirmation",
            "police",
            "ok",
            canonical_json({"erased_at": NOW, "receipt_id": receipt_id, "referral_ids": [RID]}),
        ),
        (
            "erasure-confirmation-time-string",
            "erased_at as a string",
            "erasure-confirmation",
            "police",
            "schema-invalid",
            canonical_json(
                {"erased_at": str(NOW), "receipt_id": receipt_id, "referral_ids": [RID]}
            ),
        ),
        (
            "escalation-ok",
            "an urgent referral nobody acknowledged, at a coordinator",
            "escalation",
            "coordinator",
            "ok",
            canonical_json(
                {
                    "recipient": "shelter",
                    "referral_id": RID,
                    "submitted_at": CREATED,
                    "urgency": "urgent",
                }
            ),
        ),
        (
            "escalation-not-coordinator",
            "an escalation at an NGO",
            "escalation",
            "ngo",
            "not-for-this-role",
            canonical_json(
                {
                    "recipient": "shelter",
                    "referral_id": RID,
                    "submitted_at": CREATED,
                    "urgency": "urgent",
                }
            ),
        ),
        (
            "escalation-routine",
            "urgency routine never escalates",
            "escalation",
            "coordinator",
            "schema-invalid",
            canonical_json(
                {
                    "recipient": "shelter",
                    "referral_id": RID,
                    "submitted_at": CREATED,
                    "urgency": "routine",
                }
            ),
        ),
        (
            "unknown-kind",
            "a kind the receiver does not know",
            "referral-v2",
            "ngo",
            "unexpected",
            canonical_json({}),
        ),
    ]


def message_vectors() -> Iterator[tuple[str, str]]:
    names = Transition.WIRE.fields
    for name, comment, expect, fields in _transition_vectors():
        header: list[tuple[str, object]] = [("expect", expect), ("comment", comment)]
        if expect == "ok":
            header += list(zip(names, fields[1:], strict=True))
        yield f"transition-{name}", render(header, codec.pack(fields))

    def receipt_header(data: bytes) -> list[tuple[str, object]]:
        decoded = DeliveryReceipt.decode(data)
        return [
            ("message_id", decoded.message_id),
            ("envelope_hash", decoded.envelope_hash),
            ("received_at", decoded.received_at),
        ]

    yield from rendered("receipt", _receipt_vectors(), receipt_header)
    for name, comment, kind, roles, expect, data in _body_vectors():
        header = [("expect", expect), ("comment", comment), ("kind", kind), ("roles", roles)]
        yield f"body-{name}", render(header, data)
    for name, comment, roles, with_policy, expect, data in _overdue_vectors():
        header = [("expect", expect), ("comment", comment), ("kind", "overdue"), ("roles", roles)]
        if with_policy:
            header.append(("policy", b64(canonical_json(policy_doc(POLICY)))))
        yield f"body-overdue-{name}", render(header, data)
    for name, comment, roles, sender_roles, expect, data in _basis_vectors():
        header = [
            ("expect", expect),
            ("comment", comment),
            ("kind", "referral"),
            ("roles", roles),
            ("sender_roles", sender_roles),
            ("policy", b64(canonical_json(policy_doc(POLICY)))),
        ]
        yield f"body-{name}", render(header, data)
    for name, comment, own, providers, expect, data in _service_vectors():
        header = [
            ("expect", expect),
            ("comment", comment),
            ("kind", "referral"),
            ("roles", "ngo"),
            ("receiver", "shelter"),
            ("own_services", own),
            ("providers", providers),
        ]
        yield f"body-{name}", render(header, data)


# --- key files (§3.1, §3.5) -------------------------------------------------------------------
#
# keyfile-*: `passphrase` (hex of its UTF-8 bytes); the bytes are the key file. When ok:
#     `agency`, `signing_public` (hex Ed25519), `x25519_public` (hex, current key),
#     `previous_x25519_publics` (comma-separated hex, oldest first), `nats_public` (U...),
#     `previous_nats_public` (or none), `storage_key` (hex); for an admin key `ed25519_public`.
#     `expect` is ok or `refused` (the reader MUST refuse it, KeyFileError).

PASSPHRASE = "correct horse battery staple"


def _sealed_file(outer: dict[str, Any], secret: dict[str, Any], passphrase: str) -> bytes:
    salt = fixed("keyfile salt")[:16]
    nonce = fixed("keyfile nonce")[:24]
    key = _derive(passphrase.encode(), salt, INTERACTIVE)
    ciphertext = SecretBox(key).encrypt(json.dumps(secret).encode(), nonce).ciphertext
    doc = {
        **outer,
        "kdf": {
            "alg": "argon2id13",
            "opslimit": INTERACTIVE.opslimit,
            "memlimit": INTERACTIVE.memlimit,
            "salt": b64(salt),
        },
        "nonce": b64(nonce),
        "ciphertext": b64(ciphertext),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


PREVIOUS_ENC = PrivateKey(fixed("police x25519 0"))
AGENCY_SECRET: dict[str, Any] = {
    "agency": "police",
    "name": "National Police",
    "signing_seed": b64(bytes(POLICE_SIGN)),
    "x25519_secret": b64(bytes(POLICE_ENC)),
    "previous_x25519_secrets": [b64(bytes(PREVIOUS_ENC))],
    "nats_seed": nats_seed("police nats 1").decode(),
    "previous_nats_seed": nats_seed("police nats 0").decode(),
    "storage_key": b64(fixed("police storage key")),
}


def _keyfile_vectors() -> list[tuple[str, str, str, str, bytes]]:
    outer = {"format": "nrm-keyfile/1", "agency": "police"}
    admin = SigningKey(fixed("admin 1"))
    bad_nats = dict(AGENCY_SECRET, nats_seed=nats_seed("x").decode().replace("SU", "SA", 1))
    return [
        (
            "ok-agency",
            "an agency key file after one rotation",
            "ok",
            PASSPHRASE,
            _sealed_file(outer, AGENCY_SECRET, PASSPHRASE),
        ),
        (
            "ok-admin",
            "an administrator's root key",
            "ok",
            PASSPHRASE,
            _sealed_file(
                {"format": "nrm-admin-key/1"}, {"ed25519_seed": b64(bytes(admin))}, PASSPHRASE
            ),
        ),
        (
            "wrong-passphrase",
            "opened with another passphrase",
            "refused",
            PASSPHRASE + "!",
            _sealed_file(outer, AGENCY_SECRET, PASSPHRASE),
        ),
        (
            "agency-mismatch",
            "the outer agency differs from the sealed one",
            "refused",
            PASSPHRASE,
            _sealed_file(
                {"format": "nrm-keyfile/1", "agency": "shelter"}, AGENCY_SECRET, PASSPHRASE
            ),
        ),
        (
            "not-a-user-seed",
            "nats_seed is an account seed (SA...), not a user seed",
            "refused",
            PASSPHRASE,
            _sealed_file(outer, bad_nats, PASSPHRASE),
        ),
    ]


def keyfile_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, expect, passphrase, data in _keyfile_vectors():
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            ("passphrase", passphrase.encode()),
        ]
        if expect == "ok" and name == "ok-admin":
            header.append(("ed25519_public", bytes(SigningKey(fixed("admin 1")).verify_key)))
        elif expect == "ok":
            header += [
                ("agency", "police"),
                ("signing_public", bytes(POLICE_SIGN.verify_key)),
                ("x25519_public", bytes(POLICE_ENC.public_key)),
                ("previous_x25519_publics", bytes(PREVIOUS_ENC.public_key).hex()),
                ("nats_public", nats_public_key(nats_seed("police nats 1"))),
                ("previous_nats_public", nats_public_key(nats_seed("police nats 0"))),
                ("storage_key", fixed("police storage key")),
            ]
        yield f"keyfile-{name}", render(header, data)


# --- Merkle proofs (§9.1, §9.2) ----------------------------------------------------------------
#
# merkle-*: `leaves` (comma-separated hex of each leaf's bytes; leaf hash SHA-256(0x00 || leaf)),
#     then for `proof: inclusion` `index`, `size`, `root`; for `proof: consistency` `first`,
#     `second`, `first_root`, `second_root`. The bytes are the proof: its 32-byte hashes
#     concatenated (possibly none). `expect` ok or the reason.

LEAVES = [f"leaf {n}".encode() for n in range(7)]


def _tree() -> Any:
    from keys.merkle import MemoryNodeStore, MerkleTree

    tree = MerkleTree(MemoryNodeStore())
    for leaf in LEAVES:
        tree.append(leaf_hash(leaf))
    return tree


def _merkle_vectors() -> list[tuple[str, str, str, list[tuple[str, object]], bytes]]:
    tree = _tree()

    def inclusion(
        index: int, size: int, proof: list[bytes] | None = None
    ) -> tuple[list[tuple[str, object]], bytes]:
        hashes = tree.inclusion_proof(index, size) if proof is None else proof
        header: list[tuple[str, object]] = [
            ("proof", "inclusion"),
            ("index", index),
            ("size", size),
            ("root", tree.root(size)),
        ]
        return header, b"".join(hashes)

    def consistency(
        first: int, second: int, proof: list[bytes] | None = None, first_root: bytes | None = None
    ) -> tuple[list[tuple[str, object]], bytes]:
        hashes = tree.consistency_proof(first, second) if proof is None else proof
        header: list[tuple[str, object]] = [
            ("proof", "consistency"),
            ("first", first),
            ("second", second),
            ("first_root", tree.root(first) if first_root is None else first_root),
            ("second_root", tree.root(second)),
        ]
        return header, b"".join(hashes)

    good = tree.inclusion_proof(2, 7)
    flipped = [bytes([good[0][0] ^ 1]) + good[0][1:], *good[1:]]
    cons = tree.consistency_proof(3, 7)
    cases: list[tuple[str, str, str, tuple[list[tuple[str, object]], bytes]]] = [
        ("inclusion-ok-first", "leaf 0 of 7", "ok", inclusion(0, 7)),
        ("inclusion-ok-last", "leaf 6 of 7 (the right edge)", "ok", inclusion(6, 7)),
        ("inclusion-ok-single", "leaf 0 of a tree of 1: empty proof", "ok", inclusion(0, 1)),
        ("inclusion-ok-middle", "leaf 2 of 7", "ok", inclusion(2, 7)),
        (
            "inclusion-flipped",
            "one bit of the first hash flipped",
            "bad-inclusion-proof",
            inclusion(2, 7, flipped),
        ),
        (
            "inclusion-short",
            "the last hash missing",
            "bad-inclusion-proof",
            inclusion(2, 7, good[:-1]),
        ),
        (
            "inclusion-long",
            "a hash too many",
            "bad-inclusion-proof",
            inclusion(2, 7, [*good, good[0]]),
        ),
        (
            "inclusion-other-index",
            "the proof of leaf 2 claimed for leaf 3",
            "bad-inclusion-proof",
            inclusion(3, 7, good),
        ),
        (
            "inclusion-index-outside",
            "index 7 of a tree of 7",
            "bad-inclusion-proof",
            (
                [("proof", "inclusion"), ("index", 7), ("size", 7), ("root", tree.root(7))],
                b"".join(good),
            ),
        ),
        ("consistency-ok", "3 to 7", "ok", consistency(3, 7)),
        (
            "consistency-ok-power-of-two",
            "4 to 7 (the first root is not in the proof)",
            "ok",
            consistency(4, 7),
        ),
        ("consistency-ok-1-2", "1 to 2", "ok", consistency(1, 2)),
        ("consistency-ok-equal", "7 to 7: empty proof, equal roots", "ok", consistency(7, 7)),
        (
            "consistency-ok-from-empty",
            "0 to 7: empty proof, the empty root",
            "ok",
            consistency(0, 7),
        ),
        (
            "consistency-flipped",
            "one bit of the last hash flipped",
            "bad-consistency-proof",
            consistency(3, 7, [*cons[:-1], bytes([cons[-1][0] ^ 1]) + cons[-1][1:]]),
        ),
        (
            "consistency-empty-proof",
            "3 to 7 with no proof",
            "bad-consistency-proof",
            consistency(3, 7, []),
        ),
        (
            "consistency-wrong-first-root",
            "the root of size 2 given as that of size 3",
            "bad-consistency-proof",
            consistency(3, 7, None, tree.root(2)),
        ),
        (
            "consistency-equal-with-proof",
            "7 to 7 with a non-empty proof",
            "bad-consistency-proof",
            consistency(7, 7, cons[:1]),
        ),
        (
            "consistency-first-larger",
            "first 7 above second 3",
            "bad-consistency-proof",
            (
                [
                    ("proof", "consistency"),
                    ("first", 7),
                    ("second", 3),
                    ("first_root", tree.root(7)),
                    ("second_root", tree.root(3)),
                ],
                b"",
            ),
        ),
    ]
    return [
        (name, comment, expect, header, data) for name, comment, expect, (header, data) in cases
    ]


def merkle_vectors() -> Iterator[tuple[str, str]]:
    leaves = ",".join(leaf.hex() for leaf in LEAVES)
    for name, comment, expect, header, data in _merkle_vectors():
        full: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            ("leaves", leaves),
            *header,
        ]
        yield f"merkle-{name}", render(full, data)


# --- key ids (§2.2) and identity files (§2.3) -------------------------------------------------
#
# kid-*: `key_type` ed25519 | x25519, `kid`; the bytes are the 32-byte public key.
# identity-*: the bytes are an identity.json; when ok `agency`, `name`, `signing_public`,
#     `signing_kid`, `x25519_public`, `encryption_kid`, `nats_key`, `fingerprint` (§2.4),
#     `proof_statement` (the signed bytes, §2.4) and `proof`: valid, missing or invalid;
#     else `expect: malformed`.


def kid_vectors() -> Iterator[tuple[str, str]]:
    same = fixed("a 32-byte value")
    for name, comment, key_type, label, public in [
        (
            "ed25519",
            "the police signing key",
            "ed25519",
            SIGNING_KID_LABEL,
            bytes(POLICE_SIGN.verify_key),
        ),
        (
            "x25519",
            "the police encryption key",
            "x25519",
            ENCRYPTION_KID_LABEL,
            bytes(POLICE_ENC.public_key),
        ),
        (
            "same-bytes-ed25519",
            "32 bytes taken as an Ed25519 key",
            "ed25519",
            SIGNING_KID_LABEL,
            same,
        ),
        (
            "same-bytes-x25519",
            "the same 32 bytes as an X25519 key: another id",
            "x25519",
            ENCRYPTION_KID_LABEL,
            same,
        ),
    ]:
        header: list[tuple[str, object]] = [
            ("expect", "ok"),
            ("comment", comment),
            ("key_type", key_type),
            ("kid", key_id(label, public)),
        ]
        yield f"kid-{name}", render(header, public)


def _police_identity() -> PublicIdentity:
    return PublicIdentity(
        agency="police",
        name="National Police",
        signing_key=POLICE_SIGN.verify_key,
        encryption_key=POLICE_ENC.public_key,
        nats_key=nats_public_key(nats_seed("police nats 1")),
    )


def _identity_doc(**changes: Any) -> dict[str, Any]:
    statement = proof_statement(_police_identity())
    doc: dict[str, Any] = {
        "agency": "police",
        "encryption_key": {
            "kid": encryption_kid(POLICE_ENC.public_key),
            "x25519": b64(bytes(POLICE_ENC.public_key)),
        },
        "format": "nrm-identity/1",
        "name": "National Police",
        "nats_key": nats_public_key(nats_seed("police nats 1")),
        "proof": {"ed25519": b64(POLICE_SIGN.sign(statement).signature)},
        "signing_key": {
            "ed25519": b64(bytes(POLICE_SIGN.verify_key)),
            "kid": signing_kid(POLICE_SIGN.verify_key),
        },
    }
    doc.update(changes)
    return doc


def identity_vectors() -> Iterator[tuple[str, str]]:
    def text(doc: dict[str, Any]) -> bytes:
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    wrong_kid = _identity_doc(
        signing_key={"ed25519": b64(bytes(POLICE_SIGN.verify_key)), "kid": "0" * 32}
    )
    unpadded = _identity_doc(
        signing_key={
            "ed25519": b64(bytes(POLICE_SIGN.verify_key)).rstrip("="),
            "kid": signing_kid(POLICE_SIGN.verify_key),
        }
    )
    police = _police_identity()
    statement = proof_statement(police)
    proofs = {
        "ok": "valid",
        "no-proof": "missing",
        "proof-other-key": "invalid",
    }
    without_proof = {k: v for k, v in _identity_doc().items() if k != "proof"}
    other_key = _identity_doc(proof={"ed25519": b64(SHELTER_SIGN.sign(statement).signature)})
    short_proof = _identity_doc(proof={"ed25519": b64(bytes(63))})

    def fields(data: bytes) -> list[tuple[str, object]]:
        doc = json.loads(data)
        proof = next(p for name, p in proofs.items() if text(vector_docs[name]) == data)
        assert doc["agency"] == "police"
        return [
            ("agency", "police"),
            ("name", "National Police"),
            ("signing_public", bytes(POLICE_SIGN.verify_key)),
            ("signing_kid", signing_kid(POLICE_SIGN.verify_key)),
            ("x25519_public", bytes(POLICE_ENC.public_key)),
            ("encryption_kid", encryption_kid(POLICE_ENC.public_key)),
            ("nats_key", nats_public_key(nats_seed("police nats 1"))),
            ("fingerprint", fingerprint(police)),
            ("proof_statement", statement),
            ("proof", proof),
        ]

    vector_docs = {"ok": _identity_doc(), "no-proof": without_proof, "proof-other-key": other_key}
    vectors = [
        ("ok", "the police identity, with its proof of possession", "ok", text(_identity_doc())),
        (
            "no-proof",
            "an identity written before proofs of possession: readable, proof missing",
            "ok",
            text(without_proof),
        ),
        (
            "proof-other-key",
            "a proof signed by another agency's key: readable, proof invalid",
            "ok",
            text(other_key),
        ),
        ("proof-short", "a proof of 63 bytes", "malformed", text(short_proof)),
        ("kid-mismatch", "a signing kid that is not its key's id", "malformed", text(wrong_kid)),
        (
            "unpadded-base64",
            "the signing key in base64 without padding",
            "malformed",
            text(unpadded),
        ),
        (
            "other-format",
            "format nrm-identity/2",
            "malformed",
            text(_identity_doc(format="nrm-identity/2")),
        ),
        (
            "bad-agency-id",
            "an agency id with an uppercase letter",
            "malformed",
            text(_identity_doc(agency="Police")),
        ),
    ]
    yield from rendered("identity", vectors, fields)


# --- identification decisions (§8.7) ---------------------------------------------------------
#
# decision-*: the bytes are a signed decision; the verifier's key history holds
#     `signer_ed25519_public` as key `kid` of `authority` from `valid_from`, revoked at
#     `revoked_at` (none: never); its directory lists `authority` as a competent authority
#     of the stages `decides`. With `reason` and `salt`, they came beside the decision and
#     are checked against its digest. With `first_stage` (base64 of a signed decision the
#     receiver holds), the decision is judged as its second stage under
#     `second_stage_min_days`. When ok: every member by name (digest in hex).

AUTHORITY_SIGN = SigningKey(fixed("authority ed25519 1"))
CASE = fixed("case 1")[:16].hex()
SALT = fixed("decision salt 1")[:16]


def _authority_key(*, revoked: bool | None) -> list[tuple[str, object]]:
    """The header lines naming the one key window of the authority's key history (with
    `revoked_at` unless `revoked` is None: a day after NOW when True, none when False)."""
    lines: list[tuple[str, object]] = [
        ("authority", "authority"),
        ("kid", signing_kid(AUTHORITY_SIGN.verify_key)),
        ("signer_ed25519_public", bytes(AUTHORITY_SIGN.verify_key)),
        ("valid_from", CREATED),
    ]
    if revoked is not None:
        lines.append(("revoked_at", NOW + DAY if revoked else None))
    return lines


def _decision(**changes: Any) -> Decision:
    base = Decision(
        decision_id=fixed("decision 1")[:16].hex(),
        authority="authority",
        case_id=CASE,
        stage="first",
        outcome="positive",
        reason_digest=None,
        supersedes=None,
        decided_at=NOW,
        age_route="adult",
    )
    return dataclasses.replace(base, **changes)


def _negative(reason: str, **changes: Any) -> Decision:
    return _decision(outcome="negative", reason_digest=reason_digest(SALT, reason), **changes)


def _signed_decision_raw(fields: list[object], label: bytes = DECISION_LABEL) -> bytes:
    body = codec.pack(fields)
    signature = AUTHORITY_SIGN.sign(label + b"\x00" + body).signature
    return codec.pack([1, body, signing_kid(AUTHORITY_SIGN.verify_key), signature])


def _decision_vectors() -> list[tuple[str, str, str, Decision | None, str | None, bytes]]:
    """(name, comment, expect, decision for the ok header, reason beside it, bytes)."""
    first = _decision()
    second = _negative("act-not-established", stage="second", decided_at=NOW + 40 * DAY)
    flipped = bytearray(sign_decision(first, AUTHORITY_SIGN))
    flipped[-1] ^= 1
    first_fields: list[object] = [1, *(getattr(first, n) for n in Decision.WIRE.fields)]
    eleven = [*first_fields, "extra"]
    no_digest = list(first_fields)
    no_digest[5] = "negative"
    child = _negative("means-not-established", stage="second", age_route="child")
    early = _negative("act-not-established", stage="second", decided_at=NOW + 10 * DAY)
    return [
        (
            "ok-first-positive",
            "a positive first stage",
            "ok",
            first,
            None,
            sign_decision(first, AUTHORITY_SIGN),
        ),
        (
            "ok-second-negative",
            "a negative second stage, reason and salt beside it",
            "ok",
            second,
            "act-not-established",
            sign_decision(second, AUTHORITY_SIGN),
        ),
        (
            "bad-signature",
            "last signature byte flipped",
            "bad-signature",
            None,
            None,
            bytes(flipped),
        ),
        (
            "other-label",
            "signed under the audit-event label",
            "bad-signature",
            None,
            None,
            _signed_decision_raw(first_fields, b"nrm/v1/audit-event"),
        ),
        (
            "eleven-fields",
            "an extra member after age_route",
            "malformed",
            None,
            None,
            _signed_decision_raw(eleven),
        ),
        (
            "negative-without-digest",
            "negative, with a nil reason digest",
            "malformed",
            None,
            None,
            _signed_decision_raw(no_digest),
        ),
        (
            "reason-mismatch",
            "the reason beside it is not the one digested",
            "bad-decision",
            None,
            "purpose-not-established",
            sign_decision(second, AUTHORITY_SIGN),
        ),
        (
            "reason-of-other-stage",
            "a first-stage reason on a second-stage decision",
            "unknown-reason-code",
            None,
            "no-indicators",
            sign_decision(second, AUTHORITY_SIGN),
        ),
        (
            "means-on-child-route",
            "means-not-established for a child",
            "bad-decision",
            None,
            "means-not-established",
            sign_decision(child, AUTHORITY_SIGN),
        ),
        (
            "authority-decides-first-only",
            "a second-stage decision by an authority that decides the first stage only",
            "not-for-this-role",
            None,
            "act-not-established",
            sign_decision(second, AUTHORITY_SIGN),
        ),
        (
            "too-early",
            "a second stage 10 days after the first, 30 required",
            "too-early",
            None,
            "act-not-established",
            sign_decision(early, AUTHORITY_SIGN),
        ),
        (
            "revoked-key",
            "decided after the authority's key was revoked",
            "revoked-key",
            None,
            None,
            sign_decision(_decision(decided_at=NOW + 2 * DAY), AUTHORITY_SIGN),
        ),
    ]


#: The vectors judged as a second stage after FIRST_STAGE (the signed ok-first-positive).
SECOND_STAGES = frozenset({"ok-second-negative", "too-early"})
FIRST_STAGE = b64(sign_decision(_decision(), AUTHORITY_SIGN))


def decision_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, expect, decision, reason, data in _decision_vectors():
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            *_authority_key(revoked=name == "revoked-key"),
            ("decides", "first" if name == "authority-decides-first-only" else "first,second"),
            ("reason", reason),
            ("salt", SALT if reason is not None else None),
            ("first_stage", FIRST_STAGE if name in SECOND_STAGES else None),
            ("second_stage_min_days", 30 if name in SECOND_STAGES else None),
        ]
        if decision is not None:
            header += [(n, getattr(decision, n)) for n in Decision.WIRE.fields if n != "authority"]
        yield f"decision-{name}", render(header, data)


# body-identification-decision-*: `kind`, `roles` (the receiver's), `sender` (the envelope's
#     authenticated sender), the decision vectors' key window (`authority`, `kid`,
#     `signer_ed25519_public`, `valid_from`), `decides` (the stages the directory lets
#     `authority` decide, or `none`: it lists no such agency), `shared` (yes: the receiver
#     holds the body's pair with the sender; erased: it does, and erased the referral it
#     received under it, §8.5), `first_stage` (base64 of the signed positive
#     first stage of the case the receiver holds, or none), `second_stage_min_days`,
#     `created` (the envelope's), `clock_skew_seconds`, `bound` (the case_id of the
#     decisions of the decision's authority the receiver holds under the body's pair, or
#     none), `held_stages` (the stages of the decision's case it holds decisions of,
#     comma-separated, or none), `supersedable` (the ids of the decisions of the decision's
#     case and stage it holds that none it holds supersedes, comma-separated, or none); the
#     bytes are the body, judged by §6.4 and §8.7 "The
#     message" in order.


def _decision_body(
    decision: Decision, reason: str | None = None, salt: bytes | None = None, **changes: Any
) -> bytes:
    fields: dict[str, Any] = {
        "signed": sign_decision(decision, AUTHORITY_SIGN),
        "owner": "police",
        "referral_id": RID,
        "reason": reason,
        "salt": salt,
    }
    fields.update(changes)
    return codec.pack([1, *fields.values()])


def _identification_vectors() -> list[tuple[str, str, str, dict[str, object], bytes]]:
    """(name, comment, expect, header changes, body)."""
    first = _decision()
    negative = _negative("no-indicators")
    later = fixed("decision 2")[:16].hex()
    second = _decision(decision_id=later, stage="second", decided_at=NOW + 40 * DAY)
    early = _decision(decision_id=later, stage="second", decided_at=NOW + 10 * DAY)
    flipped = bytearray(sign_decision(first, AUTHORITY_SIGN))
    flipped[-1] ^= 1
    bound = CASE
    held = {"first_stage": FIRST_STAGE, "bound": bound, "held_stages": "first"}
    later_held = {**held, "created": NOW + 40 * DAY}
    return [
        ("ok", "a positive first stage, without reason", "ok", {}, _decision_body(first)),
        (
            "ok-negative-with-reason",
            "a negative first stage, its reason and salt beside it",
            "ok",
            {},
            _decision_body(negative, "no-indicators", SALT),
        ),
        (
            "ok-negative-without-reason",
            "a negative first stage to a provider: no reason, no salt",
            "ok",
            {},
            _decision_body(negative),
        ),
        (
            "ok-second",
            "a positive second stage 40 days on",
            "ok",
            later_held,
            _decision_body(second),
        ),
        (
            "ok-created-at-the-skew",
            "the envelope created 300 s (the clock skew) after decided_at",
            "ok",
            {"created": NOW + 300},
            _decision_body(first),
        ),
        (
            "malformed",
            "a seventh item",
            "malformed",
            {},
            codec.pack([1, sign_decision(first, AUTHORITY_SIGN), "police", RID, None, None, 0]),
        ),
        (
            "not-an-authority",
            "the directory lists no deciding agency of that id",
            "not-for-this-role",
            {"decides": None},
            _decision_body(first),
        ),
        (
            "first-stage-only",
            "a second stage from an authority that decides the first stage only",
            "not-for-this-role",
            {**later_held, "decides": "first"},
            _decision_body(second),
        ),
        (
            "bad-signature",
            "last signature byte flipped",
            "bad-signature",
            {},
            _decision_body(first, signed=bytes(flipped)),
        ),
        (
            "other-sender",
            "the authority's decision sent by another agency",
            "unexpected",
            {"sender": "police"},
            _decision_body(first),
        ),
        (
            "other-sender-first-stage-unverifiable",
            "a second stage sent by another agency while the held first stage no longer"
            " verifies: the sender check comes first",
            "unexpected",
            {**later_held, "sender": "police", "first_stage": b64(bytes(flipped))},
            _decision_body(second),
        ),
        (
            "not-shared",
            "a pair the receiver does not hold with the authority",
            "not-shared",
            {"shared": "no"},
            _decision_body(first),
        ),
        (
            "erased",
            "a pair whose referral the receiver erased (a late copy after consent withdrawal)",
            "erased",
            {"shared": "erased"},
            _decision_body(first),
        ),
        (
            "reason-without-salt",
            "a reason but no salt",
            "bad-decision",
            {},
            _decision_body(negative, "no-indicators"),
        ),
        (
            "wrong-reason",
            "a first-stage code that is not the one digested",
            "bad-decision",
            {},
            _decision_body(negative, "duplicate", SALT),
        ),
        (
            "unknown-reason",
            "a code of no stage",
            "unknown-reason-code",
            {},
            _decision_body(negative, "not-credible", SALT),
        ),
        (
            "second-without-first",
            "a second stage the receiver holds no first stage for",
            "bad-decision",
            {"created": NOW + 40 * DAY},
            _decision_body(second),
        ),
        (
            "too-early",
            "a second stage 10 days on",
            "too-early",
            {**held, "created": NOW + 10 * DAY},
            _decision_body(early),
        ),
        (
            "post-dated",
            "a second stage dated 40 days on, in an envelope created with the first stage",
            "misdated",
            held,
            _decision_body(second),
        ),
        (
            "ok-late-copy",
            "a late copy (a provider linked later): the envelope created 40 days after"
            " decided_at, the key valid still",
            "ok",
            {"created": NOW + 40 * DAY},
            _decision_body(first),
        ),
        (
            "late-copy-revoked-since",
            "a late copy whose key was revoked after decided_at, before the envelope's created",
            "revoked-key",
            {"created": NOW + 2 * DAY, "revoked_at": NOW + DAY},
            _decision_body(first),
        ),
        (
            "dated-ahead",
            "decided_at 301 s after the envelope's created",
            "misdated",
            {"created": NOW - 301},
            _decision_body(first),
        ),
        (
            "other-case",
            "the receiver holds decisions of another case of the authority under the pair",
            "other-case",
            {"bound": fixed("case 2")[:16].hex()},
            _decision_body(first),
        ),
        (
            "already-decided",
            "a second first stage of the case, superseding nothing",
            "already-decided",
            held,
            _decision_body(negative, "no-indicators", SALT),
        ),
        (
            "ok-supersedes",
            "after reconsideration, a positive first stage replacing the negative one held",
            "ok",
            {**held, "first_stage": None, "supersedable": negative.decision_id},
            _decision_body(_decision(decision_id=later, supersedes=negative.decision_id)),
        ),
        (
            "supersedes-what-is-not-held",
            "a decision superseding one the receiver does not hold (or holds superseded)",
            "unexpected",
            {**held, "first_stage": None},
            _decision_body(_decision(decision_id=later, supersedes=negative.decision_id)),
        ),
        (
            "supersedes-another-stage",
            "a second stage superseding the first stage held",
            "unexpected",
            later_held,
            _decision_body(dataclasses.replace(second, supersedes=first.decision_id)),
        ),
    ]


def identification_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, expect, changes, data in _identification_vectors():
        state: dict[str, object] = {
            "sender": "authority",
            "decides": "first,second",
            "shared": "yes",
            "first_stage": None,
            "second_stage_min_days": 30,
            "created": NOW,
            "clock_skew_seconds": 300,
            "bound": None,
            "held_stages": None,
            "supersedable": None,
            **changes,
        }
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            ("kind", "identification-decision"),
            ("roles", "police"),
            *_authority_key(revoked=None),
            *state.items(),
        ]
        yield f"body-identification-decision-{name}", render(header, data)


# --- service catalogues and capacity records (§8.8) -------------------------------------------
#
# catalogue-*: the bytes are a signed catalogue file; the verifier's directory lists `agency`
#     with `roles` and one signing key, `signer_ed25519_public`, with the `key_*` validity
#     fields; `current` is base64 of the last catalogue it accepted from that agency (or
#     none); `now`. When ok: `version`, `services` (the service ids, comma-separated).
# capacity-*: the bytes are a signed capacity record, judged against `catalogue` (base64 of
#     the provider's signed catalogue, which verifies) and `last_seq` (or none), with the
#     same directory and `now`. When ok: every member by name.

SHELTER_CATALOGUE = Catalogue(
    agency="shelter",
    version=3,
    expires=NOW + 30 * DAY,
    services=(
        Service(
            service_id=fixed("service 1")[:8].hex(),
            type="shelter",
            languages=("en", "lt", "ro"),
            suitable_for=("children", "families", "women"),
            accessibility=("step_free",),
            regions=("LT-VL",),
            capacity_unit="places",
        ),
        Service(
            service_id=fixed("service 2")[:8].hex(),
            type="psychological",
            languages=("en", "lt"),
            suitable_for=("men", "women"),
            accessibility=(),
            regions=("LT",),
            capacity_unit="sessions",
        ),
    ),
)
SHELTER_CATALOGUE_FILE = sign_catalogue(SHELTER_CATALOGUE, SHELTER_SIGN)


def _catalogue_file(doc: Any, label: bytes = CATALOGUE_LABEL) -> bytes:
    """`doc` as the signed part, signed by the shelter under `label` (no checks)."""
    signed = canonical_json(doc)
    sig = SHELTER_SIGN.sign(label + b"\x00" + signed).signature
    kid = signing_kid(SHELTER_SIGN.verify_key)
    return canonical_json({"signatures": [{"keyid": kid, "sig": b64(sig)}], "signed": doc})


def _catalogue_vectors() -> list[tuple[str, str, str, tuple[str, ...], bytes | None, bytes]]:
    """(name, comment, expect, the agency's roles, current, bytes)."""
    doc = json.loads(encode_catalogue(SHELTER_CATALOGUE))
    v4 = dataclasses.replace(SHELTER_CATALOGUE, version=4)
    changed = json.loads(encode_catalogue(SHELTER_CATALOGUE))
    changed["services"][0]["languages"] = ["en"]
    unsorted = json.loads(encode_catalogue(SHELTER_CATALOGUE))
    unsorted["services"][0]["languages"] = ["ro", "en", "lt"]
    address = json.loads(encode_catalogue(SHELTER_CATALOGUE))
    address["services"][0]["address"] = "Street 1"
    two = json.loads(SHELTER_CATALOGUE_FILE)
    two["signatures"].append(two["signatures"][0])
    tampered = json.loads(SHELTER_CATALOGUE_FILE)
    tampered["signed"]["services"][0]["suitable_for"] = ["men"]
    expired = dataclasses.replace(SHELTER_CATALOGUE, expires=NOW)
    ngo = ("ngo",)
    return [
        (
            "ok",
            "version 3, two services, signed by the shelter",
            "ok",
            ngo,
            None,
            SHELTER_CATALOGUE_FILE,
        ),
        (
            "ok-newer",
            "version 4 over version 3",
            "ok",
            ngo,
            SHELTER_CATALOGUE_FILE,
            sign_catalogue(v4, SHELTER_SIGN),
        ),
        (
            "ok-same-version-unchanged",
            "version 3 again, the same content",
            "ok",
            ngo,
            SHELTER_CATALOGUE_FILE,
            SHELTER_CATALOGUE_FILE,
        ),
        (
            "rolled-back",
            "version 3 after version 4",
            "rolled-back",
            ngo,
            sign_catalogue(v4, SHELTER_SIGN),
            SHELTER_CATALOGUE_FILE,
        ),
        (
            "same-version-changed",
            "version 3 with fewer languages after version 3",
            "rolled-back",
            ngo,
            SHELTER_CATALOGUE_FILE,
            _catalogue_file(changed),
        ),
        (
            "expired",
            "expires at the verifier's now",
            "expired-metadata",
            ngo,
            None,
            sign_catalogue(expired, SHELTER_SIGN),
        ),
        (
            "not-a-provider",
            "the agency holds only the police role",
            "not-for-this-role",
            ("police",),
            None,
            SHELTER_CATALOGUE_FILE,
        ),
        (
            "bad-signature",
            "suitable_for changed after signing",
            "bad-signature",
            ngo,
            None,
            canonical_json(tampered),
        ),
        (
            "other-label",
            "signed under the directory label",
            "bad-signature",
            ngo,
            None,
            _catalogue_file(doc, b"nrm/v1/directory"),
        ),
        (
            "two-signatures",
            "the one signature listed twice",
            "malformed",
            ngo,
            None,
            canonical_json(two),
        ),
        (
            "languages-unsorted",
            "languages not sorted, correctly signed",
            "malformed",
            ngo,
            None,
            _catalogue_file(unsorted),
        ),
        (
            "address-member",
            "a service with an address member, correctly signed",
            "malformed",
            ngo,
            None,
            _catalogue_file(address),
        ),
    ]


def _capacity_raw(fields: list[object]) -> bytes:
    body = codec.pack(fields)
    sig = SHELTER_SIGN.sign(CAPACITY_LABEL + b"\x00" + body).signature
    return codec.pack([1, body, signing_kid(SHELTER_SIGN.verify_key), sig])


def _capacity_vectors() -> list[tuple[str, str, str, int | None, Capacity | None, bytes]]:
    """(name, comment, expect, last_seq, the record when ok, bytes)."""
    places = SHELTER_CATALOGUE.services[0].service_id
    record = Capacity("shelter", places, 12, 3, 20, NOW - 60, NOW + 1800)

    def raw(**changes: object) -> bytes:
        values = {n: getattr(record, n) for n in Capacity.WIRE.fields} | changes
        return _capacity_raw([1, *values.values()])

    flipped = bytearray(sign_capacity(record, SHELTER_SIGN))
    flipped[-1] ^= 1
    return [
        (
            "ok",
            "3 of 20 places free, seq 12 after 11",
            "ok",
            11,
            record,
            sign_capacity(record, SHELTER_SIGN),
        ),
        (
            "ok-first",
            "the first record seen of the service",
            "ok",
            None,
            record,
            sign_capacity(record, SHELTER_SIGN),
        ),
        (
            "seq-not-above",
            "seq 12 again",
            "rolled-back",
            12,
            None,
            sign_capacity(record, SHELTER_SIGN),
        ),
        (
            "expired",
            "expired a second before now",
            "expired",
            11,
            None,
            sign_capacity(
                dataclasses.replace(record, as_of=NOW - 600, expires=NOW - 1), SHELTER_SIGN
            ),
        ),
        (
            "free-above-total",
            "21 free of 20, correctly signed",
            "malformed",
            11,
            None,
            raw(free=21),
        ),
        (
            "long-lived",
            "expires 3601 s after as_of, correctly signed",
            "malformed",
            11,
            None,
            raw(expires=NOW - 60 + 3601),
        ),
        (
            "future-as-of",
            "dated a year ahead, with its hour of life then, correctly signed",
            "unexpected",
            11,
            None,
            sign_capacity(
                dataclasses.replace(record, as_of=NOW + 365 * DAY, expires=NOW + 365 * DAY + 60),
                SHELTER_SIGN,
            ),
        ),
        (
            "unknown-service",
            "a service id not in the catalogue",
            "unexpected",
            11,
            None,
            raw(service_id="0" * 16),
        ),
        ("bad-signature", "last signature byte flipped", "bad-signature", 11, None, bytes(flipped)),
    ]


def _provider_key() -> list[tuple[str, object]]:
    return [
        ("agency", "shelter"),
        ("signer_ed25519_public", bytes(SHELTER_SIGN.verify_key)),
        ("key_valid_from", CREATED),
        ("key_valid_until", None),
        ("key_status", "active"),
        ("key_revoked_at", None),
        ("now", NOW),
    ]


def catalogue_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, expect, roles, current, data in _catalogue_vectors():
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            *_provider_key(),
            ("roles", ",".join(roles)),
            ("current", None if current is None else b64(current)),
        ]
        if expect == "ok":
            signed = json.loads(data)["signed"]
            header += [
                ("version", signed["version"]),
                ("services", ",".join(s["service_id"] for s in signed["services"])),
            ]
        yield f"catalogue-{name}", render(header, data)
    for name, comment, expect, last_seq, record, data in _capacity_vectors():
        header = [
            ("expect", expect),
            ("comment", comment),
            *_provider_key(),
            ("roles", "ngo"),
            ("catalogue", b64(SHELTER_CATALOGUE_FILE)),
            ("last_seq", last_seq),
        ]
        if record is not None:
            header += [(n, getattr(record, n)) for n in Capacity.WIRE.fields]
        yield f"capacity-{name}", render(header, data)


# --- protection notices (§8.9) ----------------------------------------------------------------
#
# protection-*: the bytes are a signed protection notice; the verifier's key history holds the
#     authority's key as for decision-* (`authority`, `kid`, `signer_ed25519_public`,
#     `valid_from`, `revoked_at`); `held` is base64 of the signed notice it holds last of that
#     protection of the case (or none), judged with `reflection_min_days`. When ok: every
#     member by name.


def _notice(after: Notice | None = None, **changes: Any) -> Notice:
    fields: dict[str, Any] = {
        "notice_id": fixed(f"notice {0 if after is None else 1}")[:16].hex(),
        "authority": "authority",
        "case_id": CASE,
        "protection": "reflection",
        "event": "started",
        "starts_on": "2026-01-01",
        "ends_on": "2026-02-15",
        "reason": None,
        "at": NOW if after is None else after.at + DAY,
        "previous": None if after is None else after.notice_id,
    }
    return Notice(**(fields | changes))


def _notice_raw(fields: list[object]) -> bytes:
    body = codec.pack(fields)
    signature = AUTHORITY_SIGN.sign(PROTECTION_LABEL + b"\x00" + body).signature
    return codec.pack([1, body, signing_kid(AUTHORITY_SIGN.verify_key), signature])


def _protection_vectors() -> list[tuple[str, str, str, Notice | None, Notice | None, bytes]]:
    """(name, comment, expect, held, the notice for the ok header, bytes)."""
    started = _notice()
    extended = _notice(started, event="extended", ends_on="2026-03-15", reason="proceedings")
    flipped = bytearray(sign_notice(started, AUTHORITY_SIGN))
    flipped[-1] ^= 1
    fields: list[object] = [1, *(getattr(extended, n) for n in Notice.WIRE.fields)]
    no_reason = list(fields)
    no_reason[8] = None
    no_removal_extended = list(fields)
    no_removal_extended[4] = "no-removal"
    sign = lambda n: sign_notice(n, AUTHORITY_SIGN)  # noqa: E731
    return [
        ("ok-started", "a 45-day reflection period starts", "ok", None, started, sign(started)),
        (
            "ok-extended",
            "extended to 73 days for proceedings",
            "ok",
            started,
            extended,
            sign(extended),
        ),
        (
            "bad-signature",
            "last signature byte flipped",
            "bad-signature",
            None,
            None,
            bytes(flipped),
        ),
        (
            "revoked-key",
            "signed after the authority's key was revoked",
            "revoked-key",
            None,
            None,
            sign(_notice(at=NOW + 2 * DAY)),
        ),
        (
            "not-the-next-link",
            "an extension whose previous is not the notice held",
            "unexpected",
            started,
            None,
            sign(dataclasses.replace(extended, previous=fixed("other notice")[:16].hex())),
        ),
        (
            "fork",
            "a second start while a period runs",
            "unexpected",
            started,
            None,
            sign(dataclasses.replace(started, notice_id=fixed("notice 2")[:16].hex())),
        ),
        (
            "too-short",
            "a reflection period of 29 days",
            "unexpected",
            None,
            None,
            sign(_notice(ends_on="2026-01-30")),
        ),
        (
            "extension-earlier",
            "an extension that ends before the period did",
            "unexpected",
            started,
            None,
            sign(dataclasses.replace(extended, ends_on="2026-02-01")),
        ),
        (
            "extended-without-reason",
            "an extension without its reason, correctly signed",
            "malformed",
            started,
            None,
            _notice_raw(no_reason),
        ),
        (
            "no-removal-extended",
            "no-removal extended (never a notice), correctly signed",
            "malformed",
            None,
            None,
            _notice_raw(no_removal_extended),
        ),
    ]


def protection_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, expect, held, notice, data in _protection_vectors():
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            *_authority_key(revoked=name == "revoked-key"),
            ("held", None if held is None else b64(sign_notice(held, AUTHORITY_SIGN))),
            ("reflection_min_days", 30),
        ]
        if notice is not None:
            header += [(n, getattr(notice, n)) for n in Notice.WIRE.fields if n != "authority"]
        yield f"protection-{name}", render(header, data)


# body-protection-notice-*: `kind`, `roles` (the receiver's), `sender` (the envelope's
#     authenticated sender), the authority's key window as for decision-*, `decides` (the
#     stages the directory lets `authority` decide, or `none`), `shared` (yes: the receiver
#     holds the body's pair with the sender; erased: it does, and erased the referral it
#     received under it, §8.5), `bound` (the case_id of the decisions or notices
#     of the notice's authority it holds under the pair, or none), `held` (base64 of the
#     signed notice it holds last of the notice's protection of the case, or none),
#     `reflection_min_days`, `created` (the envelope's), `clock_skew_seconds`; the bytes are
#     the body, judged by §6.4 and §8.9 "Receiver checks" in order.


def _notice_body(signed: bytes) -> bytes:
    return codec.pack([1, signed, "police", RID])


def _notice_message_vectors() -> list[tuple[str, str, str, dict[str, object], bytes]]:
    """(name, comment, expect, header changes, body)."""
    started = _notice()
    extended = _notice(started, event="extended", ends_on="2026-03-15", reason="proceedings")
    no_removal = _notice(protection="no-removal", ends_on=None)
    sign = lambda n: sign_notice(n, AUTHORITY_SIGN)  # noqa: E731
    flipped = bytearray(sign(started))
    flipped[-1] ^= 1
    held = {"held": b64(sign(started)), "created": extended.at}
    return [
        ("ok", "a 45-day reflection period starts", "ok", {}, _notice_body(sign(started))),
        (
            "ok-extended",
            "the next link: extended to 73 days",
            "ok",
            held,
            _notice_body(sign(extended)),
        ),
        (
            "ok-no-removal",
            "no-removal starts, open-ended",
            "ok",
            {},
            _notice_body(sign(no_removal)),
        ),
        (
            "ok-created-at-the-skew",
            "the envelope created 300 s (the clock skew) after at",
            "ok",
            {"created": NOW + 300},
            _notice_body(sign(started)),
        ),
        (
            "malformed",
            "a fifth item",
            "malformed",
            {},
            codec.pack([1, sign(started), "police", RID, None]),
        ),
        (
            "misdated",
            "at 301 s after the envelope's created (dated ahead)",
            "misdated",
            {"created": NOW - 301},
            _notice_body(sign(started)),
        ),
        (
            "ok-late-copy",
            "a late copy (a provider linked later): the envelope created 40 days after at,"
            " the key valid still",
            "ok",
            {"created": NOW + 40 * DAY},
            _notice_body(sign(started)),
        ),
        (
            "late-copy-revoked-since",
            "a late copy whose key was revoked after at, before the envelope's created",
            "revoked-key",
            {"created": NOW + 2 * DAY, "revoked_at": NOW + DAY},
            _notice_body(sign(started)),
        ),
        (
            "not-an-authority",
            "the directory lists no deciding agency of that id",
            "not-for-this-role",
            {"decides": None},
            _notice_body(sign(started)),
        ),
        (
            "second-stage-only",
            "an authority that decides the second stage only grants no protection",
            "not-for-this-role",
            {"decides": "second"},
            _notice_body(sign(started)),
        ),
        (
            "bad-signature",
            "last signature byte flipped",
            "bad-signature",
            {},
            _notice_body(bytes(flipped)),
        ),
        (
            "other-sender",
            "the authority's notice sent by another agency",
            "unexpected",
            {"sender": "police"},
            _notice_body(sign(started)),
        ),
        (
            "not-shared",
            "a pair the receiver does not hold with the authority",
            "not-shared",
            {"shared": "no"},
            _notice_body(sign(started)),
        ),
        (
            "erased",
            "a pair whose referral the receiver erased (a late copy after consent withdrawal)",
            "erased",
            {"shared": "erased"},
            _notice_body(sign(started)),
        ),
        (
            "other-case",
            "the receiver holds decisions of another case of the authority under the pair",
            "other-case",
            {"bound": fixed("case 2")[:16].hex()},
            _notice_body(sign(started)),
        ),
        (
            "fork",
            "a second start while the period the receiver holds runs",
            "unexpected",
            {**held, "created": NOW},
            _notice_body(sign(dataclasses.replace(started, notice_id=fixed("n2")[:16].hex()))),
        ),
        (
            "gap",
            "an extension that follows a notice the receiver does not hold",
            "unexpected",
            {"created": extended.at},
            _notice_body(sign(extended)),
        ),
        (
            "too-short-for-the-policy",
            "a 45-day period under a policy of 60 days",
            "unexpected",
            {"reflection_min_days": 60},
            _notice_body(sign(started)),
        ),
    ]


def notice_message_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, expect, changes, data in _notice_message_vectors():
        state: dict[str, object] = {
            "sender": "authority",
            "decides": "first,second",
            "shared": "yes",
            "bound": None,
            "held": None,
            "reflection_min_days": 30,
            "created": NOW,
            "clock_skew_seconds": 300,
            **changes,
        }
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            ("kind", "protection-notice"),
            ("roles", "police"),
            *_authority_key(revoked=None),
            *state.items(),
        ]
        yield f"body-protection-notice-{name}", render(header, data)


def _mapping_text(comment: str, v1: dict[str, Any]) -> str:
    v2 = as_v2(v1)
    lines = [f"comment: {comment}"]
    for name, doc in (("v1", v1), ("v2", v2)):
        lines += ["", f"{name}:", *textwrap.wrap(b64(canonical_json(doc)), 76)]
    return "\n".join(lines) + "\n"


def mapping_vectors() -> Iterator[tuple[str, str]]:
    """referral-v1-to-v2-*: a schema v1 referral and the v2 document it reads as (PROTOCOL
    §8.1 "Schema versions"), each the base64 of its canonical JSON."""
    doc = examples.referral(created="2026-01-01T00:00:00Z")
    body = {k: v for k, v in doc["body"].items() if k != "attachments"}
    mapped = {
        **body,
        "gender": "transgender_non_conforming",
        "exploitation_types": ["illicit_activities", "forced_labour", "illegal_adoption"],
        "nrm_stage": "reasonable_grounds_positive",
    }
    yield (
        "referral-v1-to-v2-codes",
        _mapping_text(
            "every mapped field at once: a gender split in v2, two v1 types meeting in one "
            "v2 type, a renamed type, and nrm_stage dropped",
            {**doc, "body": mapped},
        ),
    )
    yield (
        "referral-v1-to-v2-unchanged",
        _mapping_text(
            "a v1 referral with none of the fields v2 changed: only schema_version changes",
            {**doc, "body": body},
        ),
    )


# body-reconsideration-request-*: `kind`, `roles` (the receiver's), `decision` (base64 of
#     the receiver's own signed decision of the body's decision_id, or none), `shared` (yes:
#     the sender received it under the body's pair as that pair's party), `superseded`,
#     `case_state` (its case's), `reconsideration_window_days`, `created` (the envelope's),
#     `clock_skew_seconds`; the bytes are the body, judged by §6.4 and §8.7
#     "Reconsideration requests" in order.

REQUEST_ID = fixed("request 1")[:16].hex()
REFUSED_FIRST = _negative("no-indicators")


def _request_body(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "request_id": REQUEST_ID,
        "decision_id": REFUSED_FIRST.decision_id,
        "owner": "police",
        "referral_id": RID,
        "ground": "new-information",
        "at": NOW + DAY,
    }
    fields.update(changes)
    return codec.pack([1, *fields.values()])


#: Limits.message_ttl_seconds, the default: how long a message may travel (§8.7 window).
TTL = 14 * 24 * 3600


def _request_vectors() -> list[tuple[str, str, str, dict[str, object], bytes]]:
    """(name, comment, expect, header changes, body)."""
    positive = b64(sign_decision(_decision(), AUTHORITY_SIGN))
    second = b64(
        sign_decision(
            _negative("act-not-established", stage="second", decision_id=fixed("d2")[:16].hex()),
            AUTHORITY_SIGN,
        )
    )
    last_second = NOW + 30 * DAY
    return [
        ("ok", "a referrer asks, a day after a negative first stage", "ok", {}, _request_body()),
        (
            "ok-second-stage",
            "a negative second stage, on the ground that it was not reasoned",
            "ok",
            {"decision": second, "case_state": "second_negative"},
            _request_body(decision_id=fixed("d2")[:16].hex(), ground="not-reasoned"),
        ),
        (
            "ok-last-second",
            "at the last second of a 30-day window",
            "ok",
            {"created": last_second},
            _request_body(at=last_second),
        ),
        (
            "not-an-authority",
            "a request sent to an agency that is no competent authority",
            "not-for-this-role",
            {"roles": "police"},
            _request_body(),
        ),
        (
            "malformed",
            "the pair left out (the proposal's first sketch)",
            "malformed",
            {},
            codec.pack([1, REQUEST_ID, REFUSED_FIRST.decision_id, "new-information", NOW + DAY]),
        ),
        (
            "unknown-ground",
            "a ground outside the four",
            "unknown-reason-code",
            {},
            _request_body(ground="disagree"),
        ),
        (
            "unknown-decision",
            "a decision_id the receiver never made (another authority's, or none)",
            "unexpected",
            {"decision": None, "case_state": None},
            _request_body(),
        ),
        (
            "not-shared",
            "the sender did not receive that decision under that pair (a coordinator, say)",
            "not-shared",
            {"shared": "no"},
            _request_body(),
        ),
        (
            "misdated",
            "at 301 s after the envelope's created",
            "misdated",
            {"created": NOW + DAY - 301},
            _request_body(),
        ),
        (
            "before-the-decision",
            "at before the decision's decided_at",
            "misdated",
            {"created": NOW - 60},
            _request_body(at=NOW - 60),
        ),
        (
            "positive",
            "a positive decision is not reconsidered",
            "unexpected",
            {"decision": positive, "case_state": "first_positive"},
            _request_body(),
        ),
        (
            "superseded",
            "a decision a later one supersedes",
            "unexpected",
            {"superseded": "yes"},
            _request_body(),
        ),
        (
            "pending",
            "the case is reconsidering already: a request is pending",
            "unexpected",
            {"case_state": "reconsidering_first"},
            _request_body(),
        ),
        (
            "out-of-time",
            "a second after a 30-day window",
            "out-of-time",
            {"created": last_second + 1},
            _request_body(at=last_second + 1),
        ),
        (
            "ok-arriving-late",
            "asked at the last second of the window, taken when a message's travel time and "
            "the skew are up (the authority was offline)",
            "ok",
            {"created": last_second, "now": last_second + TTL + 300},
            _request_body(at=last_second),
        ),
        (
            "out-of-time-backdated",
            "dated (at and its envelope's created) into the window but taken a second after "
            "the window, the longest travel time and the skew: a sender dates its own envelope",
            "out-of-time",
            {"created": last_second, "now": last_second + TTL + 301},
            _request_body(at=last_second),
        ),
        (
            "out-of-time-for-the-policy",
            "a day after the decision, under a policy of a 0-day window",
            "out-of-time",
            {"reconsideration_window_days": 0},
            _request_body(),
        ),
    ]


def request_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, expect, changes, data in _request_vectors():
        state: dict[str, object] = {
            "roles": "competent-authority",
            "decision": b64(sign_decision(REFUSED_FIRST, AUTHORITY_SIGN)),
            "shared": "yes",
            "superseded": "no",
            "case_state": "first_negative",
            "reconsideration_window_days": 30,
            "created": NOW + DAY,
            "clock_skew_seconds": 300,
            **changes,
        }
        # when the authority takes it (default: as sent), and the longest a message travels
        state.setdefault("now", state["created"])
        state["message_ttl_seconds"] = TTL
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            ("kind", "reconsideration-request"),
            *state.items(),
        ]
        yield f"body-reconsideration-request-{name}", render(header, data)


# --- case transfers and transfer requests (§8.10) -----------------------------------------
#
# body-case-transfer-*, body-transfer-request-*, body-case-owner-changed-*: `kind`, `roles`
#     (the receiver's); the bytes are the body, judged by §8.10's decoding in order (not the
#     receiver's state); when ok the id it names (`transfer_id`, `request_id`, `case_id`).
# transfer-step-*: the bytes are a `transfer-step` body, judged by §8.10's decoding; when ok
#     every field by name.

TRANSFER_ID = fixed("transfer 1")[:16].hex()
TRANSFER_REQUEST_ID = fixed("transfer request 1")[:16].hex()
TRANSFER_CASE_ID = fixed("case 1")[:16].hex()


def _case_transfer(transfer: dict[str, object] | None = None, **members: object) -> bytes:
    referral = as_v2(examples.referral(created="2026-01-01T00:00:00Z"))
    referral["referral_id"] = RID
    referral["body"] = {k: v for k, v in referral["body"].items() if k != "attachments"}
    doc: dict[str, object] = {
        "referral": referral,
        "transfer": {
            "case_id": TRANSFER_CASE_ID,
            "reason": "migration_or_change_of_location",
            "request_id": None,
            "transfer_id": TRANSFER_ID,
            **(transfer or {}),
        },
        **members,
    }
    return canonical_json(doc)


def _transfer_request(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "request_id": TRANSFER_REQUEST_ID,
        "case_id": TRANSFER_CASE_ID,
        "owner": "police",
        "referral_id": RID,
        "reason": "additional_services_required",
        "at": NOW,
    }
    fields.update(changes)
    return codec.pack([1, *fields.values()])


def _owner_changed(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "case_id": TRANSFER_CASE_ID,
        "new_owner": "shelter",
        "transfer_id": TRANSFER_ID,
        "at": NOW,
    }
    fields.update(changes)
    return codec.pack([1, *fields.values()])


def _transfer_body_vectors() -> list[tuple[str, str, str, str, str, bytes]]:
    """(kind, name, comment, roles, expect, body)."""
    transfer, request, changed = "case-transfer", "transfer-request", "case-owner-changed"
    return [
        (transfer, "ok", "a case moving with the person, a case id and no request", "ngo",
         "ok", _case_transfer()),
        (transfer, "ok-answering-a-request", "no case id, answering a request", "ngo", "ok",
         _case_transfer({"case_id": None, "request_id": TRANSFER_REQUEST_ID,
                         "reason": "additional_services_required"})),
        (transfer, "unknown-member", "a member beside referral and transfer", "ngo",
         "unknown-member", _case_transfer(note="x")),
        (transfer, "transfer-unknown-member", "a fifth member in the transfer", "ngo",
         "unknown-member", _case_transfer({"owner": "police"})),
        (transfer, "transfer-id-short", "a transfer id of 31 hex digits", "ngo",
         "schema-invalid", _case_transfer({"transfer_id": TRANSFER_ID[:31]})),
        (transfer, "unknown-reason", "a reason of §8.4, not of HTCDS", "ngo",
         "unknown-reason-code", _case_transfer({"reason": "referred-elsewhere"})),
        (transfer, "referral-v1", "the referral of schema version 1", "ngo", "schema-invalid",
         canonical_json({**json.loads(_case_transfer()),
                         "referral": examples.referral(created="2026-01-01T00:00:00Z")})),
        (transfer, "not-canonical", "a space after the first colon", "ngo", "malformed",
         _case_transfer().replace(b'"referral":', b'"referral": ', 1)),
        (transfer, "attachment-key-null", "attachment_key null: absent is left out", "ngo",
         "schema-invalid", _case_transfer(attachment_key=None)),
        (request, "ok", "a provider asks the referrer for the case it holds decisions of",
         "police", "ok", _transfer_request()),
        (request, "ok-no-case", "no case id: the requester holds no decision of it", "police",
         "ok", _transfer_request(case_id=None)),
        (request, "unknown-reason", "a reason outside the transfer reasons", "police",
         "unknown-reason-code", _transfer_request(reason="no-capacity")),
        (request, "no-case-field", "the case id left out (six fields)", "police", "malformed",
         codec.pack([1, TRANSFER_REQUEST_ID, "police", RID, "other", NOW])),
        (request, "owner-not-agency", "the owner in uppercase: no agency id", "police",
         "malformed", _transfer_request(owner="POLICE")),
        (request, "at-bool", "at is a bool", "police", "malformed", _transfer_request(at=True)),
        (request, "at-too-large", "at is 2^63, past the bound", "police", "malformed",
         _transfer_request(at=2**63)),
        (request, "not-canonical", "at as a 64-bit integer where 32 bits hold it", "police",
         "malformed", _wide_at(_transfer_request())),
        (request, "too-large", "257 bytes, over the limit of 256", "police", "malformed",
         codec.pack([1, TRANSFER_REQUEST_ID, TRANSFER_CASE_ID, "police", RID, "x" * 139, NOW])),
        (changed, "ok", "the referrer tells the authority the shelter took the case",
         "competent-authority", "ok", _owner_changed()),
        (changed, "not-an-authority", "sent to an agency that is no competent authority",
         "police", "not-for-this-role", _owner_changed()),
        (changed, "no-transfer-id", "the transfer id left out", "competent-authority",
         "malformed", codec.pack([1, TRANSFER_CASE_ID, "shelter", NOW])),
        (changed, "case-id-uppercase", "the case id in uppercase hex", "competent-authority",
         "malformed", _owner_changed(case_id=TRANSFER_CASE_ID.upper())),
        (changed, "at-negative", "at below zero", "competent-authority", "malformed",
         _owner_changed(at=-1)),
        (changed, "at-too-large", "at is 2^63, past the bound", "competent-authority",
         "malformed", _owner_changed(at=2**63)),
        (changed, "case-id-nil", "no case id: the authority's case must be named",
         "competent-authority", "malformed", _owner_changed(case_id=None)),
        (changed, "not-canonical", "at as a 64-bit integer where 32 bits hold it",
         "competent-authority", "malformed", _wide_at(_owner_changed())),
    ]  # fmt: skip


def _step(
    kind: str, from_state: str, to_state: str, party: str, reason: str | None
) -> list[object]:
    ident, recipient = (
        (TRANSFER_ID, "shelter") if kind == "transfer" else (TRANSFER_REQUEST_ID, "police")
    )
    return [1, kind, ident, recipient, from_state, to_state, party, reason, NOW]


def _wide_at(body: bytes) -> bytes:
    """`body`, whose last item is `at` = NOW packed in 32 bits, with `at` in 64 bits: the same
    value, not the shortest form (§1.1), so not canonical."""
    tail = b"\xce" + NOW.to_bytes(4, "big")
    assert body.endswith(tail)
    return body[: -len(tail)] + b"\xcf" + NOW.to_bytes(8, "big")


def _step_vectors() -> list[tuple[str, str, str, list[object] | bytes]]:
    return [
        ("ok-accepted", "the transferee accepts", "ok",
         _step("transfer", "delivered", "accepted", "transferee", None)),
        ("ok-rejected", "the transferee rejects, with a reason of its list", "ok",
         _step("transfer", "delivered", "rejected", "transferee", "out-of-area")),
        ("ok-revoked", "the owner revokes before delivery", "ok",
         _step("transfer", "proposed", "revoked", "owner", "sent-in-error")),
        ("ok-completed", "the owner completes an accepted transfer", "ok",
         _step("transfer", "accepted", "completed", "owner", None)),
        ("ok-request-granted", "the owner grants a request", "ok",
         _step("transfer-request", "delivered", "granted", "owner", None)),
        ("ok-request-refused", "the owner refuses a request", "ok",
         _step("transfer-request", "delivered", "refused", "owner", "in-progress-here")),
        ("ok-request-revoked", "the requester revokes its request", "ok",
         _step("transfer-request", "requested", "revoked", "requester", None)),
        ("revoked-after-accepted", "the owner cannot revoke an accepted transfer",
         "unexpected", _step("transfer", "accepted", "revoked", "owner", "other")),
        ("granted-by-requester", "the requester cannot grant its own request", "unexpected",
         _step("transfer-request", "delivered", "granted", "requester", None)),
        ("rejected-unknown-reason", "rejected for a reason outside the rejection reasons",
         "unknown-reason-code",
         _step("transfer", "delivered", "rejected", "transferee", "safety-concern")),
        ("refused-free-text", "a request refused with free text", "unknown-reason-code",
         _step("transfer-request", "delivered", "refused", "owner", "She is ours")),
        ("rejected-without-reason", "rejected without a reason", "malformed",
         _step("transfer", "delivered", "rejected", "transferee", None)),
        ("reason-off-step", "a reason on a step that takes none, whatever its value",
         "malformed", _step("transfer", "delivered", "accepted", "transferee", "busy")),
        ("other-table-state", "a request's state in a transfer step", "malformed",
         _step("transfer", "granted", "completed", "owner", None)),
        ("referral-kind", "a referral pair's step as a transfer step", "malformed",
         [1, "referral", RID, "shelter", "acknowledged", "accepted", "recipient", None, NOW]),
        ("version-2", "version 2: the transition body this branch first drafted", "malformed",
         [2, *_step("transfer", "delivered", "accepted", "transferee", None)[1:]]),
        ("ok-at-max", "at is 2^63 - 1, the last second allowed", "ok",
         [*_step("transfer", "delivered", "accepted", "transferee", None)[:8], 2**63 - 1]),
        ("at-too-large", "at is 2^63, past the bound", "malformed",
         [*_step("transfer", "delivered", "accepted", "transferee", None)[:8], 2**63]),
        ("reason-wrong-type", "an integer reason on a step the table does not list: its type "
         "first (malformed, not unexpected)", "malformed",
         _step("transfer", "accepted", "revoked", "owner", 7)),  # type: ignore[arg-type]
        ("not-canonical", "at as a 64-bit integer where 32 bits hold it", "malformed",
         _wide_at(codec.pack(_step("transfer", "delivered", "accepted", "transferee", None)))),
        ("too-many-items", "a reason that is an array of 17 items, over the item limit 16",
         "malformed",
         _step("transfer", "delivered", "rejected", "transferee", [0] * 17)),  # type: ignore[arg-type]
        ("with-outcome", "version 1's outcome slot kept: ten fields", "malformed",
         [*_step("transfer", "accepted", "completed", "owner", None)[:8], None, NOW]),
        ("at-bool", "at is a bool", "malformed",
         [*_step("transfer", "delivered", "accepted", "transferee", None)[:8], True]),
    ]  # fmt: skip


#: The fields of the two msgpack bodies after their version, in order.
_TRANSFER_BODY_FIELDS = {
    "transfer-request": ("request_id", "case_id", "owner", "referral_id", "reason", "at"),
    "case-owner-changed": ("case_id", "new_owner", "transfer_id", "at"),
}


def _decoded_fields(kind: str, data: bytes) -> list[tuple[str, object]]:
    """Every field an ok body decodes to, read from its bytes by the generic codecs (for
    case-transfer: the transfer's members, `attachment_key`, and R's `referral_id`)."""
    if kind == "case-transfer":
        doc = json.loads(data)
        return [
            *sorted(doc["transfer"].items()),
            ("attachment_key", doc.get("attachment_key")),
            ("referral_id", doc["referral"]["referral_id"]),
        ]
    values = codec.unpack(data, max_bytes=len(data))
    return list(zip(_TRANSFER_BODY_FIELDS[kind], values[1:], strict=True))


def transfer_vectors() -> Iterator[tuple[str, str]]:
    for kind, name, comment, roles, expect, data in _transfer_body_vectors():
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            ("kind", kind),
            ("roles", roles),
        ]
        if expect == "ok":
            header += _decoded_fields(kind, data)
        yield f"body-{kind}-{name}", render(header, data)
    names = ("kind", "id", "recipient", "from_state", "to_state", "party", "reason", "at")
    for name, comment, expect, fields in _step_vectors():
        header = [("expect", expect), ("comment", comment)]
        if expect == "ok":
            header += list(zip(names, fields[1:], strict=True))
        body = fields if isinstance(fields, bytes) else codec.pack(fields)
        yield f"transfer-step-{name}", render(header, body)


# --- statistics contributions (§8.11) ------------------------------------------------------
#
# body-statistics-contribution-*: `kind`, `roles` (the receiver's), `sender` and
#     `sender_roles` (the envelope's sender and its roles in the receiver's directory),
#     `created` (the envelope's); judged by §8.11's decoding and receiver checks in order,
#     with the clock skew of 300 s; when ok `period`, `authority` and the decisions counted
#     per stage and outcome (`first_positive` ...).

_CONTRIBUTION_CREATED = 1_801_000_000  # 2027-01-26: January 2027 has not ended


def _contribution(**changes: object) -> dict[str, Any]:
    cell = {"age_group": "child", "count": 2, "form": "mixed", "outcome": "positive",
            "sex": "female", "stage": "first"}  # fmt: skip
    doc: dict[str, Any] = {
        "authority": "authority",
        "cells": [cell, {**cell, "age_group": "adult", "count": 1, "form": "forced_labour",
                         "outcome": "negative", "sex": "male", "stage": "second"}],
        "durations": [{"age_group": "child", "count": 2, "days": 4, "form": "mixed",
                       "interval": "referral-to-first", "sex": "female"}],
        "period": "2026-12",
    }  # fmt: skip
    doc.update(changes)
    return doc


def _contribution_vectors() -> list[tuple[str, str, str, str, str, str, bytes]]:
    """(name, comment, roles, sender_roles, sender, expect, body)."""
    ca, rap = "competent-authority", "rapporteur"
    ok = canonical_json(_contribution())
    one = _contribution()["cells"][0]
    day = _contribution()["durations"][0]
    return [
        ("ok", "two cells and one duration, December 2026", rap, ca, "authority", "ok", ok),
        ("ok-empty", "a month without decisions: no cell, no duration", rap, ca, "authority",
         "ok", canonical_json(_contribution(cells=[], durations=[]))),
        ("not-a-rapporteur", "sent to an agency that is no rapporteur", "police", ca,
         "authority", "not-for-this-role", ok),
        ("not-an-authority", "sent by an agency that is no competent authority", rap, "ngo",
         "ngo", "not-an-authority", canonical_json(_contribution(authority="ngo"))),
        ("other-authority", "an authority sending another's contribution", rap, ca,
         "authority-2", "unexpected", ok),
        ("month-not-ended", "January 2027, sent in January", rap, ca, "authority",
         "misdated", canonical_json(_contribution(period="2027-01"))),
        ("unknown-member", "a fifth member", rap, ca, "authority", "unknown-member",
         canonical_json(_contribution(total=3))),
        ("cell-unknown-member", "a cell with a seventh member", rap, ca, "authority",
         "unknown-member", canonical_json(_contribution(cells=[{**one, "case_id": RID}]))),
        ("cell-free-text", "a sex outside the list", rap, ca, "authority", "schema-invalid",
         canonical_json(_contribution(cells=[{**one, "sex": "Woman"}]))),
        ("cell-zero", "a cell counting none (left out instead)", rap, ca, "authority",
         "schema-invalid", canonical_json(_contribution(cells=[{**one, "count": 0}]))),
        ("cells-repeated", "one combination twice", rap, ca, "authority", "schema-invalid",
         canonical_json(_contribution(cells=[one, one]))),
        ("cells-unsorted", "the second stage's cell first", rap, ca, "authority",
         "schema-invalid", canonical_json(_contribution(cells=_contribution()["cells"][::-1]))),
        ("period-month-13", "a thirteenth month", rap, ca, "authority", "schema-invalid",
         canonical_json(_contribution(period="2026-13"))),
        ("days-negative", "a duration of minus one day", rap, ca, "authority",
         "schema-invalid", canonical_json(_contribution(durations=[
             {**_contribution()["durations"][0], "days": -1}]))),
        ("not-canonical", "a space after the first colon", rap, ca, "authority", "malformed",
         ok.replace(b'"authority":', b'"authority": ', 1)),
        ("ok-days-as-integers", "days 9 before days 10: sorted as integers, not as strings",
         rap, ca, "authority", "ok", canonical_json(_contribution(durations=[
             {**day, "days": 9}, {**day, "days": 10}]))),
        ("durations-days-as-strings", "days 10 before days 9 (the byte order of their text)",
         rap, ca, "authority", "schema-invalid", canonical_json(_contribution(durations=[
             {**day, "days": 10}, {**day, "days": 9}]))),
        ("durations-repeated", "one duration combination and length twice", rap, ca,
         "authority", "schema-invalid", canonical_json(_contribution(durations=[day, day]))),
        ("durations-unsorted", "first-to-second before referral-to-first", rap, ca,
         "authority", "schema-invalid", canonical_json(_contribution(durations=[
             {**day, "interval": "referral-to-first"},
             {**day, "interval": "first-to-second"}]))),
        ("count-too-large", "a cell counting 1 000 000 001", rap, ca, "authority",
         "schema-invalid", canonical_json(_contribution(cells=[{**one, "count": 10**9 + 1}]))),
        ("count-boolean", "a cell counting true", rap, ca, "authority", "schema-invalid",
         canonical_json(_contribution(cells=[{**one, "count": True}]))),
        ("period-before-2000", "December 1999", rap, ca, "authority", "schema-invalid",
         canonical_json(_contribution(period="1999-12"))),
        ("authority-not-an-agency-id", "an authority with a capital letter and a space", rap,
         ca, "authority", "schema-invalid", canonical_json(_contribution(authority="An ca"))),
        ("too-many-cells", "241 cells, one more than the combinations", rap, ca, "authority",
         "schema-invalid", canonical_json(_contribution(cells=[one] * 241))),
        ("member-missing", "no durations member", rap, ca, "authority", "schema-invalid",
         canonical_json({k: v for k, v in _contribution().items() if k != "durations"})),
        ("member-missing-and-unknown", "no durations but a fifth member: the member too many "
         "is judged first", rap, ca, "authority", "unknown-member",
         canonical_json({**{k: v for k, v in _contribution().items() if k != "durations"},
                         "total": 3})),
    ]  # fmt: skip


def contribution_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, roles, sender_roles, sender, expect, data in _contribution_vectors():
        header: list[tuple[str, object]] = [
            ("expect", expect),
            ("comment", comment),
            ("kind", "statistics-contribution"),
            ("roles", roles),
            ("sender", sender),
            ("sender_roles", sender_roles),
            ("created", _CONTRIBUTION_CREATED),
        ]
        if expect == "ok":
            doc = json.loads(data)
            totals: dict[str, int] = {}
            for cell in doc["cells"]:
                key = f"{cell['stage']}_{cell['outcome']}"
                totals[key] = totals.get(key, 0) + cell["count"]
            header += [("period", doc["period"]), ("authority", doc["authority"])]
            header += [
                (f"{stage}_{outcome}", totals.get(f"{stage}_{outcome}", 0))
                for stage in ("first", "second")
                for outcome in ("positive", "negative")
            ]
        yield f"body-statistics-contribution-{name}", render(header, data)


# --- the rapporteur's signed report (§8.12) ------------------------------------------------
#
# report-*: the bytes are a signed report file; the verifier's directory lists `agency` with
#     `roles` and one signing key, `signer_ed25519_public`, with the `key_*` validity fields;
#     `now`, `clock_skew_seconds`. When ok: `report_id`, `rapporteur`, `kid`, `from`, `to`,
#     `k`, `round_to`, `released`, `signed_at`, `contributions` (comma-separated, or none),
#     `cells` (how many) and `suppressed` (how many of them are).

RAPPORTEUR_SIGN = SigningKey(fixed("rapporteur ed25519 1"))
RAPPORTEUR_KID = signing_kid(RAPPORTEUR_SIGN.verify_key)


def _report_cell(stage: str, outcome: str, count: int | None, **flags: bool) -> ReportCell:
    return ReportCell(
        stage=stage,
        outcome=outcome,
        sex="total",
        age_group="total",
        form="total",
        count=count,
        suppressed=flags.get("suppressed", False),
        rounded=flags.get("rounded", False),
    )


RAPPORTEUR_REPORT = Report(
    rapporteur="rapporteur",
    kid=RAPPORTEUR_KID,
    first="2025-10",
    last="2025-12",
    k=5,
    round_to=5,
    released=True,
    cells=(
        _report_cell("first", "negative", None, suppressed=True),
        _report_cell("first", "positive", 15, rounded=True),
        _report_cell("first", "total", 20, rounded=True),
        _report_cell("total", "total", 20, rounded=True),
    ),
    contributions=tuple(sorted(fixed(f"contribution {i}").hex() for i in range(2))),
    signed_at=NOW,
)


def _report_file(doc: Any, label: bytes = REPORT_LABEL, keyid: str = RAPPORTEUR_KID) -> bytes:
    """`doc` as the signed part, signed by the rapporteur under `label` (no checks)."""
    sig = RAPPORTEUR_SIGN.sign(label + b"\x00" + canonical_json(doc)).signature
    return canonical_json({"signatures": [{"keyid": keyid, "sig": b64(sig)}], "signed": doc})


def _report_doc(**changes: Any) -> Any:
    doc = json.loads(encode_report(RAPPORTEUR_REPORT))
    doc.update(changes)
    return doc


def _report_vectors() -> list[tuple[str, str, str, dict[str, object], bytes]]:
    """(name, comment, expect, directory and clock changes, bytes)."""
    tampered = json.loads(sign_report(RAPPORTEUR_REPORT, RAPPORTEUR_SIGN))
    tampered["signed"]["cells"][1]["count"] = 10
    suppressed_count = _report_doc()
    suppressed_count["cells"][0]["count"] = 3
    unsorted = _report_doc()
    unsorted["cells"].reverse()
    extra = _report_doc(comment="hand-made")
    nothing = dataclasses.replace(RAPPORTEUR_REPORT, released=False, cells=())
    police = {"roles": "police"}
    return [
        ("ok", "a released report", "ok", {}, sign_report(RAPPORTEUR_REPORT, RAPPORTEUR_SIGN)),
        (
            "ok-nothing-released",
            "a report that released nothing (a cell below k could not be hidden)",
            "ok",
            {},
            sign_report(nothing, RAPPORTEUR_SIGN),
        ),
        (
            "bad-signature",
            "a count changed after signing",
            "bad-signature",
            {},
            canonical_json(tampered),
        ),
        (
            "other-label",
            "signed under the service catalogue's label",
            "bad-signature",
            {},
            _report_file(_report_doc(), CATALOGUE_LABEL),
        ),
        (
            "not-a-rapporteur",
            "signed by an agency the directory lists as police",
            "not-for-this-role",
            police,
            sign_report(RAPPORTEUR_REPORT, RAPPORTEUR_SIGN),
        ),
        (
            "revoked-key",
            "the key was revoked before signed_at",
            "revoked-key",
            {"key_status": "revoked", "key_revoked_at": NOW - 60},
            sign_report(RAPPORTEUR_REPORT, RAPPORTEUR_SIGN),
        ),
        (
            "revoked-since",
            "signed_at before the key's revocation, but the key is revoked by now (signed_at is"
            " the signer's word: a revoked key must not date a report back)",
            "revoked-key",
            {"key_status": "revoked", "key_revoked_at": NOW - 60},
            sign_report(
                dataclasses.replace(RAPPORTEUR_REPORT, signed_at=NOW - 3600), RAPPORTEUR_SIGN
            ),
        ),
        (
            "retired-key",
            "the key was valid only until before signed_at",
            "retired-key",
            {"key_valid_until": NOW - 60},
            sign_report(RAPPORTEUR_REPORT, RAPPORTEUR_SIGN),
        ),
        (
            "dated-ahead",
            "signed_at more than the clock skew after now",
            "misdated",
            {},
            _report_file(_report_doc(signed_at=NOW + 301)),
        ),
        (
            "month-not-ended",
            "to is the month in which it was signed",
            "misdated",
            {},
            _report_file(_report_doc(to="2026-01")),
        ),
        (
            "keyid-not-kid",
            "the signature's keyid is not the signed kid",
            "malformed",
            {},
            _report_file(_report_doc(), keyid="0" * 32),
        ),
        (
            "suppressed-with-count",
            "a suppressed cell carrying its count, correctly signed",
            "malformed",
            {},
            _report_file(suppressed_count),
        ),
        (
            "cells-unsorted",
            "cells in reverse order, correctly signed",
            "malformed",
            {},
            _report_file(unsorted),
        ),
        (
            "unknown-member",
            "a member the format does not have, correctly signed",
            "malformed",
            {},
            _report_file(extra),
        ),
    ]


def report_vectors() -> Iterator[tuple[str, str]]:
    for name, comment, expect, changes, data in _report_vectors():
        key: dict[str, object] = {
            "agency": "rapporteur",
            "roles": "rapporteur",
            "signer_ed25519_public": bytes(RAPPORTEUR_SIGN.verify_key),
            "key_valid_from": CREATED - 30 * DAY,
            "key_valid_until": None,
            "key_status": "active",
            "key_revoked_at": None,
            "now": NOW,
            "clock_skew_seconds": 300,
        }
        key.update(changes)
        header: list[tuple[str, object]] = [("expect", expect), ("comment", comment), *key.items()]
        if expect == "ok":
            signed = json.loads(data)["signed"]
            header += [
                ("report_id", report_id(data)),
                *((n, signed[n]) for n in ("rapporteur", "kid", "from", "to", "k", "round_to")),
                ("released", "true" if signed["released"] else "false"),
                ("signed_at", signed["signed_at"]),
                ("contributions", ",".join(signed["contributions"]) or None),
                ("cells", len(signed["cells"])),
                ("suppressed", sum(c["suppressed"] for c in signed["cells"])),
            ]
        yield f"report-{name}", render(header, data)


#: Every family: (file name prefix, generator of (name, text)).
FAMILIES: list[tuple[str, Callable[[], Iterator[tuple[str, str]]]]] = [
    ("canonical-json-", canonical_json_vectors),
    ("root-", trust_vectors),
    ("audit-event-", audit_vectors),
    ("checkpoint-", checkpoint_vectors),
    ("consent-receipt-", consent_vectors),
    ("transition-", message_vectors),
    ("keyfile-", keyfile_vectors),
    ("merkle-", merkle_vectors),
    ("kid-", kid_vectors),
    ("identity-", identity_vectors),
    ("decision-", decision_vectors),
    ("body-identification-decision-", identification_vectors),
    ("catalogue-", catalogue_vectors),
    ("protection-", protection_vectors),
    ("body-protection-notice-", notice_message_vectors),
    ("referral-v1-to-v2-", mapping_vectors),
    ("body-reconsideration-request-", request_vectors),
    ("transfer-step-", transfer_vectors),
    ("body-statistics-contribution-", contribution_vectors),
    ("report-", report_vectors),
]
#: Every file name prefix written here (for removing stale files).
PREFIXES = (
    "canonical-json-",
    "root-",
    "directory-",
    "audit-event-",
    "ledger-entry-",
    "checkpoint-",
    "consent-receipt-",
    "transition-",
    "receipt-",
    "body-",
    "keyfile-",
    "merkle-",
    "kid-",
    "identity-",
    "decision-",
    "catalogue-",
    "capacity-",
    "protection-",
    "referral-v1-to-v2-",
    "transfer-step-",
    "report-",
)
