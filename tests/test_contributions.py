"""Statistics contributions (PROTOCOL §8.11), pure: the mapping tables held to both referral
schemas, the computation held to an independent one over generated cases, and the strict
decoding with one error per failure kind."""

from __future__ import annotations

import calendar
import json
import random
from collections import Counter
from typing import Any

import pytest
from click.testing import CliRunner

from agents import contributions as S
from agents import referral as R
from keys import DEFAULT_LIMITS
from keys.codec import canonical_json
from keys.errors import (
    MalformedError,
    MisdatedError,
    NotAnAuthorityError,
    NotForThisRoleError,
    SchemaInvalidError,
    UnexpectedMessageError,
    UnknownMemberError,
    UntrustedInputError,
)
from nrm import rapporteur as report
from nrm.cli import main
from runtime import disclosure

JAN = calendar.timegm((2027, 1, 1, 0, 0, 0))
FEB = calendar.timegm((2027, 2, 1, 0, 0, 0))
DAY = 86_400


def _enum(version: str, field: str) -> list[str]:
    schema = json.loads((R.SCHEMA_DIR / f"referral-v{version}.schema.json").read_text())
    prop = schema["$defs"]["body"]["properties"][field]
    return list(prop["items"]["enum"] if "items" in prop else prop["enum"])


@pytest.mark.parametrize("version", ["1", "2"])
def test_every_code_of_both_schemas_maps(version: str) -> None:
    """Every gender, age category and exploitation code either schema allows maps to a
    value of the closed lists, and the v2 tables name only v2 codes."""
    for gender in _enum(version, "gender"):
        doc = {"schema_version": version, "body": {"age_category": "adult", "gender": gender}}
        assert S.person_of(doc, age_route="adult").sex in S.SEXES
    for category in _enum(version, "age_category"):
        doc = {"schema_version": version, "body": {"age_category": category}}
        assert S.person_of(doc, age_route="adult").age_group in {"child", "adult"}
    for code in _enum(version, "exploitation_types"):
        doc = {"schema_version": version, "body": {"exploitation_types": [code]}}
        assert S.person_of(doc, age_route="adult").form in {
            "sexual_exploitation",
            "forced_labour",
            "other",
        }
    if version == "2":
        assert set(S.SEX_OF_GENDER) == set(_enum("2", "gender"))
        assert set(S.FORM_OF_EXPLOITATION) <= set(_enum("2", "exploitation_types"))


_U = "unknown"
_PERSON_TABLE = [
    ("2", {"age_category": "age_disputed", "gender": "feminine"}, ("female", "child", _U)),
    ("1", {"age_category": "adult", "gender": "transgender_non_conforming"},
     ("other", "adult", _U)),
    ("2", {"age_category": "adult", "gender": "transgender_masculine"}, ("other", "adult", _U)),
    ("2", {"age_category": "child", "gender": "non_specified_unknown"}, (_U, "child", _U)),
    ("2", {"exploitation_types": ["forced_labour", "child_labour", "servitude"]},
     (_U, _U, "forced_labour")),
    ("2", {"exploitation_types": ["forced_labour", "sexual_exploitation"]}, (_U, _U, "mixed")),
    ("2", {"exploitation_types": ["organ_removal", "forced_begging"]}, (_U, _U, "other")),
    ("1", {"exploitation_types": ["illicit_activities"]}, (_U, _U, "forced_labour")),
    ("1", {"exploitation_types": ["illicit_activities", "forced_labour"]},
     (_U, _U, "forced_labour")),
    ("1", {"exploitation_types": ["illegal_adoption", "sexual_exploitation"]}, (_U, _U, "mixed")),
]  # fmt: skip


@pytest.mark.parametrize(("version", "body", "expected"), _PERSON_TABLE)
def test_person_table(version: str, body: dict[str, Any], expected: tuple[str, ...]) -> None:
    """§8.11's mapping, row by row (v1 through §8.1's table first)."""
    person = S.person_of({"schema_version": version, "body": body}, age_route="adult")
    assert (person.sex, person.age_group, person.form) == expected


def test_an_erased_referral_keeps_only_the_route() -> None:
    assert S.person_of(None, age_route="child") == S.Person("unknown", "child", "unknown")


# --- the computation, against an independent one ------------------------------------------


