"""The OpenAPI 3.1 document of the agent's HTTP API, served at /openapi.json."""

from __future__ import annotations

import copy
import json
from typing import Any

from keys import DEFAULT_LIMITS
from keys.audit import LABELS
from keys.catalogue import (
    ACCESSIBILITY,
    CAPACITY_UNITS,
    MAX_PLACES,
    SERVICE_TYPES,
    SUITABLE_FOR,
)
from keys.decision import AGE_ROUTES
from keys.decision import OUTCOMES as DECISION_OUTCOMES
from keys.decision import REASON_CODES as DECISION_REASON_CODES
from keys.decision import STAGES as DECISION_STAGES
from keys.protection import EVENTS as PROTECTION_EVENTS
from keys.protection import PROTECTIONS
from keys.protection import REASONS as PROTECTION_REASONS
from runtime.http import json_object_body

from . import consent, referral
from . import contributions as SC
from .break_glass import REFUSAL_REASONS
from .cases import LEAVE_REASONS
from .cases import STATES as CASE_STATES
from .lifecycle import OUTCOMES, PARTIES, REASON_CODES, STATES
from .reconsideration import GROUNDS as RECONSIDERATION_GROUNDS
from .transfers import REFUSE_REASONS as TRANSFER_REFUSE_REASONS
from .transfers import REJECT_REASONS as TRANSFER_REJECT_REASONS
from .transfers import REVOKE_REASONS as TRANSFER_REVOKE_REASONS
from .transfers import STATES as TRANSFER_STATES
from .transfers import TRANSFER_REASONS

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_UNVERIFIABLE = {"409": {"$ref": "#/components/responses/Unverifiable"}}
#: The `reason` of a 409 for a stored receipt that does not verify (keys.errors codes).
UNVERIFIABLE_REASONS = (
    "bad-signature",
    "revoked-key",
    "retired-key",
    "unknown-key",
    "malformed",
    "consent-invalid",
)
_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _PROBLEM for c in codes}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


#: 1-200 printable ASCII characters, none at either end a space (HTTP strips those).
IDEMPOTENCY_KEY_PATTERN = "^[!-~]([ -~]{0,198}[!-~])?$"
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Repeat a POST safely: the same key and body give the first answer again.",
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
}
#: The largest `cursor` the list operations take, and the largest `since`.
MAX_CURSOR = 2**62
MAX_SINCE = 2**40
_PAGING = [
    {
        "name": "cursor",
        "in": "query",
        "description": "The `next_cursor` of the page before",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_CURSOR},
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": DEFAULT_LIMITS.max_page_size},
    },
]


def _page(item: dict[str, Any]) -> dict[str, Any]:
    """A page of a list: its items and the cursor of the next page (a decimal string; null
    on the last page)."""
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": item},
            "next_cursor": {"type": ["string", "null"], "pattern": "^(0|[1-9][0-9]*)$"},
        },
    }


