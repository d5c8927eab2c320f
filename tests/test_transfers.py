"""Case transfers and transfer requests (agents/transfers.py): both lifecycle tables over
every state, target and party against the specification written out independently, and the
bodies' encoders and decoders."""

from __future__ import annotations

import itertools

import pytest

from agents import inbound
from agents import transfers as T
from agents.messages import TRANSITION
from agents.transfers import (
    CaseOwnerChanged,
    CaseTransfer,
    TransferRequest,
    TransferStep,
    TransferStepRefused,
    allowed,
    check,
)
from keys import DEFAULT_LIMITS, codec
from keys.errors import (
    MalformedError,
    NotForThisRoleError,
    SchemaInvalidError,
    UnexpectedMessageError,
    UnknownMemberError,
    UnknownReasonCodeError,
)

#: docs/proposals/nrm-process.md §7.3, written out by hand: (kind, from, party) -> targets.
EXPECTED: dict[tuple[str, str, str], set[str]] = {
    ("transfer", "proposed", "system"): {"delivered", "expired"},
    ("transfer", "proposed", "owner"): {"revoked"},
    ("transfer", "delivered", "transferee"): {"accepted", "rejected"},
    ("transfer", "delivered", "owner"): {"revoked"},
    ("transfer", "delivered", "system"): {"expired"},
    ("transfer", "accepted", "owner"): {"completed"},
    ("transfer-request", "requested", "system"): {"delivered"},
    ("transfer-request", "requested", "requester"): {"revoked"},
    ("transfer-request", "delivered", "owner"): {"granted", "refused"},
    ("transfer-request", "delivered", "requester"): {"revoked"},
    ("transfer-request", "granted", "system"): {"fulfilled", "lapsed"},
}
#: Every state and party of each table, as §7.3 names them.
STATES = {
    "transfer": [
        "proposed",
        "delivered",
        "accepted",
        "rejected",
        "revoked",
        "expired",
        "completed",
    ],
    "transfer-request": [
        "requested",
        "delivered",
        "granted",
        "refused",
        "revoked",
        "fulfilled",
        "lapsed",
    ],
}
PARTIES = {
    "transfer": ["owner", "transferee", "system"],
    "transfer-request": ["requester", "owner", "system"],
}
#: A reason that fits each step needing one: (kind, to) -> reason.
NEEDS_REASON = {
    ("transfer", "rejected"): "no-capacity",
    ("transfer", "revoked"): "sent-in-error",
    ("transfer-request", "refused"): "in-progress-here",
}
COMBINATIONS = [
    (kind, state, target, party)
    for kind in STATES
    for state, target, party in itertools.product(STATES[kind], STATES[kind], PARTIES[kind])
]

CASE = "c" * 32
REQ = "a" * 32
REF = "b" * 32
TID = "d" * 32


#: The reason lists of proposal §7.3 (and §7.2, the HTCDS codes), written out by hand; a
#: revocation takes any code of PROTOCOL §8.4.
REASONS = {
    "transfer": ["additional_services_required", "migration_or_change_of_location", "other"],
    "rejection": ["no-capacity", "out-of-area", "not-eligible", "duplicate", "other"],
    "refusal": ["not-owner", "in-progress-here", "person-declined", "other"],
    "revocation": [
        "no-capacity",
        "out-of-area",
        "not-eligible",
        "duplicate",
        "person-declined",
        "consent-withdrawn",
        "lost-contact",
        "referred-elsewhere",
        "safety-concern",
        "sent-in-error",
        "other",
    ],
}


def test_the_code_knows_the_same_states_and_parties() -> None:
    for kind in STATES:
        assert list(T.STATES[kind]) == STATES[kind]
        assert list(T.PARTIES[kind]) == PARTIES[kind]


def test_the_code_knows_the_same_reason_lists() -> None:
    assert list(T.TRANSFER_REASONS) == REASONS["transfer"]
    assert list(T.REJECT_REASONS) == REASONS["rejection"]
    assert list(T.REFUSE_REASONS) == REASONS["refusal"]
    assert list(T.REVOKE_REASONS) == REASONS["revocation"]


