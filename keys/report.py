"""The rapporteur's signed report (docs/PROTOCOL.md §8.12): the statistics a national
rapporteur releases for a range of months, under disclosure control, signed so that the
ledger (and anyone it serves the report to) can tell who released it and that no cell
changed since.

    report (signed part) = canonical JSON {"type": "nrm-rapporteur-report",
        "spec_version": 1, "rapporteur", "kid", "from", "to", "k", "round_to", "released",
        "cells": [cell, ...], "contributions": [envelope hash, ...], "signed_at"}
    signed file = {"signatures": [{"keyid", "sig"}], "signed": report}
    sig         = Ed25519(rapporteur signing key, "nrm/v1/rapporteur-report" || 0x00 || signed)

The key id is signed too (`kid`, equal to the one signature's `keyid`), and so is the time
(`signed_at`): the verifier judges the key at that time. Verification returns the verified
report or raises. Pure.
"""

from __future__ import annotations

import calendar
import csv
import hashlib
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from nacl.signing import SigningKey

from .codec import HEX32, bounded_int, canonical_json, exact_members, load_canonical
from .directory import Directory
from .errors import MalformedError, MisdatedError, NotForThisRoleError
from .identity import signing_kid
from .roles import RAPPORTEUR
from .signed import check_signature, decode_file, sign_file
from .subjects import AGENCY_ID_PATTERN

REPORT_TYPE: Final = "nrm-rapporteur-report"
SPEC_VERSION: Final = 1
LABEL: Final = b"nrm/v1/rapporteur-report"
MAX_REPORT_BYTES: Final = 786_432
#: Months one report covers at most (ten years).
MAX_MONTHS: Final = 120
#: Contributions one report is built from at most.
MAX_CONTRIBUTIONS: Final = 4096
MAX_COUNT: Final = 1 << 40
TOTAL: Final = "total"

#: The released table's dimensions, in order, and each one's codes (PROTOCOL §8.11); a
#: cell names a code or `total` (summed over that dimension) for each.
DIMS: Final = ("stage", "outcome", "sex", "age_group", "form")
DOMAINS: Final[Mapping[str, tuple[str, ...]]] = {
    "stage": ("first", "second"),
    "outcome": ("positive", "negative"),
    "sex": ("female", "male", "other", "unknown"),
    "age_group": ("child", "adult", "unknown"),
    "form": ("sexual_exploitation", "forced_labour", "other", "mixed", "unknown"),
}
#: Every combination of a code or `total` per dimension: 3 x 3 x 5 x 4 x 6.
MAX_CELLS: Final = 1080

_PERIOD: Final = re.compile(r"^(2[0-9]{3})-(0[1-9]|1[0-2])$")
_HASH: Final = re.compile(r"^[0-9a-f]{64}$")
_CELL_FIELDS: Final = frozenset({*DIMS, "count", "suppressed", "rounded"})
_REPORT_FIELDS: Final = frozenset(
    {
        "type",
        "spec_version",
        "rapporteur",
        "kid",
        "from",
        "to",
        "k",
        "round_to",
        "released",
        "cells",
        "contributions",
        "signed_at",
    }
)


@dataclass(frozen=True, slots=True)
class ReportCell:
    """One released cell: a code or `total` per dimension, its count (None: suppressed)."""

    stage: str
    outcome: str
    sex: str
    age_group: str
    form: str
    count: int | None
    suppressed: bool
    rounded: bool

    def __post_init__(self) -> None:
        for d in DIMS:
            if getattr(self, d) not in (*DOMAINS[d], TOTAL):
                raise ValueError(f"a cell's {d} must be one of {', '.join(DOMAINS[d])} or total")
        if type(self.suppressed) is not bool or type(self.rounded) is not bool:
            raise ValueError("a cell's suppressed and rounded are true or false")
        if self.suppressed:
            if self.count is not None or self.rounded:
                raise ValueError("a suppressed cell has a null count and is not rounded")
        else:
            bounded_int(self.count, "a cell's count", minimum=0, maximum=MAX_COUNT)

    def key(self) -> tuple[str, ...]:
        return tuple(getattr(self, d) for d in DIMS)