def _inline(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """`schema` (a standalone JSON Schema 2020-12 document) as OpenAPI components: the root
    as `name` and each of its `$defs` as `name.def`, with every internal `#/$defs/...` (and
    `#`) reference rewritten to point inside this document. `$id` and `$schema` are dropped:
    an `$id` would make the references resolve against the (unreachable) published URL."""

    def target(ref: str) -> str:
        if ref == "#":
            return f"#/components/schemas/{name}"
        if ref.startswith("#/$defs/"):
            head, slash, tail = ref[len("#/$defs/") :].partition("/")
            return f"#/components/schemas/{name}.{head}{slash}{tail}"
        raise ValueError(f"{name}: reference {ref!r} does not stay inside the schema")

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: target(v) if k == "$ref" and isinstance(v, str) else rewrite(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    doc = copy.deepcopy(schema)
    defs: dict[str, Any] = doc.pop("$defs", {})
    for key in ("$id", "$schema"):
        doc.pop(key, None)
    components = {name: rewrite(doc)}
    components.update({f"{name}.{d}": rewrite(sub) for d, sub in defs.items()})
    return components


#: The published referral and consent receipt schemas, inlined so the document is
#: self-contained (no network needed to resolve it).
SCHEMAS: dict[str, Any] = {
    **{
        k: v
        for version in referral.SCHEMA_VERSIONS
        for k, v in _inline(referral.load_schema(version), f"ReferralV{version}").items()
    },
    **_inline(json.loads(consent.SCHEMA_PATH.read_text(encoding="utf-8")), "ConsentReceiptV1"),
}

#: A referral's legal hold (agents/retention.py).
_LEGAL_HOLD: dict[str, Any] = {
    "type": "object",
    "required": ["id", "sender", "legal_hold", "placed_at"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string"},
        "sender": {"type": "string"},
        "legal_hold": {"type": "boolean"},
        "placed_at": {"type": ["integer", "null"]},
    },
}
#: A path segment naming a referral, consent receipt or attachment: no id is longer (a
#: bound that keeps every request line the document allows within the server's limit).
_PATH_SEGMENT = {"type": "string", "maxLength": 128}
_PATH_ID = {"name": "id", "in": "path", "required": True, "schema": _PATH_SEGMENT}
_AGENCY_ID = {
    "type": "string",
    "maxLength": 64,
    "pattern": "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$",
}
#: Referral ids are chosen by each sender (PROTOCOL.md §6.1): only (sender, id) names a
#: referral for sure. Without `sender`, an id that referrals of several senders share is 409.
_SENDER = {
    "name": "sender",
    "in": "query",
    "required": False,
    "description": "The agency that sent the referral (this agency for its own). Needed "
    "only when referrals from several senders have this id: the answer is then 409.",
    "schema": _AGENCY_ID,
}
#: What the answers hold (agents/api.py, agents/desk.py): closed objects, every member.
_TIME: dict[str, Any] = {"type": "integer", "minimum": 0}
_HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_REASON_CODE = {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,39}$"}
_REFERRAL_TYPE = {"enum": sorted(LABELS["referral_type"])}
_URGENCY = {"enum": sorted(LABELS["urgency"])}
_STATE = {"enum": list(STATES)}
#: A referral of any schema version an agent accepts.
_REFERRAL_DOC = {
    "anyOf": [{"$ref": f"#/components/schemas/ReferralV{v}"} for v in referral.SCHEMA_VERSIONS]
}
#: `?schema=2` on a referral's read.
_AS_SCHEMA = {
    "name": "schema",
    "in": "query",
    "description": "2: a received referral of schema v1 is returned as v2",
    "schema": {"enum": ["2"]},
}
#: A referral as the recipient opened it, or null once erased.
_OPENED = {"anyOf": [*_REFERRAL_DOC["anyOf"], {"type": "null"}]}


def _closed(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object with exactly `properties`, each required but the `optional` ones."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
        "properties": properties,
    }


#: PUT /v1/catalogue and GET /v1/services: a service (PROTOCOL.md §8.8).
_CODES = {"type": "array", "uniqueItems": True, "items": {"type": "string"}}
_SERVICE = {
    "service_id": {"type": "string", "pattern": "^[0-9a-f]{16}$", "maxLength": 16},
    "type": {"enum": list(SERVICE_TYPES)},
    "languages": {**_CODES, "minItems": 1, "maxItems": 10},
    "suitable_for": {**_CODES, "minItems": 1, "items": {"enum": list(SUITABLE_FOR)}},
    "accessibility": {**_CODES, "items": {"enum": list(ACCESSIBILITY)}},
    "regions": {**_CODES, "minItems": 1, "maxItems": 16},
    "capacity_unit": {"enum": list(CAPACITY_UNITS)},
}
_CAPACITY = _closed(
    {
        "seq": {"type": "integer", "minimum": 1},
        "free": {"type": "integer", "minimum": 0, "maximum": MAX_PLACES},
        "total": {"type": "integer", "minimum": 0, "maximum": MAX_PLACES},
        "as_of": {"type": "integer"},
        "expires": {"type": "integer"},
    }
)
_CATALOGUE = _closed(
    {
        "agency": _AGENCY_ID,
        "version": {"type": "integer", "minimum": 1},
        "expires": {"type": "integer"},
        "services": {"type": "array", "items": _closed(_SERVICE)},
    }
)
_LISTED_SERVICE = _closed(
    {
        "agency": _AGENCY_ID,
        "catalogue_version": {"type": "integer", "minimum": 1},
        **_SERVICE,
        "capacity": {
            "description": "null while unknown: none published, or the last one expired",
            "anyOf": [_CAPACITY, {"type": "null"}],
        },
    }
)
_SERVICE_QUERY = [
    {"name": "type", "in": "query", "schema": {"enum": list(SERVICE_TYPES)}},
    {"name": "suitable_for", "in": "query", "schema": {"enum": list(SUITABLE_FOR)}},
    {
        "name": "language",
        "in": "query",
        "schema": {"type": "string", "pattern": "^[a-z]{2,3}$", "maxLength": 3},
    },
    {
        "name": "region",
        "in": "query",
        "description": "A region code; a country also matches its subdivisions",
        "schema": {"type": "string", "pattern": "^[A-Z]{2}(-[A-Z0-9]{1,3})?$", "maxLength": 6},
    },
    {
        "name": "available",
        "in": "query",
        "description": "true: only services whose capacity is known and has a free place",
        "schema": {"enum": ["true", "false"]},
    },
]

#: GET /v1/referrals: one referral pair (this agency and one counterpart).
_REFERRAL_ROW = _closed(
    {
        "id": _ID,
        "sender": _AGENCY_ID,
        "counterpart": _AGENCY_ID,
        "side": {"enum": ["sender", "recipient"]},
        "state": _STATE,
        "referral_type": _REFERRAL_TYPE,
        "urgency": _URGENCY,
        "created": _TIME,
        "updated": _TIME,
    }
)
#: GET /v1/inbox: one received referral.
_INBOX_ROW = _closed(
    {
        "id": {**_ID, "type": ["string", "null"]},
        "message_id": {"type": "string"},
        "sender": _AGENCY_ID,
        "created": _TIME,
        "received_at": _TIME,
        "envelope_hash": _HASH,
        "referral": _OPENED,
        "erased": {"type": "boolean"},
    }
)
_DELIVERY = {"enum": ["queued", "sent", "delivered", "failed"]}
_COMMON = {
    "id": _ID,
    "legal_hold": {"type": "boolean"},
    "referral_type": _REFERRAL_TYPE,
    "urgency": _URGENCY,
    "legal_basis": {"type": "string"},
    "created": _TIME,
    "sender": _AGENCY_ID,
}
#: When the pair's `respond` clock is due (PROTOCOL §8.5 "Clocks"): its envelope's `created`
#: plus the tier's `due_seconds` of the national policy; null without a policy (or while the
#: agent trusts no directory). It stays once the clock stopped (accepted, declined, final),
#: so a reader can see whether it was met.
_DUE_AT = {**_TIME, "type": ["integer", "null"]}
#: A break-glass referral's hold at its sender (agents/break_glass.py, PROTOCOL §8.2 step 2).
_BREAK_GLASS_STATE = {"enum": ["awaiting_confirmation", "submitted", "refused", "lapsed"]}
_CLIENT_NAME = {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,39}$"}
_HOLD = _closed(
    {
        "reason": _REASON_CODE,
        "state": _BREAK_GLASS_STATE,
        "requested_by": _CLIENT_NAME,
        "requested_at": _TIME,
        "confirm_by": _TIME,
        "decided_by": {**_CLIENT_NAME, "type": ["string", "null"]},
        "decided_at": {**_TIME, "type": ["integer", "null"]},
        "refusal": {"enum": [*REFUSAL_REASONS, None]},
    }
)
_HELD = _closed(
    {
        "id": _ID,
        "side": {"const": "sender"},
        "sender": _AGENCY_ID,
        "state": _BREAK_GLASS_STATE,
        "recipients": {"type": "array", "items": _AGENCY_ID},
        "client_reference": {"type": ["string", "null"]},
        "break_glass": _HOLD,
        #: A waiting one's document as submitted, to a client with confirm and read.
        "referral": {"type": "object"},
    },
    optional=("referral",),
)
#: As a recipient received it: the routing member, or null (not break-glass, or erased).
_RECEIVED_GLASS = {
    "anyOf": [
        _closed({"reason": _REASON_CODE, "confirmed": {"const": True}}),
        {"type": "null"},
    ]
}
#: As a recipient received it: the service asked for (PROTOCOL §8.2 step 5), or null (none
#: named, or erased).
_RECEIVED_SERVICE = {
    "anyOf": [
        _closed({"agency": _AGENCY_ID, "service_id": _SERVICE["service_id"]}),
        {"type": "null"},
    ]
}
#: GET /v1/referrals/{id}: as its sender sees it (per recipient) or as a recipient does.
_REFERRAL = {
    "oneOf": [
        _closed(
            {
                **_COMMON,
                "side": {"const": "sender"},
                "status": _DELIVERY,
                "client_reference": {"type": ["string", "null"]},
                "recipients": {
                    "type": "array",
                    "items": _closed(
                        {
                            "agency": _AGENCY_ID,
                            "state": _STATE,
                            "status": _DELIVERY,
                            "updated": _TIME,
                            "escalated_at": {**_TIME, "type": ["integer", "null"]},
                            "due_at": _DUE_AT,
                            "failure": _REASON_CODE,
                        },
                        optional=("failure",),
                    ),
                },
                "break_glass": {"anyOf": [_HOLD, {"type": "null"}]},
            }
        ),
        _closed(
            {
                **_COMMON,
                "side": {"const": "recipient"},
                "state": _STATE,
                "due_at": _DUE_AT,
                "referral": _OPENED,
                "erased": {"type": "boolean"},
                "break_glass": _RECEIVED_GLASS,
                "service": _RECEIVED_SERVICE,
            }
        ),
        _HELD,
    ]
}
_HISTORY = _closed(
    {
        "id": _ID,
        "sender": _AGENCY_ID,
        "items": {
            "type": "array",
            "items": _closed(
                {
                    "counterpart": _AGENCY_ID,
                    "from": {"enum": [*STATES, None]},
                    "to": _STATE,
                    "party": {"enum": list(PARTIES)},
                    "reason": {"enum": [*REASON_CODES, None]},
                    "outcome": {"enum": [*OUTCOMES, None]},
                    "at": _TIME,
                }
            ),
        },
    }
)
#: Identification cases and decisions (PROTOCOL.md §8.7).
_CASE_ID = {"type": "string", "maxLength": 32, "pattern": "^[0-9a-f]{32}$"}
_PROTECTION_REASONS = sorted({c for codes in PROTECTION_REASONS.values() for c in codes})
_DECISION_REASONS = sorted({c for codes in DECISION_REASON_CODES.values() for c in codes})
_DECISION_FIELDS: dict[str, Any] = {
    "decision_id": _ID,
    "authority": _AGENCY_ID,
    "case_id": _CASE_ID,
    "stage": {"enum": list(DECISION_STAGES)},
    "outcome": {"enum": list(DECISION_OUTCOMES)},
    "reason": {"enum": [*_DECISION_REASONS, None]},
    "decided_at": _TIME,
    "age_route": {"enum": list(AGE_ROUTES)},
    "supersedes": {"anyOf": [_ID, {"type": "null"}]},
    "owner": _AGENCY_ID,
    "referral_id": _ID,
}
_DECISION = _closed(_DECISION_FIELDS)
#: A listing under a pair: `erased` once the referral received under it was erased (what
#: was received under it went too; a competent authority's own decisions and notices stay).
_DECISIONS = _closed(
    {
        "id": _ID,
        "sender": _AGENCY_ID,
        "erased": {"type": "boolean"},
        "items": {"type": "array", "items": _DECISION},
    }
)
_CASE_FIELDS = {
    "case_id": _CASE_ID,
    "owner": _AGENCY_ID,
    "referral_id": _ID,
    "state": {"enum": list(CASE_STATES)},
    "age_route": {"enum": list(AGE_ROUTES)},
    "opened_at": _TIME,
    "updated": _TIME,
    "left_reason": {"enum": [*LEAVE_REASONS, None]},
}
#: Protection notices (PROTOCOL.md §8.9).
_DATE = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
_NOTICE = _closed(
    {
        "notice_id": _ID,
        "authority": _AGENCY_ID,
        "case_id": _CASE_ID,
        "protection": {"enum": list(PROTECTIONS)},
        "event": {"enum": list(PROTECTION_EVENTS)},
        "starts_on": _DATE,
        "ends_on": {"anyOf": [_DATE, {"type": "null"}]},
        "reason": {"enum": [*_PROTECTION_REASONS, None]},
        "at": _TIME,
        "previous": {"anyOf": [_ID, {"type": "null"}]},
        "owner": _AGENCY_ID,
        "referral_id": _ID,
    }
)
_NOTICES = _closed(
    {
        "id": _ID,
        "sender": _AGENCY_ID,
        "erased": {"type": "boolean"},
        "items": {"type": "array", "items": _NOTICE},
    }
)
_PROTECTION = _closed(
    {
        "state": {"enum": ["off", "on", "none", "running", "not_granted", "ended"]},
        "starts_on": {"anyOf": [_DATE, {"type": "null"}]},
        "ends_on": {"anyOf": [_DATE, {"type": "null"}]},
        "notices": {"type": "array", "items": _NOTICE},
    }
)
_PROTECTIONS = _closed({name: _PROTECTION for name in PROTECTIONS})
_RECONSIDERATION = _closed(
    {
        "request_id": _ID,
        "requester": _AGENCY_ID,
        **{name: _DECISION_FIELDS[name] for name in ("case_id", "decision_id", "stage")},
        "ground": {"enum": list(RECONSIDERATION_GROUNDS)},
        "at": _TIME,
        "received_at": _TIME,
        "owner": _AGENCY_ID,
        "referral_id": _ID,
        "pending": {"type": "boolean"},
        "answered_by": {"anyOf": [_ID, {"type": "null"}]},
        "ended_by": {"enum": ["left_process", None]},
    }
)
_CASE = _closed(
    {
        **_CASE_FIELDS,
        "decisions": {"type": "array", "items": _DECISION},
        "protections": _PROTECTIONS,
        "reconsiderations": {"type": "array", "items": _RECONSIDERATION},
    }
)
_PROTECTED = _closed({"case_id": _CASE_ID, "notice_id": _ID, "protections": _PROTECTIONS})
_LEFT = _closed({**_CASE_FIELDS, "protections": _PROTECTIONS})
_CASES = _closed(
    {
        "items": {"type": "array", "items": _closed(_CASE_FIELDS)},
        "next_cursor": {"type": ["string", "null"]},
    }
)
_DECIDED = _closed({**_CASE_FIELDS, "decision_id": _ID})
#: Reconsideration requests (PROTOCOL.md §8.7 "Reconsideration requests").
_REQUESTED = _closed(
    {
        "request_id": _ID,
        **{
            name: _DECISION_FIELDS[name]
            for name in ("decision_id", "authority", "case_id", "stage", "owner", "referral_id")
        },
        "ground": {"enum": list(RECONSIDERATION_GROUNDS)},
        "at": _TIME,
    }
)
#: Transfer requests (PROTOCOL.md §8.10), as both parties hold them.
_TRANSFER_REQUEST = _closed(
    {
        "request_id": _ID,
        "requester": _AGENCY_ID,
        "owner": _AGENCY_ID,
        "referral_id": _ID,
        "case_id": {"anyOf": [_ID, {"type": "null"}]},
        "reason": {"enum": list(TRANSFER_REASONS)},
        "at": _TIME,
        "side": {"enum": ["requester", "owner"]},
        "state": {"enum": list(TRANSFER_STATES["transfer-request"])},
        "step_reason": {"enum": [*TRANSFER_REFUSE_REASONS, None]},
        "failure": {
            **_REASON_CODE,
            "type": ["string", "null"],
            "description": "At the requester: why its `transfer-request` failed for good (the "
            "owner's agent refused it, or it could not be delivered); the state then stays "
            "`requested`. Null otherwise",
        },
        "updated": _TIME,
    }
)
_PERIOD_PATTERN = "^[0-9]{4}-(?:0[1-9]|1[0-2])$"
_PERIOD = {"type": "string", "pattern": _PERIOD_PATTERN}


def _codes(codes: tuple[str, ...]) -> dict[str, Any]:
    return {"enum": list(codes)}


_COUNT = {"type": "integer", "minimum": 1, "maximum": SC.MAX_COUNT}
_CONTRIBUTION = _closed(
    {
        "authority": _AGENCY_ID,
        "period": _PERIOD,
        "envelope_hash": _HASH,
        "received_at": _TIME,
        "cells": {
            "type": "array",
            "maxItems": SC.MAX_CELLS,
            "items": _closed(
                {
                    "age_group": _codes(SC.AGE_GROUPS),
                    "count": _COUNT,
                    "form": _codes(SC.FORMS),
                    "outcome": _codes(SC.OUTCOMES),
                    "sex": _codes(SC.SEXES),
                    "stage": _codes(SC.STAGES),
                }
            ),
        },
        "durations": {
            "type": "array",
            "maxItems": SC.MAX_DURATIONS,
            "items": _closed(
                {
                    "age_group": _codes(SC.AGE_GROUPS),
                    "count": _COUNT,
                    "days": {"type": "integer", "minimum": 0, "maximum": SC.MAX_DAYS},
                    "form": _codes(SC.FORMS),
                    "interval": _codes(SC.INTERVALS),
                    "sex": _codes(SC.SEXES),
                }
            ),
        },
    }
)
#: Case transfers (PROTOCOL.md §8.10), as both parties hold them; at the transferee one
#: transfer read alone carries R, its own record (`referral`, null once erased).
_TRANSFER = _closed(
    {
        "transfer_id": _ID,
        "owner": _AGENCY_ID,
        "transferee": _AGENCY_ID,
        "referral_id": {**_ID, "description": "R's id: fresh, never one of the owner's pairs"},
        "case_id": {"anyOf": [_ID, {"type": "null"}]},
        "reason": {"enum": list(TRANSFER_REASONS)},
        "request_id": {"anyOf": [_ID, {"type": "null"}]},
        "urgency": {"type": "string"},
        "side": {"enum": ["owner", "transferee"]},
        "state": {"enum": list(TRANSFER_STATES["transfer"])},
        "step_reason": {
            "enum": [*sorted({*TRANSFER_REJECT_REASONS, *TRANSFER_REVOKE_REASONS}), None]
        },
        "failure": {
            **_REASON_CODE,
            "type": ["string", "null"],
            "description": "At the owner: why its `case-transfer` failed for good (the "
            "transferee's agent refused it, or it could not be delivered); the transfer is "
            "then `expired` and the request it answered `delivered` again. Null otherwise",
        },
        "authority_failure": {
            **_REASON_CODE,
            "type": ["string", "null"],
            "description": "At the owner of a transfer naming a case: why its "
            "`case-owner-changed` to the case's authority could not be sealed or failed for "
            "good (the authority's agent refused it); `/complete` is then taken, the "
            "authority keeping the old owner. Null otherwise",
        },
        "updated": _TIME,
        "referral": _OPENED,
    },
    optional=("referral",),
)
_OWNER = {
    "name": "owner",
    "in": "query",
    "required": False,
    "description": "The agency that proposed the transfer (this agency for its own). Needed "
    "only when transfers of several owners have this id: the answer is then 409.",
    "schema": _AGENCY_ID,
}
_PATH_REQUEST_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 32, "pattern": "^[0-9a-f]{32}$"},
}
#: Request ids are chosen by each requester: only (requester, id) names one for sure.
_REQUESTER = {
    "name": "requester",
    "in": "query",
    "required": False,
    "description": "The agency that sent the request (this agency for its own). Needed "
    "only when requests from several requesters have this id: the answer is then 409.",
    "schema": _AGENCY_ID,
}
_PATH_CASE_ID = {"name": "case_id", "in": "path", "required": True, "schema": _CASE_ID}
_TRANSITIONED = _closed(
    {"id": _ID, "sender": _AGENCY_ID, "counterpart": _AGENCY_ID, "state": _STATE}
)
#: GET /v1/consents/{id} (nrm format) and the answer to a withdrawal.
_CONSENT_STATUS = _closed(
    {
        "id": {"type": "string"},
        "receipt": {"$ref": "#/components/schemas/ConsentReceiptV1"},
        "signing_kid": {
            "type": "string",
            "description": "the key that signed the receipt (perhaps an earlier key of this "
            "agency)",
        },
        "recorded_at": _TIME,
        "withdrawn_at": {**_TIME, "type": ["integer", "null"]},
        "recipients": {
            "type": "array",
            "items": _closed(
                {
                    "agency": _AGENCY_ID,
                    "referral_id": _ID,
                    "erasure_confirmed_at": {**_TIME, "type": ["integer", "null"]},
                }
            ),
        },
        "pending": {"type": "array", "items": _AGENCY_ID},
    }
)
#: GET /v1/consents/{id}?format=kantara: a Kantara Consent Receipt 1.1 (agents/consent.py).
_KANTARA = _closed(
    {
        "version": {"const": consent.KANTARA_VERSION},
        "jurisdiction": {"type": "string"},
        "consentTimestamp": _TIME,
        "collectionMethod": {"type": "string"},
        "consentReceiptID": {"type": "string"},
        "publicKey": {"type": "string"},
        "language": {"type": "string"},
        "piiPrincipalId": {"type": "string"},
        "piiControllers": {"type": "array", "items": {"type": "object"}},
        "policyUrl": {"type": "string"},
        "services": {"type": "array", "items": {"type": "object"}},
        "sensitive": {"type": "boolean"},
        "spiCat": {"type": "array", "items": {"type": "string"}},
    },
    optional=("publicKey",),
)
_ATTACHMENT = _closed(
    {
        "attachment_id": _ID,
        "sha256": _HASH,
        "size": {"type": "integer", "minimum": 1},
        "media_type": {"type": "string"},
    }
)