def test_each_side_starts_where_protocol_says() -> None:
    """The sender starts a transfer proposed and a request requested; the receiver stores
    either as delivered; from there each side's first step is the table's."""
    assert T.INITIAL == {
        "transfer": {"owner": "proposed", "transferee": "delivered"},
        "transfer-request": {"requester": "requested", "owner": "delivered"},
    }
    assert allowed("transfer", T.INITIAL["transfer"]["owner"], "system") == ["delivered", "expired"]
    assert allowed("transfer", T.INITIAL["transfer"]["transferee"], "transferee") == [
        "accepted",
        "rejected",
    ]
    assert allowed("transfer-request", T.INITIAL["transfer-request"]["owner"], "owner") == [
        "granted",
        "refused",
    ]


def test_allowed_matches_the_specification() -> None:
    for kind in STATES:
        for state, party in itertools.product(STATES[kind], PARTIES[kind]):
            expected = EXPECTED.get((kind, state, party), set())
            assert set(allowed(kind, state, party)) == expected, (kind, state, party)


def test_final_states_have_no_way_out() -> None:
    assert T.FINAL_STATES["transfer"] == {"rejected", "revoked", "expired", "completed"}
    assert T.FINAL_STATES["transfer-request"] == {"refused", "revoked", "fulfilled", "lapsed"}
    for kind, finals in T.FINAL_STATES.items():
        for state, party in itertools.product(finals, PARTIES[kind]):
            assert allowed(kind, state, party) == []


@pytest.mark.parametrize(("kind", "state", "target", "party"), COMBINATIONS)
def test_every_combination(kind: str, state: str, target: str, party: str) -> None:
    """An allowed step passes with a fitting reason; any other is refused naming exactly the
    allowed ones."""
    reason = NEEDS_REASON.get((kind, target))
    if target in EXPECTED.get((kind, state, party), set()):
        check(kind, state, target, party, reason=reason)
    else:
        with pytest.raises(TransferStepRefused) as refused:
            check(kind, state, target, party, reason=reason)
        assert refused.value.allowed == allowed(kind, state, party)


@pytest.mark.parametrize(
    ("name", "kind", "state", "target", "party", "reason", "error"),
    [
        ("rejected without a reason", "transfer", "delivered", "rejected", "transferee", None,
         ValueError),
        ("rejected for a reason not of its list", "transfer", "delivered", "rejected",
         "transferee", "safety-concern", T.TransferReasonUnknown),
        ("revoked without a reason", "transfer", "proposed", "revoked", "owner", None,
         ValueError),
        ("revoked for free text", "transfer", "delivered", "revoked", "owner", "She moved",
         T.TransferReasonUnknown),
        ("accepted with a reason", "transfer", "delivered", "accepted", "transferee", "other",
         ValueError),
        ("refused without a reason", "transfer-request", "delivered", "refused", "owner", None,
         ValueError),
        ("refused for a rejection's reason", "transfer-request", "delivered", "refused",
         "owner", "no-capacity", T.TransferReasonUnknown),
        ("a request revoked with a reason", "transfer-request", "requested", "revoked",
         "requester", "other", ValueError),
        ("granted with a reason", "transfer-request", "delivered", "granted", "owner", "other",
         ValueError),
    ],
)  # fmt: skip
def test_reasons_that_do_not_fit_the_step_are_refused(
    name: str, kind: str, state: str, target: str, party: str, reason: str | None, error: type
) -> None:
    with pytest.raises(error):
        check(kind, state, target, party, reason=reason)


def test_every_reason_of_a_step_s_list_is_taken() -> None:
    for reason in T.REJECT_REASONS:
        check("transfer", "delivered", "rejected", "transferee", reason=reason)
    for reason in T.REVOKE_REASONS:
        check("transfer", "delivered", "revoked", "owner", reason=reason)
    for reason in T.REFUSE_REASONS:
        check("transfer-request", "delivered", "refused", "owner", reason=reason)