def _independent(period: str, cases: list[S.CaseFacts]) -> dict[str, Any]:
    """The contribution computed another way: every combination of the lists tried in turn,
    each case asked whether it falls in it; durations from the decisions sorted by time."""
    year, month = int(period[:4]), int(period[5:])
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    end = calendar.timegm((year, month, calendar.monthrange(year, month)[1], 0, 0, 0)) + DAY
    cells = []
    for stage in sorted(S.STAGES):
        for outcome in sorted(S.OUTCOMES):
            for sex in sorted(S.SEXES):
                for age in sorted(S.AGE_GROUPS):
                    for form in sorted(S.FORMS):
                        n = 0
                        for c in cases:
                            if (c.person.sex, c.person.age_group, c.person.form) != (
                                sex,
                                age,
                                form,
                            ):
                                continue
                            n += len(
                                [
                                    d
                                    for d in c.decisions
                                    if d.stage == stage
                                    and d.outcome == outcome
                                    and start <= d.decided_at < end
                                ]
                            )
                        if n:
                            cells.append(
                                {
                                    "age_group": age,
                                    "count": n,
                                    "form": form,
                                    "outcome": outcome,
                                    "sex": sex,
                                    "stage": stage,
                                }
                            )
    spans: dict[tuple[Any, ...], int] = {}
    for c in cases:
        ordered = sorted(c.decisions, key=lambda d: d.decided_at)
        firsts = [d.decided_at for d in ordered if d.stage == "first"]
        seconds = [d.decided_at for d in ordered if d.stage == "second"]
        pairs = []
        if firsts:
            pairs.append(("referral-to-first", c.opened_at, firsts[0]))
            if seconds:
                pairs.append(("first-to-second", firsts[0], seconds[0]))
        for interval, a, b in pairs:
            if start <= b < end and b >= a:
                key = (interval, c.person.sex, c.person.age_group, c.person.form, (b - a) // DAY)
                spans[key] = spans.get(key, 0) + 1
    durations = [
        {"age_group": k[2], "count": n, "days": k[4], "form": k[3], "interval": k[0], "sex": k[1]}
        for k, n in sorted(spans.items())
    ]
    return {"authority": "authority", "cells": cells, "durations": durations, "period": period}


def _cases(rng: random.Random, n: int) -> list[S.CaseFacts]:
    out = []
    for _ in range(n):
        person = S.Person(rng.choice(S.SEXES), rng.choice(S.AGE_GROUPS), rng.choice(S.FORMS))
        opened = JAN - 40 * DAY + rng.randrange(80 * DAY)
        decisions = []
        at = opened
        for stage in ("first", "second"):
            for _ in range(rng.choice((0, 1, 1, 2))):  # 2: a reconsideration's answer
                at += rng.randrange(20 * DAY)
                decisions.append(S.DecisionFact(stage, rng.choice(S.OUTCOMES), at))
        if rng.random() < 0.05:  # a clock that went back: an interval of none
            decisions.append(S.DecisionFact("first", "positive", opened - DAY))
        out.append(S.CaseFacts(person, opened, tuple(decisions)))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_compute_matches_an_independent_computation(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible samples, not a secret
    cases = _cases(rng, rng.choice((0, 1, 3, 30, 200)))
    contribution = S.compute("2027-01", "authority", cases)
    assert json.loads(contribution.encode()) == _independent("2027-01", cases)
    assert S.Contribution.decode(contribution.encode(), limits=DEFAULT_LIMITS) == contribution
    in_jan = [d for c in cases for d in c.decisions if JAN <= d.decided_at < FEB]
    assert sum(contribution.totals().values()) == len(in_jan)


def test_durations_past_the_bound_are_coarsened_to_fit() -> None:
    """A month whose durations would pass MAX_DURATIONS entries (a large authority) still
    gives a body the rapporteur must take: every `days` rounded down to a multiple of the
    smallest power of two that fits, each case counted once, the cells untouched."""
    cases = [  # 5 000 distinct lengths of one combination, each ending in January
        S.CaseFacts(
            S.Person("female", "adult", "other"),
            JAN - days * DAY,
            (S.DecisionFact("first", "positive", JAN + i % 20),),
        )
        for i, days in enumerate(range(5_000))
    ]
    contribution = S.compute("2027-01", "authority", cases)
    assert S.Contribution.decode(contribution.encode(), limits=DEFAULT_LIMITS) == contribution
    assert len(contribution.durations) == 2_500  # width 2: 5 000 lengths in 2 500 buckets
    assert {d.days % 2 for d in contribution.durations} == {0}
    assert {d.count for d in contribution.durations} == {2}
    assert contribution.totals() == {("first", "positive"): 5_000}
    few = S.compute("2027-01", "authority", cases[:4_096])  # at the bound: exact
    assert [d.days for d in few.durations] == list(range(4_096))


def test_periods() -> None:
    assert S.period_of(FEB - 1) == "2027-01" and S.period_of(FEB) == "2027-02"
    assert S.period_end("2027-12") == calendar.timegm((2028, 1, 1, 0, 0, 0))
    assert S.due_at("2027-01", 10) == FEB + 10 * DAY
    assert S.periods_due(JAN + 5, FEB + 10 * DAY - 1, 10) == []
    assert S.periods_due(JAN + 5, FEB + 10 * DAY, 10) == ["2027-01"]
    assert S.periods_due(JAN - 1, FEB + 10 * DAY, 10) == ["2026-12", "2027-01"]


# --- decoding ------------------------------------------------------------------------------


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "authority": "authority",
        "cells": [
            {"age_group": "child", "count": 2, "form": "mixed", "outcome": "positive",
             "sex": "female", "stage": "first"},
        ],
        "durations": [
            {"age_group": "child", "count": 1, "days": 3, "form": "mixed",
             "interval": "referral-to-first", "sex": "female"},
        ],
        "period": "2027-01",
    }  # fmt: skip
    doc.update(changes)
    return doc


def _cell(**changes: Any) -> dict[str, Any]:
    return {**_doc()["cells"][0], **changes}


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (_doc(period="2027-13"), SchemaInvalidError),
        (_doc(period="1999-12"), SchemaInvalidError),
        (_doc(authority="Authority"), SchemaInvalidError),
        (_doc(note="x"), UnknownMemberError),
        ({k: v for k, v in _doc().items() if k != "durations"}, SchemaInvalidError),
        (_doc(cells=[_cell(sex="woman")]), SchemaInvalidError),
        (_doc(cells=[_cell(count=0)]), SchemaInvalidError),
        (_doc(cells=[_cell(count=True)]), SchemaInvalidError),
        (_doc(cells=[_cell(name="x")]), UnknownMemberError),
        (_doc(cells=[_cell(), _cell()]), SchemaInvalidError),
        (_doc(cells=[_cell(stage="second"), _cell()]), SchemaInvalidError),
        (_doc(cells=[_cell(sex=s) for s in sorted(S.SEXES)] * 61), SchemaInvalidError),
        (_doc(cells={}), SchemaInvalidError),
        ([], SchemaInvalidError),
    ],
)
def test_decoding_refuses(doc: Any, error: type[UntrustedInputError]) -> None:
    with pytest.raises(error):
        S.Contribution.decode(canonical_json(doc), limits=DEFAULT_LIMITS)