_NULLABLE_TIME = {**_TIME, "type": ["integer", "null"]}
#: POST /v1/subject-access: one verified `record.accessed` event (PROTOCOL.md §9.0).
_ACCESS = {
    "client": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,39}$"},
    "time": _TIME,
    "record": {"enum": ["body", "attachment"]},
    "categories": {"type": "array", "items": {"enum": list(referral.CATEGORIES)}},
    "reads": {"type": "integer", "minimum": 1},
    "event_id": _ID,
    "index": {"type": "integer", "minimum": 0},
}
_SUBJECT_ACCESS = _closed(
    {
        "agency": _AGENCY_ID,
        "checkpoint": {
            "description": "The ledger checkpoint every access was verified in (null: no "
            "id was known, the ledger was not asked)",
            "anyOf": [
                _closed({"size": {"type": "integer", "minimum": 0}, "timestamp": _TIME}),
                {"type": "null"},
            ],
        },
        "referrals": {
            "type": "array",
            "items": {
                "oneOf": [
                    _closed({"id": _ID, "known": {"const": False}}),
                    _closed(
                        {
                            "id": _ID,
                            "known": {"const": True},
                            "created": _TIME,
                            "referral_type": _REFERRAL_TYPE,
                            "urgency": _URGENCY,
                            "legal_basis": {"type": "string"},
                            "recipients": {
                                "type": "array",
                                "items": _closed(
                                    {
                                        "agency": _AGENCY_ID,
                                        "categories": {
                                            "description": "null: sent before this was kept",
                                            "type": ["array", "null"],
                                            "items": {"enum": list(referral.CATEGORIES)},
                                        },
                                        "state": {
                                            "description": "the pair's state; of R of a "
                                            "case transfer, the transfer's",
                                            "enum": sorted(
                                                set(STATES) | set(TRANSFER_STATES["transfer"])
                                            ),
                                        },
                                        "sent_at": _NULLABLE_TIME,
                                        "delivered_at": _NULLABLE_TIME,
                                        "consent_withdrawn_at": _NULLABLE_TIME,
                                        "erasure_confirmed_at": _NULLABLE_TIME,
                                        "accesses": {"type": "array", "items": _closed(_ACCESS)},
                                        "onward": {"type": "string"},
                                    }
                                ),
                            },
                            "other_accesses": {
                                "type": "array",
                                "items": _closed({"agency": _AGENCY_ID, **_ACCESS}),
                            },
                        }
                    ),
                ]
            },
        },
    }
)