def test_unknown_names_are_misuse_and_never_echoed() -> None:
    """A name from outside the tables is a ValueError that does not repeat it (it may come
    from a peer); the other kind's names are unknown too."""
    odd = "someone's name"
    for kind, state, target, party in (
        (odd, "proposed", "delivered", "system"),
        ("transfer", odd, "delivered", "system"),
        ("transfer", "proposed", odd, "system"),
        ("transfer", "proposed", "delivered", odd),
        ("transfer", "requested", "delivered", "system"),
        ("transfer-request", "requested", "revoked", "transferee"),
    ):
        with pytest.raises(ValueError) as e:
            check(kind, state, target, party, reason=None)
        assert odd not in str(e.value)
        assert not isinstance(e.value, T.TransferReasonUnknown)


def test_a_request_granted_then_its_transfer_completed() -> None:
    """A request granted, the transfer answering it accepted and completed, fulfils the
    request; a transfer that ends otherwise lets it lapse."""
    request = T.INITIAL["transfer-request"]["requester"]
    for target, party, reason in (("delivered", "system", None), ("granted", "owner", None)):
        check("transfer-request", request, target, party, reason=reason)
        request = target
    transfer = T.INITIAL["transfer"]["owner"]
    for target, party in (("delivered", "system"), ("accepted", "transferee")):
        check("transfer", transfer, target, party, reason=None)
        transfer = target
    check("transfer", transfer, "completed", "owner", reason=None)
    assert T.REQUEST_AFTER_TRANSFER["completed"] == "fulfilled"
    check("transfer-request", request, T.REQUEST_AFTER_TRANSFER["completed"], "system", reason=None)
    for end in ("rejected", "revoked", "expired"):
        assert T.REQUEST_AFTER_TRANSFER[end] == "lapsed"
    assert set(T.REQUEST_AFTER_TRANSFER) == T.FINAL_STATES["transfer"]


# --- the bodies --------------------------------------------------------------------------------


def test_a_transfer_request_round_trips() -> None:
    request = TransferRequest(REQ, None, "police", REF, "migration_or_change_of_location", 7)
    body = request.encode()
    assert body == codec.pack([1, REQ, None, "police", REF, "migration_or_change_of_location", 7])
    assert TransferRequest.decode(body) == request
    with_case = TransferRequest(REQ, CASE, "police", REF, "other", 7)
    assert TransferRequest.decode(with_case.encode()) == with_case


@pytest.mark.parametrize(
    ("name", "fields", "error"),
    [
        ("a reason outside the transfer reasons", [1, REQ, None, "police", REF, "no-capacity", 7],
         UnknownReasonCodeError),
        ("the case id in uppercase", [1, REQ, CASE.upper(), "police", REF, "other", 7],
         MalformedError),
        ("the owner no agency id", [1, REQ, None, "Police", REF, "other", 7], MalformedError),
        ("at a bool", [1, REQ, None, "police", REF, "other", True], MalformedError),
        ("a bad at before an unknown reason", [1, REQ, None, "police", REF, "x", -1],
         MalformedError),
        ("the case id left out", [1, REQ, "police", REF, "other", 7], MalformedError),
        ("version 2", [2, REQ, None, "police", REF, "other", 7], MalformedError),
    ],
)  # fmt: skip
def test_a_transfer_request_refused(name: str, fields: list[object], error: type) -> None:
    with pytest.raises(error):
        TransferRequest.decode(codec.pack(fields))


def test_a_transfer_request_over_its_size_limit_is_malformed() -> None:
    body = codec.pack([1, REQ, None, "police", REF, "other" + "x" * 300, 7])
    with pytest.raises(MalformedError):
        TransferRequest.decode(body)


def test_case_owner_changed_goes_to_authorities_only() -> None:
    changed = CaseOwnerChanged(CASE, "shelter", TID, 9)
    body = changed.encode()
    assert body == codec.pack([1, CASE, "shelter", TID, 9])
    assert T.decode_owner_changed_at(body, {"competent-authority"}) == changed
    with pytest.raises(NotForThisRoleError):
        T.decode_owner_changed_at(body, {"police"})
    with pytest.raises(NotForThisRoleError):  # the role comes first, as for reconsideration
        T.decode_owner_changed_at(b"\xc1", {"ngo"})
    with pytest.raises(MalformedError):
        T.decode_owner_changed_at(codec.pack([1, CASE, "shelter", TID]), {"competent-authority"})
    with pytest.raises(TypeError):
        T.decode_owner_changed_at(body, "competent-authority")