def test_not_canonical_is_malformed() -> None:
    with pytest.raises(MalformedError):
        S.Contribution.decode(json.dumps(_doc()).encode(), limits=DEFAULT_LIMITS)


def test_receiver_checks_in_order() -> None:
    body = canonical_json(_doc())
    with pytest.raises(NotForThisRoleError):
        S.decode_at(body, {"competent-authority"}, limits=DEFAULT_LIMITS)
    c = S.decode_at(body, {"rapporteur"}, limits=DEFAULT_LIMITS)
    ok: dict[str, Any] = {"sender": "authority", "sender_roles": {"competent-authority"},
                          "created": FEB, "skew": 300}  # fmt: skip
    S.check_sender(c, **ok)
    for changes, error in (
        ({"sender_roles": {"police"}}, NotAnAuthorityError),
        ({"sender": "other"}, UnexpectedMessageError),
        ({"created": FEB - 301}, MisdatedError),
    ):
        with pytest.raises(error):
            S.check_sender(c, **{**ok, **changes})
    S.check_sender(c, **{**ok, "created": FEB - 300})


# --- the cross-check against the ledger ----------------------------------------------------


def _entry(agency: str, at: int, stage: str, outcome: str, kind: str = S.DECIDED) -> dict[str, Any]:
    labels = {"age_route": "adult", "outcome": outcome, "stage": stage}
    return {"kind": kind, "agency": agency, "time": at, "labels": labels}