#: /healthz: `status` is `ok` or `warning` (200: the directory or the newest root expires within
#: the warning window, `reasons` say which) or `degraded` (503); `instance` is this process's
#: lease on the agency's inbox (docs/PROTOCOL.md §5.2); `tasks` the background loops running,
#: a loop that died adds `task-died:<name>` to `reasons`; `version` is the release. Other
#: members describe the bus, trust, the agency's standing and the ledger checks.
_HEALTH: dict[str, Any] = {
    "type": "object",
    "required": ["status", "reasons", "version", "agency", "bus", "instance"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "warning", "degraded"]},
        "version": {"type": "string", "description": "This agent's release (nrm --version)"},
        "reasons": {
            "type": "array",
            "items": {
                "anyOf": [
                    {
                        "enum": [
                            "no-directory",
                            "directory-expired",
                            "root-expired",
                            "directory-expires-soon",
                            "root-expires-soon",
                            "services-unread",
                        ]
                    },
                    # A background loop died (runtime/supervisor.py): degraded.
                    {"type": "string", "pattern": "^task-died:.+$"},
                ]
            },
        },
        "tasks": {"type": "array", "items": {"type": "string"}},
        "agency": {"type": "string"},
        "bus": {"type": "string", "enum": ["connected", "disconnected", "refused"]},
        "instance": {
            "type": "object",
            "required": ["id", "run", "lease"],
            "properties": {
                "id": _ID,
                "run": _ID,
                "lease": {
                    "type": "string",
                    "enum": ["acquiring", "held", "renewing", "duplicate-instance"],
                },
                "holder": {**_ID, "type": ["string", "null"]},
            },
        },
    },
}