@dataclass(frozen=True, slots=True)
class Report:
    """A rapporteur's release for the months `first` to `last`. The constructor refuses what
    the wire format refuses, so every Report is well formed; who may sign it is the
    verifier's."""

    rapporteur: str
    kid: str
    first: str
    last: str
    k: int
    round_to: int
    released: bool
    cells: tuple[ReportCell, ...]
    #: The envelope hashes (hex) of the contributions the cells sum, sorted.
    contributions: tuple[str, ...]
    signed_at: int

    def __post_init__(self) -> None:
        if not (isinstance(self.rapporteur, str) and AGENCY_ID_PATTERN.fullmatch(self.rapporteur)):
            raise ValueError("rapporteur must be an agency id")
        if not (isinstance(self.kid, str) and HEX32.fullmatch(self.kid)):
            raise ValueError("kid must be a key id (32 lowercase hex digits)")
        for name in ("first", "last"):
            value = getattr(self, name)
            if not (isinstance(value, str) and _PERIOD.fullmatch(value)):
                raise ValueError(f"{_WIRE_NAME[name]} must be a month YYYY-MM from 2000")
        if self.last < self.first or _months(self.first, self.last) > MAX_MONTHS:
            raise ValueError(f"to is not before from and at most {MAX_MONTHS} months after it")
        bounded_int(self.k, "k", minimum=2, maximum=1000)
        bounded_int(self.round_to, "round_to", minimum=1, maximum=1000)
        if type(self.released) is not bool:
            raise ValueError("released must be true or false")
        keys = [c.key() for c in self.cells]
        if len(keys) > MAX_CELLS or keys != sorted(set(keys)):
            raise ValueError(
                f"cells must be at most {MAX_CELLS}, sorted by {', '.join(DIMS)}, each once"
            )
        if not self.released and self.cells:
            raise ValueError("a report that released nothing has no cells")
        hashes = list(self.contributions)
        if (
            len(hashes) > MAX_CONTRIBUTIONS
            or not all(isinstance(h, str) and _HASH.fullmatch(h) for h in hashes)
            or hashes != sorted(set(hashes))
        ):
            raise ValueError(
                f"contributions must be at most {MAX_CONTRIBUTIONS} distinct envelope hashes "
                "(64 lowercase hex), sorted"
            )
        bounded_int(self.signed_at, "signed_at", minimum=0, maximum=(1 << 53) - 1)


_WIRE_NAME: Final = {"first": "from", "last": "to"}


def _months(first: str, last: str) -> int:
    (y1, m1), (y2, m2) = (map(int, p.split("-")) for p in (first, last))
    return (y2 - y1) * 12 + (m2 - m1) + 1


def encode_report(report: Report) -> bytes:
    """The canonical signed part of a report."""
    return canonical_json(
        {
            "type": REPORT_TYPE,
            "spec_version": SPEC_VERSION,
            "rapporteur": report.rapporteur,
            "kid": report.kid,
            "from": report.first,
            "to": report.last,
            "k": report.k,
            "round_to": report.round_to,
            "released": report.released,
            "cells": [
                {
                    **{d: getattr(c, d) for d in DIMS},
                    "count": c.count,
                    "suppressed": c.suppressed,
                    "rounded": c.rounded,
                }
                for c in report.cells
            ],
            "contributions": list(report.contributions),
            "signed_at": report.signed_at,
        }
    )


def sign_report(report: Report, key: SigningKey) -> bytes:
    """The signed report file, with the rapporteur's one signature; `report.kid` must be
    `key`'s (TypeError otherwise: a caller's mistake)."""
    if report.kid != signing_kid(key.verify_key):
        raise TypeError("the report names another key than the one signing it")
    return sign_file(LABEL, encode_report(report), key)