REFERRAL = {"schema_version": "2", "referral_type": "nrm_full", "body": {}}


def _transfer_doc(**changes: object) -> dict[str, object]:
    transfer: dict[str, object] = {
        "case_id": CASE,
        "reason": "other",
        "request_id": None,
        "transfer_id": TID,
    }
    transfer.update(changes)
    return {"referral": REFERRAL, "transfer": transfer}


def test_a_case_transfer_round_trips() -> None:
    body = codec.canonical_json(_transfer_doc())
    decoded = CaseTransfer.decode(body, limits=DEFAULT_LIMITS)
    assert (decoded.transfer_id, decoded.case_id, decoded.request_id) == (TID, CASE, None)
    assert decoded.referral == REFERRAL and decoded.attachment_key is None
    assert decoded.encode() == body


@pytest.mark.parametrize(
    ("name", "doc", "error"),
    [
        ("a member too many", {**_transfer_doc(), "note": "x"}, UnknownMemberError),
        ("a member too many in the transfer", _transfer_doc(note="x"), UnknownMemberError),
        ("no transfer", {"referral": REFERRAL}, SchemaInvalidError),
        ("the transfer without request_id",
         {"referral": REFERRAL,
          "transfer": {"case_id": None, "reason": "other", "transfer_id": TID}},
         SchemaInvalidError),
        ("a transfer id of 31 digits", _transfer_doc(transfer_id=TID[:31]), SchemaInvalidError),
        ("a reason of §8.4", _transfer_doc(reason="referred-elsewhere"), UnknownReasonCodeError),
        ("a v1 referral", {**_transfer_doc(), "referral": {**REFERRAL, "schema_version": "1"}},
         SchemaInvalidError),
        ("an array", [1], SchemaInvalidError),
    ],
)  # fmt: skip
def test_a_case_transfer_refused(name: str, doc: object, error: type) -> None:
    with pytest.raises(error):
        CaseTransfer.decode(codec.canonical_json(doc), limits=DEFAULT_LIMITS)


def test_a_case_transfer_not_canonical_is_malformed() -> None:
    body = codec.canonical_json(_transfer_doc()).replace(b'{"referral"', b'{ "referral"')
    with pytest.raises(MalformedError):
        CaseTransfer.decode(body, limits=DEFAULT_LIMITS)


def test_a_transfer_step_round_trips_as_its_own_kind() -> None:
    step = TransferStep("transfer", TID, "shelter", "delivered", "rejected", "transferee",
                        "out-of-area", 5)  # fmt: skip
    body = step.encode()
    assert body == codec.pack(
        [1, "transfer", TID, "shelter", "delivered", "rejected", "transferee", "out-of-area", 5]
    )
    assert TransferStep.decode(body) == step
    assert T.TRANSFER_STEP == "transfer-step" != TRANSITION


@pytest.mark.parametrize(
    ("name", "fields", "error"),
    [
        ("a step the table does not list",
         [1, "transfer", TID, "shelter", "accepted", "revoked", "owner", "other", 5],
         UnexpectedMessageError),
        ("a wrong-typed reason on a step the table does not list",
         [1, "transfer", TID, "shelter", "accepted", "revoked", "owner", 3, 5], MalformedError),
        ("the other table's party",
         [1, "transfer", TID, "shelter", "delivered", "accepted", "requester", None, 5],
         MalformedError),
        ("a referral pair's kind",
         [1, "referral", TID, "shelter", "delivered", "accepted", "recipient", None, 5],
         MalformedError),
        ("refused for an unknown reason",
         [1, "transfer-request", REQ, "police", "delivered", "refused", "owner", "busy", 5],
         UnknownReasonCodeError),
        ("refused without a reason",
         [1, "transfer-request", REQ, "police", "delivered", "refused", "owner", None, 5],
         MalformedError),
        ("at 2^63", [1, "transfer", TID, "shelter", "delivered", "accepted", "transferee", None,
                     2**63], MalformedError),
        ("at negative", [1, "transfer", TID, "shelter", "delivered", "accepted", "transferee",
                         None, -1], MalformedError),
        ("version 2", [2, "transfer", TID, "shelter", "delivered", "accepted", "transferee",
                       None, 5], MalformedError),
        ("a referral pair's transition body", [1, REF, "shelter", "acknowledged", "declined",
                                               "recipient", "no-capacity", None, 5],
         MalformedError),
    ],
)  # fmt: skip
def test_a_transfer_step_refused(name: str, fields: list[object], error: type) -> None:
    with pytest.raises(error):
        TransferStep.decode(codec.pack(fields))