def test_cross_check_counts_the_ledgers_decisions() -> None:
    """A contribution adds up when every stage and outcome counts what the ledger holds from
    its authority in its month (other kinds, authorities and months apart); one decision
    left out, or one invented, is `contribution-mismatch` naming the stage and outcome;
    a month the ledger holds decisions of with no contribution is missing."""
    entries = [
        _entry("authority", JAN + 10, "first", "positive"),
        _entry("authority", FEB - 1, "first", "positive"),
        _entry("authority", JAN + 20, "second", "negative"),
        _entry("authority", FEB, "first", "negative"),  # February
        _entry("other", JAN + 30, "first", "positive"),  # another authority
        _entry("authority", JAN + 40, "first", "positive", kind="identification.sent"),
    ]

    def contribution(first_positive: int, second_negative: int) -> S.Contribution:
        cells = [
            S.Cell("first", "positive", "female", "adult", "mixed", first_positive),
            S.Cell("second", "negative", "unknown", "child", "other", second_negative),
        ]
        return S.Contribution("2027-01", "authority", tuple(c for c in cells if c.count), ())

    [ok], missing = S.cross_check([contribution(2, 1)], entries)
    assert (ok.ok, ok.reason) == (True, None)
    assert missing == [("other", "2027-01"), ("authority", "2027-02")]
    [short], _ = S.cross_check([contribution(1, 1)], entries)
    assert short.reason == "contribution-mismatch"
    assert short.mismatches == (S.Mismatch("first", "positive", 1, 2),)
    [invented], _ = S.cross_check([contribution(2, 2)], entries)
    assert invented.mismatches == (S.Mismatch("second", "negative", 2, 1),)
    [empty], _ = S.cross_check([contribution(0, 0)], entries)
    assert [(m.stage, m.outcome) for m in empty.mismatches] == [
        ("first", "positive"),
        ("second", "negative"),
    ]


# --- the report (nrm rapporteur report) ----------------------------------------------------


def test_the_report_sums_what_adds_up_under_disclosure_control() -> None:
    """Two authorities' contributions that add up and a third's that does not: the report
    sums the two (the third listed `contribution-mismatch`, its people nowhere) and
    publishes no cell counting 1 to k - 1 anywhere; what is neither suppressed nor rounded
    is the exact sum."""
    rng = random.Random(2027)  # noqa: S311 - a reproducible population, not a secret
    combos = [
        (st, o, sx, a, f)
        for st in S.STAGES for o in S.OUTCOMES for sx in S.SEXES
        for a in S.AGE_GROUPS for f in S.FORMS
    ]  # fmt: skip
    contributions, entries, truth = [], [], Counter()
    for n, authority in enumerate(("a-1", "a-2", "a-3")):
        cells = {c: rng.choice((0, 0, 0, 3, 12, 25)) for c in combos}
        for key, count in cells.items():
            entries += [_entry(authority, JAN + DAY + i, key[0], key[1]) for i in range(count)]
            if n < 2:
                truth[key] += count
        if n == 2:  # one person left out of the contribution
            first = next(k for k, v in cells.items() if v)
            cells[first] -= 1
        contributions.append(
            S.Contribution("2027-01", authority,
                           tuple(S.Cell(*k, v) for k, v in sorted(cells.items()) if v), ())
        )  # fmt: skip
    doc = report.build(contributions, entries, k=11, round_to=5, now=FEB, grace_days=0)
    assert [(c["authority"], c["reason"]) for c in doc["contributions"]] == [
        ("a-1", None),
        ("a-2", None),
        ("a-3", "contribution-mismatch"),
    ]
    assert doc["released"] is True
    dims = report.DIMS
    for cell in doc["cells"]:
        present = tuple(d for d in dims if cell[d] != "total")
        true = sum(v for k, v in truth.items() if all(k[dims.index(d)] == cell[d] for d in present))
        if cell["suppressed"]:
            assert cell["count"] is None
        else:
            assert not 0 < true < 11, cell
            if not cell["rounded"]:
                assert cell["count"] == true, cell
    assert report.csv_text(doc).count("\n") == len(doc["cells"]) + 1

    # What is published carries only the protected cells: no authority, no mismatch count
    # (a-3's differ by 1); those are the rapporteur's diagnostics alone.
    published = report.publication(doc, first="2027-01", last="2027-01")
    assert set(published) == {"from", "to", "k", "round_to", "released", "cells"}
    assert "a-3" not in json.dumps(published) and "a-3" not in report.text(published)
    [(refused, mismatch)] = [
        (c, m) for c in report.diagnostics(doc)["contributions"] for m in c["mismatches"]
    ]
    assert (refused["authority"], mismatch["contributed"] - mismatch["ledger"]) == ("a-3", -1)
    verdicts = report.diagnostics_text(doc)
    assert "2027-01 a-3: refused contribution-mismatch" in verdicts
    assert "contributed" not in verdicts and "ledger" not in verdicts