def report_id(data: bytes) -> str:
    """A signed report's id: SHA-256 of its file's bytes, hex (one signed report, one id:
    Ed25519 is deterministic and the file canonical)."""
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes) -> tuple[Report, bytes, bytes]:
    """(report, its signed part's bytes, signature) of a signed report file, strictly decoded
    (size first); nothing verified. MalformedError otherwise."""
    doc, signed, kid, sig = decode_file(data, max_bytes=MAX_REPORT_BYTES, what="report")
    try:
        report = _report_from_doc(doc)
        if kid != report.kid:
            raise ValueError("the signature's keyid is not the report's kid")
    except (ValueError, TypeError) as e:
        raise MalformedError(str(e)) from e
    return report, signed, sig


def verify_report(data: bytes, *, directory: Directory, now: int, max_skew: int) -> Report:
    """Decode a signed report strictly and return it if a rapporteur signed it.

    In order: shape (MalformedError); the rapporteur in `directory` (UnknownKeyError)
    holding the role `rapporteur` (NotForThisRoleError); `kid` a signing key of it valid at
    `signed_at` and not revoked by `now` (UnknownKeyError, RetiredKeyError,
    RevokedKeyError); the signature
    (BadSignatureError); `signed_at` at most `max_skew` after `now`, and `to` ended by
    `signed_at` (MisdatedError: a report of a month not over, or dated ahead to outlive its
    key)."""
    report, signed, sig = decode(data)
    entry = directory.agency(report.rapporteur)
    if RAPPORTEUR not in entry.roles:
        raise NotForThisRoleError(f"{report.rapporteur} is not a rapporteur")
    key = directory.signing_key(report.rapporteur, report.kid, at=report.signed_at)
    # `signed_at` is the signer's word: a key revoked since must not date a report before
    # its revocation (as the ledger judges audit events by when the bus stored them).
    directory.check_not_revoked(report.rapporteur, report.kid, at=now)
    check_signature(LABEL, signed, sig, key, failure="report signature does not verify")
    if report.signed_at > now + max_skew:
        raise MisdatedError("the report is dated ahead")
    if _month_end(report.last) > report.signed_at:
        raise MisdatedError("the report covers a month that had not ended when it was signed")
    return report


def _month_end(period: str) -> int:
    """The first second after the month `period` (UTC)."""
    year, month = map(int, period.split("-"))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0))


def _report_from_doc(doc: Any) -> Report:
    f = exact_members(doc, _REPORT_FIELDS, "report")
    if f["type"] != REPORT_TYPE or f["spec_version"] != SPEC_VERSION:
        raise ValueError(f"a report has type {REPORT_TYPE} and spec_version 1")
    items = f["cells"]
    if not isinstance(items, list) or len(items) > MAX_CELLS:
        raise ValueError(f"cells must be a list of at most {MAX_CELLS}")
    contributions = f["contributions"]
    if not isinstance(contributions, list):
        raise ValueError("contributions must be a list")
    return Report(
        rapporteur=f["rapporteur"],
        kid=f["kid"],
        first=f["from"],
        last=f["to"],
        k=f["k"],
        round_to=f["round_to"],
        released=f["released"],
        cells=tuple(ReportCell(**exact_members(c, _CELL_FIELDS, "cell")) for c in items),
        contributions=tuple(contributions),
        signed_at=f["signed_at"],
    )


#: The CSV form's columns (the ledger's `.csv`, `nrm rapporteur report --csv`).
CSV_COLUMNS: Final = (*DIMS, "count", "suppressed", "rounded")


def cells_csv(cells: Iterable[Mapping[str, Any]]) -> str:
    """Cells (as JSON objects) as CSV: `yes`/`no` flags, an empty count when suppressed."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for cell in cells:
        count = "" if cell["count"] is None else str(cell["count"])
        flags = ["yes" if cell[f] else "no" for f in ("suppressed", "rounded")]
        writer.writerow([*(cell[d] for d in DIMS), count, *flags])
    return out.getvalue()


def as_json(report: Report) -> dict[str, Any]:
    """The report's signed members as a JSON object (what the ledger serves)."""
    doc: dict[str, Any] = load_canonical(encode_report(report), "report")
    return doc


__all__: Sequence[str] = [
    "DIMS",
    "DOMAINS",
    "LABEL",
    "Report",
    "ReportCell",
    "as_json",
    "cells_csv",
    "decode",
    "encode_report",
    "report_id",
    "sign_report",
    "verify_report",
]