#: RFC 9457 problem details as every error answer carries them.
#: Besides the four RFC 9457 members only the named extras of agents/errors.py occur.
_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string", "pattern": "^https://nrm-exchange\\.org/problems/[a-z0-9-]+$"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "problems": {"type": "array", "items": {"type": "string"}},
        "allowed": {
            "type": "array",
            "items": {
                "anyOf": [
                    _STATE,
                    {"enum": list(TRANSFER_STATES["transfer-request"])},
                    {"enum": list(TRANSFER_STATES["transfer"])},
                ]
            },
            "description": "On a 409 for a step not allowed: the states it may move to "
            "(a referral's, a transfer request's or a transfer's)",
        },
        "referral_id": {
            **_ID,
            "description": "On a 409 for a client_reference already used: the referral it names",
        },
        "senders": {
            "type": "array",
            "items": _AGENCY_ID,
            "description": "On a 409 for an id that referrals of several senders share: theirs",
        },
        "requesters": {
            "type": "array",
            "items": _AGENCY_ID,
            "description": "On a 409 for an id that transfer requests of several requesters "
            "share: theirs",
        },
        "owners": {
            "type": "array",
            "items": _AGENCY_ID,
            "description": "On a 409 for an id that transfers of several owners share: theirs",
        },
        "member": {
            "type": "string",
            "description": "On a 422: the request member that is wrong",
        },
        "state": {
            "type": "string",
            "description": "On a 409 for a break-glass referral no longer waiting: its state",
        },
        "case_id": {
            **_CASE_ID,
            "description": "On a 409 for a referral linked to another case: that case",
        },
        "decides": {
            "type": "array",
            "items": {"enum": list(DECISION_STAGES)},
            "description": "On a 409 not-for-this-role for a decision: the identification "
            "stages this authority's directory entry lets it decide",
        },
        "not_before": {
            "type": "integer",
            "minimum": 0,
            "description": "On a 409 too-early: the first second the decision may be made",
        },
        "reason": {
            "type": "string",
            "description": "A stable reason code. On a 503 for POST /v1/subject-access: why "
            "the ledger's access records could not be had verified; on a 503 for another "
            "POST: why this agency cannot send now — removed, key-revoked, key-unlisted or "
            "key-retired (its standing in the trust directory), or duplicate-instance "
            "(another process holds its inbox lease); "
            "on a 409 for a stored consent: why it does not verify",
        },
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "NRM Exchange agent API",
        "version": "1",
        "description": "The local API an agency's own systems use to refer presumed victims "
        "of trafficking, record consent and follow the lifecycle. Errors are RFC 9457 "
        "problem details; every operation answers 400 to a request the server cannot parse "
        f"(a request line over {DEFAULT_LIMITS.http_max_request_line} bytes, a header field "
        f"over {DEFAULT_LIMITS.http_max_header_field}, over {DEFAULT_LIMITS.http_max_headers} "
        "header fields, not HTTP/1.1). Scopes: submit, read, act.",
    },
    "security": [{"bearer": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": SCHEMAS,
        "responses": {
            "Problem": {
                "description": "RFC 9457 problem details",
                "content": {"application/problem+json": {"schema": _PROBLEM_SCHEMA}},
            },
            "Unverifiable": {
                "description": "409: a stored consent receipt does not verify under the key "
                "that signed it, as the key history describes that key when the receipt was "
                "recorded (PROTOCOL.md §8.3); `reason` says why. Nothing was done. Also 409 "
                "when the request conflicts otherwise (an id taken, already withdrawn).",
                "content": {
                    "application/problem+json": {
                        "schema": {
                            **_PROBLEM_SCHEMA,
                            "properties": {
                                **_PROBLEM_SCHEMA["properties"],
                                "status": {"type": "integer", "const": 409},
                                "reason": {"type": "string", "enum": list(UNVERIFIABLE_REASONS)},
                            },
                        }
                    }
                },
            },
        },
    },
    "paths": {
        "/healthz": {
            "get": {
                "summary": "Health: bus, trust directory and root expiry, the agency's standing in "
                "it (ok, removed, key-revoked, key-unlisted, key-retired), instance lease, "
                "ledger checks",
                "description": (
                    "status is ok, warning (HTTP 200: the directory or the newest root "
                    "expires within the warning window; reasons say which) or degraded "
                    "(HTTP 503)."
                ),
                "security": [],
                "responses": {
                    "200": _json(_HEALTH, "OK or warning"),
                    "503": _json(_HEALTH, "Degraded"),
                    **_errors(400),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (metrics scope, which reads nothing else, or read "
                "scope), among them "
                "nrm_directory_expiry_timestamp_seconds, nrm_root_expiry_timestamp_seconds and "
                "nrm_agent_info{agency,version}",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 403),
                },
            }
        },
        "/v1/referrals": {
            "post": {
                "summary": "Submit a referral (submit scope); 202 once committed to the outbox",
                "parameters": [_IDEMPOTENCY],
                "requestBody": json_object_body(
                    ["recipients", "referral"],
                    {
                        "recipients": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": DEFAULT_LIMITS.max_recipients,
                            "uniqueItems": True,
                            "items": _AGENCY_ID,
                        },
                        "referral": {
                            "description": "referral_id is assigned by this "
                            "agent (400 if given) and returned as `id`",
                            "allOf": [
                                _REFERRAL_DOC,
                                {"not": {"required": ["referral_id"]}},
                            ],
                        },
                        "client_reference": {
                            "description": "The case system's own reference for "
                            "this referral: kept by this agent, never sent; one "
                            "referral per reference (409 names the earlier one)",
                            "type": "string",
                            "pattern": "^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$",
                        },
                    },
                ),
                "responses": {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["id", "state", "recipients"],
                            "properties": {
                                "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                                "state": {"enum": ["submitted", "awaiting_confirmation"]},
                                "recipients": {"type": "array", "items": _AGENCY_ID},
                                "client_reference": {"type": "string"},
                                "break_glass": _HOLD,
                            },
                        },
                        "Accepted: `id` is the referral id this agent assigned. A referral "
                        "with `break_glass` (PROTOCOL §8.2 step 2: an adult, vital_interests, "
                        "a reason of the national policy's break_glass.reasons; else 422) is "
                        "held unsent, `awaiting_confirmation`, until another API client "
                        "confirms it (POST /v1/referrals/{id}/break-glass/confirm). A "
                        "referral naming a `service` (§8.2 step 5) is refused with 422 "
                        "(member `service`) unless its agency is among the recipients and "
                        "its current verified catalogue lists the service (GET /v1/services)",
                    ),
                    **_errors(400, 401, 403, 413, 415, 422, 503),
                    **_UNVERIFIABLE,
                },
            },
            "get": {
                "summary": "List referrals (read scope)",
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"type": "string", "maxLength": 64}},
                    {
                        "name": "since",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SINCE},
                    },
                    *_PAGING,
                ],
                "responses": {
                    "200": _json(_page(_REFERRAL_ROW)),
                    **_errors(400, 401, 403),
                },
            },
        },
        "/v1/referrals/{id}": {
            "get": {
                "summary": "One referral: per-recipient state and delivery (read scope). "
                "A sender's `status` per recipient is queued, sent, delivered or failed; a "
                "failed copy has `failure` (key-revoked, removed, key-retired) and will never "
                "be delivered: submit the referral again once the agency can send; "
                "`consent-withdrawn`: the consent was withdrawn before it was published. "
                "`legal_hold` says whether retention purges are stopped for it. `sender` "
                "is the agency that sent the referral (this agency for its own). Reading a "
                "received referral's body is recorded: a `record.accessed` audit event names "
                "this client (PROTOCOL.md §9.0). A break-glass referral still held "
                "(`awaiting_confirmation`) shows its `referral` document, as submitted, to "
                "a client with the confirm and read scopes only (what it would confirm). "
                "`schema=2` reads a received referral of schema v1 as v2 (PROTOCOL.md §8.1)",
                "parameters": [_PATH_ID, _SENDER, _AS_SCHEMA],
                "responses": {
                    "200": _json(_REFERRAL),
                    **_errors(400, 401, 403, 404, 409),
                },
            }
        },
        "/v1/referrals/{id}/decisions": {
            "get": {
                "summary": "The identification decisions held under a referral, each verified "
                "again (read scope)",
                "parameters": [_PATH_ID, _SENDER],
                "responses": {"200": _json(_DECISIONS), **_errors(400, 401, 403, 404, 409)},
            }
        },
        "/v1/referrals/{id}/protections": {
            "get": {
                "summary": "The protection notices held under a referral, in chain order, "
                "each verified again (read scope)",
                "parameters": [_PATH_ID, _SENDER],
                "responses": {"200": _json(_NOTICES), **_errors(400, 401, 403, 404, 409)},
            }
        },
        "/v1/referrals/{id}/reconsiderations": {
            "post": {
                "summary": "Ask the competent authority to reconsider a negative decision this "
                "agency holds under the referral as the pair's party, not as a co-ordinator "
                '(act scope; PROTOCOL §8.7 "Reconsideration requests"): sealed to the '
                "decision's authority; 404 for no such decision, 409 with `reason` "
                "not-negative, superseded, not-for-this-role (the authority is no longer one), "
                "out-of-time (the policy's reconsideration_window_days) or the stored "
                "decision's verification failure",
                "parameters": [_PATH_ID, _SENDER, _IDEMPOTENCY],
                "requestBody": json_object_body(
                    ["decision_id", "ground"],
                    {"decision_id": _ID, "ground": {"enum": list(RECONSIDERATION_GROUNDS)}},
                ),
                "responses": {
                    "202": _json(_REQUESTED, "Sent to the authority"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/transfer-requests": {
            "post": {
                "summary": "Ask the owner of a referral this agency received for the case "
                "(act scope; PROTOCOL §8.10 `transfer-request`): stored `requested` and sealed "
                "to the owner; 404 for a referral not received from that owner, 409 with "
                "`reason` erased for one erased since, 422 for a case_id whose decisions or "
                "notices this agency does not hold under it",
                "parameters": [_IDEMPOTENCY],
                "requestBody": json_object_body(
                    ["owner", "referral_id", "case_id", "reason"],
                    {
                        "owner": _AGENCY_ID,
                        "referral_id": _ID,
                        "case_id": {"anyOf": [_ID, {"type": "null"}]},
                        "reason": {"enum": list(TRANSFER_REASONS)},
                    },
                ),
                "responses": {
                    "202": _json(_TRANSFER_REQUEST, "Sent to the owner"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            },
            "get": {
                "summary": "The transfer requests this agency sent or received, oldest first "
                "(read scope)",
                "parameters": _PAGING,
                "responses": {
                    "200": _json(_page(_TRANSFER_REQUEST)),
                    **_errors(400, 401, 403),
                },
            },
        },
        "/v1/contributions": {
            "get": {
                "summary": "The statistics contributions this agency holds for one month, one "
                "per competent authority, exactly as received (read scope; PROTOCOL §8.11: "
                "only a rapporteur holds any)",
                "parameters": [
                    {
                        "name": "period",
                        "in": "query",
                        "required": True,
                        "schema": {**_PERIOD, "maxLength": 7},
                    }
                ],
                "responses": {
                    "200": _json(
                        _closed(
                            {
                                "period": _PERIOD,
                                "items": {"type": "array", "items": _CONTRIBUTION},
                                "statistics": {
                                    "description": "The trusted directory's policy "
                                    "`statistics` (PROTOCOL §7.11), which the rapporteur's "
                                    "report applies; null without a policy",
                                    "anyOf": [
                                        {"type": "null"},
                                        _closed(
                                            {
                                                "k": {"type": "integer", "minimum": 2},
                                                "round_to": {"type": "integer", "minimum": 1},
                                                "contribution_grace_days": {
                                                    "type": "integer",
                                                    "minimum": 0,
                                                },
                                            }
                                        ),
                                    ],
                                },
                            }
                        )
                    ),
                    **_errors(400, 401, 403),
                },
            }
        },
        "/v1/transfer-requests/{id}": {
            "get": {
                "summary": "One transfer request with its state (read scope)",
                "parameters": [_PATH_REQUEST_ID, _REQUESTER],
                "responses": {
                    "200": _json(_TRANSFER_REQUEST),
                    **_errors(400, 401, 403, 404, 409),
                },
            }
        },
        "/v1/transfer-requests/{id}/revoke": {
            "post": {
                "summary": "The requester takes its request back (act scope): one "
                "`transfer-step` to the owner; only this agency's own request (the id alone "
                "names it; another agency's request of the same id is 404 here); 409 lists the "
                "allowed steps",
                "parameters": [_PATH_REQUEST_ID, _REQUESTER, _IDEMPOTENCY],
                "responses": {
                    "202": _json(_TRANSFER_REQUEST, "Sent to the owner"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/transfer-requests/{id}/refuse": {
            "post": {
                "summary": "The owner asked refuses the request with a refusal reason (act "
                "scope): one `transfer-step` to the requester; only requests this agency was "
                "asked (its own are 404 here); 409 lists the allowed steps",
                "parameters": [_PATH_REQUEST_ID, _REQUESTER, _IDEMPOTENCY],
                "requestBody": json_object_body(
                    ["reason"], {"reason": {"enum": list(TRANSFER_REFUSE_REASONS)}}
                ),
                "responses": {
                    "202": _json(_TRANSFER_REQUEST, "Sent to the requester"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/transfers": {
            "post": {
                "summary": "Hand the case to a transferee (act scope; PROTOCOL §8.10 "
                "`case-transfer`) with R, a schema-v2 referral planned for the transferee as a "
                "referral to it is (422, nothing sent, for what a referral would be refused, a "
                "v1 or break-glass R, or a case_id of no case this agency owns: none it holds "
                "decisions or notices of under its own pair, or one it completed a transfer "
                "of; 409 naming `authorities` for one it holds of several authorities' "
                "cases, 409 while a transfer of the case is open); stored `proposed` and "
                "sealed to the transferee; a request_id names a "
                "request of the transferee's to this agency (404 otherwise), `delivered` (409 "
                "listing the allowed steps otherwise), which becomes `granted`",
                "parameters": [_IDEMPOTENCY],
                "requestBody": json_object_body(
                    ["transferee", "referral", "reason"],
                    {
                        "transferee": _AGENCY_ID,
                        "referral": {
                            "description": "R, schema version 2; referral_id is assigned by "
                            "this agent (400 if given)",
                            "allOf": [
                                {"$ref": "#/components/schemas/ReferralV2"},
                                {"not": {"required": ["referral_id"]}},
                            ],
                        },
                        "reason": {"enum": list(TRANSFER_REASONS)},
                        "case_id": {"anyOf": [_ID, {"type": "null"}]},
                        "request_id": {"anyOf": [_ID, {"type": "null"}]},
                    },
                ),
                "responses": {
                    "202": _json(_TRANSFER, "Sent to the transferee"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            },
            "get": {
                "summary": "The case transfers this agency proposed or received, oldest first "
                "(read scope)",
                "parameters": _PAGING,
                "responses": {
                    "200": _json(_page(_TRANSFER)),
                    **_errors(400, 401, 403),
                },
            },
        },
        "/v1/transfers/{id}": {
            "get": {
                "summary": "One case transfer with its state (read scope); at the transferee "
                "with R, its own record (`referral`, the read counted as `record.accessed`)",
                "parameters": [_PATH_REQUEST_ID, _OWNER],
                "responses": {
                    "200": _json(_TRANSFER),
                    **_errors(400, 401, 403, 404, 409),
                },
            }
        },
        "/v1/transfers/{id}/accept": {
            "post": {
                "summary": "The transferee takes the case (act scope): one `transfer-step` to "
                "the owner; only transfers to this agency (its own are 404 here); 409 lists "
                "the allowed steps",
                "parameters": [_PATH_REQUEST_ID, _OWNER, _IDEMPOTENCY],
                "responses": {
                    "202": _json(_TRANSFER, "Sent to the owner"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/transfers/{id}/reject": {
            "post": {
                "summary": "The transferee declines the case with a rejection reason (act "
                "scope): one `transfer-step` to the owner; 409 lists the allowed steps",
                "parameters": [_PATH_REQUEST_ID, _OWNER, _IDEMPOTENCY],
                "requestBody": json_object_body(
                    ["reason"], {"reason": {"enum": list(TRANSFER_REJECT_REASONS)}}
                ),
                "responses": {
                    "202": _json(_TRANSFER, "Sent to the owner"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/transfers/{id}/revoke": {
            "post": {
                "summary": "The owner takes its transfer back before it was accepted, with a "
                "revocation reason (act scope): one `transfer-step` to the transferee; only "
                "this agency's own transfer; 409 lists the allowed steps",
                "parameters": [_PATH_REQUEST_ID, _OWNER, _IDEMPOTENCY],
                "requestBody": json_object_body(
                    ["reason"], {"reason": {"enum": list(TRANSFER_REVOKE_REASONS)}}
                ),
                "responses": {
                    "202": _json(_TRANSFER, "Sent to the transferee"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/transfers/{id}/complete": {
            "post": {
                "summary": "The owner completes an accepted transfer (act scope): one "
                "`transfer-step` to the transferee, and the request it answered is "
                "`fulfilled`; 409 for a transfer naming a case before the authority's receipt "
                "of its `case-owner-changed` (taken once that copy failed: "
                "`authority_failure`), else listing the allowed steps; 503 while a pair of "
                "the case to cancel first has no usable key to seal to",
                "parameters": [_PATH_REQUEST_ID, _OWNER, _IDEMPOTENCY],
                "responses": {
                    "202": _json(_TRANSFER, "Sent to the transferee"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/cases": {
            "get": {
                "summary": "A competent authority's identification cases (decide scope)",
                "parameters": [
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "The `next_cursor` of the page before",
                        "schema": _CASE_ID,
                    },
                    _PAGING[1],
                ],
                "responses": {"200": _json(_CASES), **_errors(400, 401, 403)},
            }
        },
        "/v1/cases/{case_id}": {
            "get": {
                "summary": "One case with its decisions (decide scope)",
                "parameters": [_PATH_CASE_ID],
                "responses": {"200": _json(_CASE), **_errors(400, 401, 403, 404, 409)},
            }
        },
        "/v1/cases/{case_id}/referrals/{id}": {
            "put": {
                "summary": "Name a referral this authority sent to a provider as one of the "
                "case's: its accepted or in-progress recipient gets the case's decisions, "
                "without the reason (decide scope; idempotent; 409 with `case_id` for a "
                "referral of another case: one case per referral)",
                "parameters": [
                    _PATH_CASE_ID,
                    {"name": "id", "in": "path", "required": True, "schema": _CASE_ID},
                ],
                "responses": {
                    "200": _json(_closed({"case_id": _CASE_ID, "referral_id": _ID})),
                    **_errors(400, 401, 403, 404, 409),
                },
            }
        },
        "/v1/cases/{case_id}/decisions": {
            "post": {
                "summary": "Decide a stage of a case (decide scope): signed and sealed to the "
                "referrer and every coordinator; in a reconsidering state the decision "
                "supersedes the stage's last one and answers the pending requests; 409 lists "
                "the allowed steps, or says already-decided, too-early or not-for-this-role "
                "(a stage the directory's `decides` leaves out: nothing stored or sent)",
                "parameters": [_PATH_CASE_ID, _IDEMPOTENCY],
                "requestBody": json_object_body(
                    ["stage", "outcome"],
                    {
                        "stage": {"enum": list(DECISION_STAGES)},
                        "outcome": {"enum": list(DECISION_OUTCOMES)},
                        "reason": {"enum": [*_DECISION_REASONS, None]},
                    },
                ),
                "responses": {
                    "202": _json(_DECIDED, "Decided"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/cases/{case_id}/protections/{protection}": {
            "post": {
                "summary": "The authority's own step of a protection of a case (decide scope): "
                "reflection `extended` (with a later `ends_on`), `ended` or `not-granted`; "
                "no-removal `ended` for `residence-permit-granted`. Signed and sealed to whom "
                "receives the case's decisions; 409 lists the allowed events, or names the "
                "`state` of a case that left the process or closed (no step: nothing is sent)",
                "parameters": [
                    _PATH_CASE_ID,
                    {
                        "name": "protection",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": list(PROTECTIONS)},
                    },
                    _IDEMPOTENCY,
                ],
                "requestBody": json_object_body(
                    ["event", "reason"],
                    {
                        "event": {"enum": ["extended", "ended", "not-granted"]},
                        "reason": {"enum": _PROTECTION_REASONS},
                        "ends_on": _DATE,
                    },
                ),
                "responses": {
                    "202": _json(_PROTECTED, "Notified"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/cases/{case_id}/leave": {
            "post": {
                "summary": "The person left the process (decide scope): the case moves to "
                "`left_process` and what protection runs ends (no-removal `left-process`, "
                "reflection `person-left`), each notice signed and sealed to whom receives the "
                "case's decisions; the reason is kept (`left_reason`) and audited (`case.left`), "
                "a pending reconsideration request ends unanswered (`ended_by`); 400 names the "
                "reasons, 409 lists the allowed steps",
                "parameters": [_PATH_CASE_ID, _IDEMPOTENCY],
                "requestBody": json_object_body(
                    ["reason"], {"reason": {"enum": list(LEAVE_REASONS)}}
                ),
                "responses": {
                    "202": _json(_LEFT, "Left"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/referrals/{id}/history": {
            "get": {
                "summary": "Every state change of a referral (read scope)",
                "parameters": [_PATH_ID, _SENDER],
                "responses": {
                    "200": _json(_HISTORY),
                    **_errors(400, 401, 403, 404, 409),
                },
            }
        },
        "/v1/referrals/{id}/legal-hold": {
            "put": {
                "summary": "Put a referral under legal hold: no retention purge touches it "
                "(act scope; idempotent)",
                "parameters": [_PATH_ID, _SENDER],
                "responses": {"200": _json(_LEGAL_HOLD), **_errors(400, 401, 403, 404, 409)},
            },
            "delete": {
                "summary": "Lift a referral's legal hold (act scope; idempotent)",
                "parameters": [_PATH_ID, _SENDER],
                "responses": {"200": _json(_LEGAL_HOLD), **_errors(400, 401, 403, 404, 409)},
            },
        },
        "/v1/referrals/{id}/break-glass/confirm": {
            "post": {
                "summary": "Confirm a held break-glass referral (confirm scope; PROTOCOL §8.2 "
                "step 2): it is sealed and sent, marked confirmed. 403 for the client that "
                "submitted it; 409 once it is no longer waiting (confirmed, refused, or lapsed "
                "after the policy's confirm_seconds). It is planned again: 422 (member "
                "`service`) if the service it names is no longer in its provider's current "
                "catalogue (§8.2 step 5); the hold keeps waiting, unsendable as it is, until "
                "it is refused or lapses",
                "parameters": [_PATH_ID, _IDEMPOTENCY],
                "responses": {
                    "202": _json(
                        _closed(
                            {
                                "id": _ID,
                                "state": {"const": "submitted"},
                                "recipients": {"type": "array", "items": _AGENCY_ID},
                                "client_reference": {"type": "string"},
                                "break_glass": _HOLD,
                            },
                            optional=("client_reference",),
                        ),
                        "Accepted: sealed and committed to the outbox",
                    ),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/referrals/{id}/break-glass/refuse": {
            "post": {
                "summary": "Refuse a held break-glass referral with a reason code (confirm "
                "scope): nothing is sent and the held referral is dropped. 403 and 409 as "
                "for confirm",
                "parameters": [_PATH_ID, _IDEMPOTENCY],
                "requestBody": json_object_body(
                    ["reason"], {"reason": {"enum": list(REFUSAL_REASONS)}}
                ),
                "responses": {
                    "200": _json(_HELD),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/referrals/{id}/transitions": {
            "post": {
                "summary": "Move a referral to another state (act scope); 409 lists the allowed",
                "parameters": [_PATH_ID, _IDEMPOTENCY],
                "requestBody": json_object_body(
                    ["to"],
                    {
                        "to": {"enum": list(STATES)},
                        "sender": {
                            **_AGENCY_ID,
                            "description": "The agency that sent the referral "
                            "(as the `sender` query parameter of GET)",
                        },
                        "counterpart": _AGENCY_ID,
                        "reason": {
                            "description": "A code of the closed vocabulary "
                            "(docs/PROTOCOL.md §8.4), never free text; required "
                            "for declined and cancelled. Any other value is 400.",
                            "enum": list(REASON_CODES),
                        },
                        "outcome": {
                            "description": "How the referral ended for the person, "
                            "the provider's feedback to the referrer (docs/PROTOCOL.md "
                            "§8.4): required for closed, refused otherwise. Any other "
                            "value is 400 naming the codes.",
                            "enum": list(OUTCOMES),
                        },
                    },
                ),
                "responses": {
                    "202": _json(_TRANSITIONED, "Accepted"),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/inbox": {
            "get": {
                "summary": "Received referrals, oldest first (read scope); each body returned "
                "is a read recorded as `record.accessed` (PROTOCOL.md §9.0). `schema=2` "
                "reads each referral of schema v1 as v2 (PROTOCOL.md §8.1)",
                "parameters": [*_PAGING, _AS_SCHEMA],
                "responses": {
                    "200": _json(_page(_INBOX_ROW)),
                    **_errors(400, 401, 403),
                },
            }
        },
        "/v1/attachments": {
            "post": {
                "summary": "Upload an attachment to cite in a referral (submit scope)",
                "parameters": [_IDEMPOTENCY],
                "requestBody": {
                    "required": True,
                    "content": {
                        t: {"schema": {"type": "string", "format": "binary"}}
                        for t in (
                            "application/pdf",
                            "image/jpeg",
                            "image/png",
                            "image/tiff",
                            "image/heic",
                        )
                    },
                },
                "responses": {
                    "201": _json(_ATTACHMENT, "Created"),
                    **_errors(400, 401, 403, 413, 415, 422, 503),
                },
            }
        },
        "/v1/referrals/{id}/attachments/{attachment_id}": {
            "get": {
                "summary": "A received attachment, once verified (read scope); the download "
                "is recorded as `record.accessed` (PROTOCOL.md §9.0)",
                "parameters": [
                    _PATH_ID,
                    _SENDER,
                    {
                        "name": "attachment_id",
                        "in": "path",
                        "required": True,
                        "schema": _PATH_SEGMENT,
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The attachment",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    **_errors(400, 401, 403, 404, 409, 410, 422),
                },
            }
        },
        "/v1/consents": {
            "post": {
                "summary": "Record a consent receipt, signed by this agency (submit scope)",
                "parameters": [_IDEMPOTENCY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ConsentReceiptV1"}
                        }
                    },
                },
                "responses": {
                    "201": _json(_closed({"id": {"type": "string"}}), "Created"),
                    # 503 with `reason` when this agency's own signing key is not valid in
                    # the trust directory (nothing is signed that would not verify later)
                    **_errors(400, 401, 403, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/consents/{id}": {
            "get": {
                "summary": "A consent receipt and its withdrawal state; ?format=kantara exports "
                "Kantara Consent Receipt 1.1 JSON (read scope)",
                "parameters": [
                    _PATH_ID,
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["nrm", "kantara"]},
                    },
                ],
                "responses": {
                    "200": _json({"oneOf": [_CONSENT_STATUS, _KANTARA]}),
                    **_errors(400, 401, 403, 404),
                    **_UNVERIFIABLE,
                },
            }
        },
        "/v1/subject-access": {
            "post": {
                "summary": "A subject access report on referrals this agency sent (read "
                "scope): per referral and recipient the categories sent, when sent and "
                "delivered, its state, consent withdrawal and erasure, and every access "
                "the ledger recorded, verified in the checkpoint the agent checked. An id "
                "this agency did not send is known: false (whether or not another agency's "
                "referral has it). A query: it changes nothing, Idempotency-Key is not "
                "used. 503 (reason no-ledger, no-checkpoint, ledger-unreachable, "
                "ledger-refused, ledger-unverified): no report at all",
                "requestBody": json_object_body(
                    ["referral_ids"],
                    {
                        "referral_ids": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": DEFAULT_LIMITS.subject_access_max_referrals,
                            "uniqueItems": True,
                            "items": _ID,
                        }
                    },
                ),
                "responses": {
                    "200": _json(_SUBJECT_ACCESS),
                    **_errors(400, 401, 403, 413, 415, 422, 503),
                },
            }
        },
        "/v1/catalogue": {
            "put": {
                "summary": "Sign and publish this agency's service catalogue at its next "
                "version (act scope; a provider only, else 422); audited as "
                "catalogue.published before it is put (a failed audit write puts "
                "nothing). 422 names the member that is wrong, or services beyond the "
                "agent's limits.max_catalogue_services; 503 before the agent has read the "
                "services bucket over the bus",
                "requestBody": json_object_body(
                    ["services"],
                    {"services": {"type": "array", "maxItems": 64, "items": _closed(_SERVICE)}},
                ),
                "responses": {
                    "200": _json(_CATALOGUE),
                    **_errors(400, 401, 403, 413, 415, 422, 503),
                },
            }
        },
        "/v1/services/{service_id}/capacity": {
            "put": {
                "summary": "Sign and publish how much of one of this agency's services is "
                "free (act scope); the agent signs it again before it expires while it runs",
                "parameters": [
                    {
                        "name": "service_id",
                        "in": "path",
                        "required": True,
                        "schema": _SERVICE["service_id"],
                    }
                ],
                "requestBody": json_object_body(
                    ["free", "total"],
                    {
                        "free": {"type": "integer", "minimum": 0, "maximum": MAX_PLACES},
                        "total": {"type": "integer", "minimum": 0, "maximum": MAX_PLACES},
                    },
                ),
                "responses": {
                    "200": _json(_CAPACITY),
                    **_errors(400, 401, 403, 404, 413, 415, 422, 503),
                },
            }
        },
        "/v1/services": {
            "get": {
                "summary": "Every provider's services that match, from this agent's verified "
                "copy of the services bucket (read scope); nothing is asked of the bus",
                "parameters": _SERVICE_QUERY,
                "responses": {
                    "200": _json(_closed({"items": {"type": "array", "items": _LISTED_SERVICE}})),
                    **_errors(400, 401, 403),
                },
            }
        },
        "/v1/consents/{id}/withdraw": {
            "post": {
                "summary": "Withdraw consent: every recipient erases and confirms (act scope)",
                "parameters": [_PATH_ID, _IDEMPOTENCY],
                "responses": {
                    "202": _json(_CONSENT_STATUS, "Accepted"),
                    **_errors(400, 401, 403, 404, 413, 415, 422, 503),
                    **_UNVERIFIABLE,
                },
            }
        },
    },
}


def document(
    *,
    max_page_size: int,
    max_recipients: int,
    max_subject_access: int = DEFAULT_LIMITS.subject_access_max_referrals,
) -> dict[str, Any]:
    """The document as an agent with these limits serves it: `limit`, `recipients` and
    `referral_ids` bounded by what that agent takes, never looser."""
    doc = copy.deepcopy(OPENAPI)
    paths = doc["paths"]
    for path in ("/v1/referrals", "/v1/inbox", "/v1/transfer-requests", "/v1/transfers"):
        for parameter in paths[path]["get"]["parameters"]:
            if parameter["name"] == "limit":
                parameter["schema"]["maximum"] = max_page_size
    body = paths["/v1/referrals"]["post"]["requestBody"]["content"]["application/json"]
    body["schema"]["properties"]["recipients"]["maxItems"] = max_recipients
    report = paths["/v1/subject-access"]["post"]["requestBody"]["content"]["application/json"]
    report["schema"]["properties"]["referral_ids"]["maxItems"] = max_subject_access
    return doc