def test_the_report_hides_a_small_stage_and_outcome_total() -> None:
    """Three second-stage positives in two cells beside 60 first-stage ones: the stage x
    outcome total of 3 is below k like any other cell (the ledger's own counts are
    suppressed below its threshold and are not these sums, so no cell is public), and no
    cell of the release pins it (its bounds over the released cells are wide)."""
    combos = [(sx, a, f) for sx in S.SEXES for a in S.AGE_GROUPS for f in S.FORMS]
    cells = [
        S.Cell("first", "positive", *combos[0], 60),
        S.Cell("second", "positive", *combos[0], 1),
        S.Cell("second", "positive", *combos[-1], 2),
    ]
    entries = [
        _entry("a-1", JAN + DAY + i, c.stage, c.outcome) for c in cells for i in range(c.count)
    ]
    doc = report.build(
        [S.Contribution("2027-01", "a-1", tuple(sorted(cells, key=S.Cell.key)), ())],
        entries,
        k=11,
        round_to=5,
        now=FEB,
        grace_days=0,
    )
    assert doc["released"] is True
    total = ("second", "positive", "total", "total", "total")
    [second] = [c for c in doc["cells"] if tuple(c[d] for d in report.DIMS) == total]
    assert (second["count"], second["suppressed"]) == (None, True)
    assert [c for c in doc["cells"] if c["count"] is not None and 0 < c["count"] < 11] == []
    released = {
        (tuple(d for d in report.DIMS if c[d] != "total"),
         tuple(c[d] for d in report.DIMS if c[d] != "total")): c
        for c in doc["cells"]
    }  # fmt: skip
    known = disclosure.bounds(
        {
            key: disclosure.Published(c["count"], c["suppressed"], c["rounded"])
            for key, c in released.items()
        },
        disclosure.cells_and_relations(report.DIMS, report.DOMAINS)[1],
        5,
    )
    low, high = known[(("stage", "outcome"), ("second", "positive"))]
    assert low < high


def test_the_report_lists_missing_only_the_months_due() -> None:
    """Decisions of January and February by an authority that sent January's contribution
    only: with a grace of 10 days February is missing once its grace ran, not before (its
    contribution is not due yet)."""
    entries = [_entry("a-1", at + DAY, "first", "positive") for at in (JAN, FEB)]
    january = S.Contribution(
        "2027-01", "a-1", (S.Cell("first", "positive", "female", "adult", "mixed", 1),), ()
    )
    end = S.period_end("2027-02")
    for now, missing in ((end + 9 * DAY, []), (end + 10 * DAY, [("a-1", "2027-02")])):
        doc = report.build([january], entries, k=11, round_to=5, now=now, grace_days=10)
        assert [(m["authority"], m["period"]) for m in doc["missing"]] == missing, now
        assert [c["accepted"] for c in doc["contributions"]] == [True]


def test_a_report_covers_one_calendar_month_quarter_or_year() -> None:
    """Releases over fixed periods only (overlapping ones give their difference exactly):
    one month, a calendar quarter, a calendar year; `nrm rapporteur report` refuses any
    other range before it reads anything."""
    for first, last, kind in (
        ("2027-03", "2027-03", "month"),
        ("2027-01", "2027-03", "quarter"),
        ("2027-10", "2027-12", "quarter"),
        ("2027-01", "2027-12", "year"),
        ("2027-01", "2027-11", None),
        ("2027-02", "2027-04", None),
        ("2027-01", "2027-02", None),
        ("2027-01", "2028-12", None),
        ("2026-11", "2027-01", None),
    ):
        assert report.release_period(first, last) == kind, (first, last)
    nowhere = "http://127.0.0.1:9"  # never reached: the range is refused first
    args = ["rapporteur", "report", "--from", "2027-01", "--to", "2027-11", "--url", nowhere,
            "--ledger", nowhere, "--allow-plain-http"]  # fmt: skip
    result = CliRunner().invoke(main, args, env={"NRM_API_TOKEN": "t", "NRM_LEDGER_TOKEN": "t"})
    assert result.exit_code == 2 and "calendar month, quarter or year" in result.output


def test_report_codes_are_the_contributions() -> None:
    """The signed report (keys/report.py, PROTOCOL §8.12) names a cell by the same codes, in
    the same dimensions, as the contributions it sums and the released table."""
    from keys import report
    from nrm import rapporteur

    assert report.DIMS == rapporteur.DIMS
    assert {d: tuple(v) for d, v in rapporteur.DOMAINS.items()} == dict(report.DOMAINS)