def test_at_is_bounded_below_2_to_the_63() -> None:
    last = [1, "transfer", TID, "shelter", "delivered", "accepted", "transferee", None, 2**63 - 1]
    assert TransferStep.decode(codec.pack(last)).at == 2**63 - 1
    with pytest.raises(ValueError):
        TransferStep("transfer", TID, "shelter", "delivered", "accepted", "transferee", None,
                     2**63)  # fmt: skip


def test_a_system_step_decodes_for_the_receiver_s_party_check() -> None:
    """A system step is a step of the table, so it decodes; it is never sent, and the
    receiver's party check refuses one that is (as in §8.4)."""
    body = codec.pack([1, "transfer", TID, "shelter", "proposed", "delivered", "system", None, 5])
    assert TransferStep.decode(body).party == "system"


def test_a_case_transfer_with_a_null_attachment_key_is_schema_invalid() -> None:
    with pytest.raises(SchemaInvalidError):
        CaseTransfer.decode(
            codec.canonical_json({**_transfer_doc(), "attachment_key": None}),
            limits=DEFAULT_LIMITS,
        )
    keyed = CaseTransfer.decode(
        codec.canonical_json({**_transfer_doc(), "attachment_key": "a2V5"}), limits=DEFAULT_LIMITS
    )
    assert keyed.attachment_key == "a2V5"


def test_agents_of_this_release_take_requests_steps_and_transfers() -> None:
    """As built (PROTOCOL §8.10): the receiver's body checks decode a `transfer-request` and
    a `transfer-step` (their state checks are agents/transfer_requests.py's), judge a
    `case-transfer`'s R as a referral (a bare fragment fails the referral schema:
    `schema-invalid`) and decode a `case-owner-changed` at a competent authority only
    (`not-for-this-role`); a step's body sent as a `transition` is no referral pair's step
    (`malformed`)."""
    step = TransferStep("transfer", TID, "shelter", "delivered", "accepted", "transferee", None, 5)
    with pytest.raises(MalformedError):
        inbound.check(TRANSITION, step.encode(), roles={"ngo"}, limits=DEFAULT_LIMITS)
    request = TransferRequest(REQ, None, "police", REF, "other", 7)
    taken = {T.TRANSFER_REQUEST: request, T.TRANSFER_STEP: step}
    for kind, value in taken.items():
        checked = inbound.check(kind, value.encode(), roles={"ngo"}, limits=DEFAULT_LIMITS)
        assert checked == value
    with pytest.raises(SchemaInvalidError):
        inbound.check(
            T.CASE_TRANSFER,
            codec.canonical_json(_transfer_doc()),
            roles={"ngo"},
            limits=DEFAULT_LIMITS,
        )
    owner_changed = CaseOwnerChanged(CASE, "shelter", TID, 9)
    checked = inbound.check(
        T.CASE_OWNER_CHANGED,
        owner_changed.encode(),
        roles={"competent-authority"},
        limits=DEFAULT_LIMITS,
    )
    assert checked == owner_changed
    with pytest.raises(NotForThisRoleError):
        inbound.check(
            T.CASE_OWNER_CHANGED, owner_changed.encode(), roles={"ngo"}, limits=DEFAULT_LIMITS
        )


def test_the_audit_labels_of_steps_are_the_tables_names() -> None:
    """keys/audit.py's labels of `transfer-step.*` events (which cannot import agents/) name
    exactly the two lifecycles and their states."""
    from keys.audit import TRANSFER_STEP_LABELS

    assert TRANSFER_STEP_LABELS["transfer_kind"] == set(T.KINDS)
    assert TRANSFER_STEP_LABELS["to_state"] == {s for kind in T.KINDS for s in T.STATES[kind]}
