"""The agent's local HTTP API for the agency's own systems (aiohttp); OpenAPI 3.1 at
/openapi.json (agents/openapi.py).

Bearer tokens per client system with scopes (submit, read, act, metrics), compared by
SHA-256 digest in constant time; every error is problem+json (RFC 9457); request bodies are
bounded before they are read; every POST honours `Idempotency-Key`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from keys import Limits
from keys.catalogue import SERVICE_TYPES, SUITABLE_FOR
from keys.codec import HEX32
from keys.decision import REASON_CODES as DECISION_REASON_CODES
from keys.identity import check_agency_id
from runtime.http import (
    ProblemError,
    bearer_match,
    parse_json_body,
    problems_middleware,
    unauthorized,
)

from . import errors as E
from .access import AccessRecorder, body_categories
from .attachments import ATTACHMENT_TYPES, Attachments
from .break_glass import REFUSAL_REASONS, BreakGlass
from .break_glass import view as glass_view
from .case_transfers import TransferDesk
from .case_transfers import view as transfer_view
from .cases import LEAVE_REASONS
from .config import ApiClient
from .desk import Desk
from .identification import Identification
from .lifecycle import OUTCOMES, REASON_CODES
from .openapi import IDEMPOTENCY_KEY_PATTERN, MAX_CURSOR, MAX_SINCE, document
from .protections import authority_steps
from .reconsideration import GROUNDS
from .referral_versions import as_v2
from .retention import Retention
from .services import Services
from .statistics import StatisticsDesk
from .store import STATUS_ORDER, Store
from .subject_access import SubjectAccess
from .transfer_requests import TransferRequestDesk, view
from .transfers import (
    OWNER,
    REFUSE_REASONS,
    REJECT_REASONS,
    REQUEST,
    REQUESTER,
    REVOKE_REASONS,
    TRANSFER,
    TRANSFER_REASONS,
    TRANSFEREE,
)

#: A case system's own reference for a referral it submits (sender-local, never sent).
CLIENT_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}")
#: A referral id as its sending agent makes it (PROTOCOL.md §6.1): 32 lowercase hex digits.
REFERRAL_ID = re.compile(r"[0-9a-f]{32}")
#: The Idempotency-Key header as the OpenAPI document states it.
IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN.strip("^$"))

log = structlog.get_logger("nrm.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNPROCESSABLE = "Unprocessable Content"
NO_REFERRAL = "no referral with this id at this agency"

#: Where domain errors (agents/errors.py) become HTTP: status and title per class, the most
#: specific class listed first wins (a subclass not listed answers as its nearest base).
#: The body is `detail` and the error's extra members; `type` follows from the title.
PROBLEMS: dict[type[E.DomainError], tuple[int, str]] = {
    E.NotFound: (404, "Not Found"),
    E.Forbidden: (403, "Forbidden"),
    E.Conflict: (409, "Conflict"),
    E.BadRequest: (400, "Bad Request"),
    E.Unprocessable: (422, UNPROCESSABLE),
    E.TooLarge: (413, "Content Too Large"),
    E.Gone: (410, "Gone"),
    E.Unavailable: (503, "Service Unavailable"),
}


def domain_problem(error: E.DomainError) -> ProblemError:
    """The problem+json a domain error answers with (`PROBLEMS`)."""
    for cls in type(error).__mro__:
        if cls in PROBLEMS:
            status, title = PROBLEMS[cls]
            return ProblemError(status, title, error.detail, **error.extra)
    raise TypeError(f"no HTTP mapping for {type(error).__name__}")  # a bug: add it above


class Backend(Protocol):
    """What the API needs from the agent."""

    store: Store
    desk: Desk
    access: AccessRecorder
    attachments: Attachments
    limits: Limits
    retention: Retention
    subject_access: SubjectAccess
    identification: Identification
    services: Services
    break_glass: BreakGlass
    transfer_requests: TransferRequestDesk
    statistics: StatisticsDesk
    transfers: TransferDesk

    def submit_referral(
        self,
        *,
        recipients: Sequence[str],
        referral: dict[str, Any],
        client_reference: str | None = None,
        client: str | None = None,
    ) -> dict[str, Any]: ...

    def health(self) -> dict[str, Any]: ...

    def check_can_submit(self) -> None: ...

    def metrics_text(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ApiSettings:
    clients: tuple[ApiClient, ...]
    max_request_bytes: int
    default_page_size: int
    max_page_size: int


class ClientTable:
    """The clients the API accepts and their token digests, replaced whole by a reload
    (SIGHUP, runtime/reload.py): a request sees the old table or the new, never a mix."""

    def __init__(self, clients: Sequence[ApiClient]) -> None:
        self.replace(clients)

    def replace(self, clients: Sequence[ApiClient]) -> None:
        self.current = (tuple(clients), tuple(c.token_sha256 for c in clients))


BACKEND = web.AppKey("backend", Backend)
CLIENTS = web.AppKey("clients", ClientTable)
SETTINGS = web.AppKey("settings", ApiSettings)
CLIENT = web.RequestKey("client", ApiClient)
PUBLIC = frozenset({"/healthz", "/openapi.json"})


def make_app(
    backend: Backend, settings: ApiSettings, *, observe: Middleware | None = None
) -> web.Application:
    """The agent's API; `observe` (runtime/http_metrics.py) first, if given."""
    first = [] if observe is None else [observe]
    app = web.Application(
        middlewares=[*first, _problems, _durable, _authenticate],
        client_max_size=settings.max_request_bytes,
    )
    app[BACKEND] = backend
    app[SETTINGS] = settings
    app[CLIENTS] = ClientTable(settings.clients)
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/openapi.json", openapi)
    r.add_get("/metrics", metrics)
    r.add_post("/v1/referrals", submit_referral)
    r.add_get("/v1/referrals", list_referrals)
    r.add_get("/v1/referrals/{id}", get_referral)
    r.add_get("/v1/referrals/{id}/history", referral_history)
    r.add_post("/v1/referrals/{id}/transitions", transition)
    r.add_post("/v1/referrals/{id}/break-glass/confirm", confirm_break_glass)
    r.add_post("/v1/referrals/{id}/break-glass/refuse", refuse_break_glass)
    r.add_put("/v1/referrals/{id}/legal-hold", place_legal_hold)
    r.add_delete("/v1/referrals/{id}/legal-hold", lift_legal_hold)
    r.add_get("/v1/inbox", list_inbox)
    r.add_post("/v1/attachments", upload_attachment)
    r.add_get("/v1/referrals/{id}/attachments/{attachment_id}", get_attachment)
    r.add_post("/v1/consents", record_consent)
    r.add_get("/v1/consents/{id}", get_consent)
    r.add_post("/v1/consents/{id}/withdraw", withdraw_consent)
    r.add_post("/v1/subject-access", subject_access)
    r.add_get("/v1/referrals/{id}/decisions", referral_decisions)
    r.add_get("/v1/referrals/{id}/protections", referral_protections)
    r.add_post("/v1/referrals/{id}/reconsiderations", request_reconsideration)
    r.add_post("/v1/transfer-requests", request_transfer)
    r.add_get("/v1/transfer-requests", list_transfer_requests)
    r.add_get("/v1/contributions", list_contributions)
    r.add_get("/v1/transfer-requests/{id}", get_transfer_request)
    r.add_post("/v1/transfer-requests/{id}/revoke", revoke_transfer_request)
    r.add_post("/v1/transfer-requests/{id}/refuse", refuse_transfer_request)
    r.add_post("/v1/transfers", propose_transfer)
    r.add_get("/v1/transfers", list_transfers)
    r.add_get("/v1/transfers/{id}", get_transfer)
    r.add_post("/v1/transfers/{id}/accept", accept_transfer)
    r.add_post("/v1/transfers/{id}/reject", reject_transfer)
    r.add_post("/v1/transfers/{id}/revoke", revoke_transfer)
    r.add_post("/v1/transfers/{id}/complete", complete_transfer)
    r.add_get("/v1/cases", list_cases)
    r.add_get("/v1/cases/{case_id}", get_case)
    r.add_post("/v1/cases/{case_id}/decisions", decide)
    r.add_post("/v1/cases/{case_id}/protections/{protection}", protect)
    r.add_post("/v1/cases/{case_id}/leave", leave_case)
    r.add_put("/v1/cases/{case_id}/referrals/{id}", link_case_referral)
    r.add_put("/v1/catalogue", put_catalogue)
    r.add_put("/v1/services/{service_id}/capacity", put_capacity)
    r.add_get("/v1/services", list_services)
    return app


# --- middleware ---------------------------------------------------------------------------------


def _agent_problem(request: web.Request, e: Exception) -> ProblemError | None:
    """What the agent answers beyond `problems_middleware`: domain errors, and a body over
    the limit with the limit named."""
    if isinstance(e, E.DomainError):
        return domain_problem(e)
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        limit = request.app[SETTINGS].max_request_bytes
        return ProblemError(e.status, e.reason, f"the request body is larger than {limit} bytes")
    return None


_problems = problems_middleware(
    log=log,
    event="api_internal_error",
    unanswerable="the agent could not process the request",
    translate=_agent_problem,
)


@web.middleware
async def _durable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No answer leaves before what it reports is on disk: the commits it depends on share
    one fsync with every other commit waiting at the same moment (Store.durable)."""
    response = await handler(request)
    await request.app[BACKEND].store.durable()
    return response


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC:
        return await handler(request)
    clients, digests = request.app[CLIENTS].current
    found = bearer_match(request.headers.get("Authorization", ""), digests)
    if found is None:
        return unauthorized("a valid bearer token is required", realm="nrm-agent")
    request[CLIENT] = clients[found]
    return await handler(request)


def _need(request: web.Request, scope: str) -> None:
    if scope not in request[CLIENT].scopes:
        raise ProblemError(403, "Forbidden", f"this token lacks the {scope} scope")


# --- idempotency ------------------------------------------------------------------------------


async def _idempotent(
    request: web.Request,
    scope: str,
    act: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]],
    *,
    raw: bytes | None = None,
) -> web.Response:
    """Run a POST once per `Idempotency-Key`: a repeat with the same body gets the first
    answer again; the same key with another body is refused. `raw` is a body already read
    (not JSON); otherwise the body is read and parsed as a JSON object."""
    _need(request, scope)
    if raw is None:
        raw = await request.read() if request.can_read_body else b""
        doc = _json_object(request, raw) if raw else {}
    else:
        doc = {}
    key = request.headers.get("Idempotency-Key")
    store = request.app[BACKEND].store
    client = request[CLIENT].name
    digest = hashlib.sha256(request.path.encode() + b"\x00" + raw).hexdigest()
    if key is not None:
        if not IDEMPOTENCY_KEY.fullmatch(key):
            raise ProblemError(400, "Bad Request", "Idempotency-Key must be 1-200 printable ASCII")
        row = store.idempotent_response(client, key)
        if row is not None:
            if row[0] != digest:
                raise ProblemError(
                    422, UNPROCESSABLE, "this Idempotency-Key was used for a different request"
                )
            return web.json_response(
                json.loads(row[2]), status=row[1], headers={"Idempotent-Replayed": "true"}
            )
    # A replay above still answers; new work is refused while the agency cannot send.
    request.app[BACKEND].check_can_submit()
    # The effect and its idempotency record commit together: a crash between them would
    # let a retry with the same key do the work twice.
    with store.transaction() as db:
        status, body = act(doc)
        if key is not None:
            store.remember_response(db, client, key, digest, status, json.dumps(body).encode())
    return web.json_response(body, status=status)


def _json_object(request: web.Request, raw: bytes) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ProblemError(
            415, "Unsupported Media Type", "the request body must be application/json"
        )
    doc = parse_json_body(raw)
    if not isinstance(doc, dict):
        raise ProblemError(400, "Bad Request", "the body must be a JSON object")
    return doc


def _only(doc: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(doc) - allowed
    if unknown:
        names = sorted(n if n.isidentifier() and len(n) < 40 else "?" for n in unknown)
        raise ProblemError(422, UNPROCESSABLE, f"unknown fields: {names}")


# --- handlers ---------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    health = request.app[BACKEND].health()
    return web.json_response(health, status=503 if health["status"] == "degraded" else 200)


async def openapi(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    limits = request.app[BACKEND].limits
    return web.json_response(
        document(
            max_page_size=settings.max_page_size,
            max_recipients=limits.max_recipients,
            max_subject_access=limits.subject_access_max_referrals,
        )
    )


async def metrics(request: web.Request) -> web.Response:
    """The metrics scope reads this and nothing else; read reads it too (as it always did)."""
    if "metrics" not in request[CLIENT].scopes:
        _need(request, "read")
    return web.Response(
        body=request.app[BACKEND].metrics_text(), content_type="text/plain", charset="utf-8"
    )


async def submit_referral(request: web.Request) -> web.Response:
    def act(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _only(doc, {"recipients", "referral", "client_reference"})
        recipients = doc.get("recipients")
        if (
            not isinstance(recipients, list)
            or not recipients
            or not all(isinstance(r, str) for r in recipients)
        ):
            raise ProblemError(
                422, UNPROCESSABLE, "recipients must be a non-empty list of agency ids"
            )
        referral = doc.get("referral")
        if not isinstance(referral, dict):
            raise ProblemError(422, UNPROCESSABLE, "referral must be a JSON object")
        if "referral_id" in referral:
            raise ProblemError(
                400,
                "Bad Request",
                "referral.referral_id is assigned by the sending agent, not by its client: "
                "leave it out (client_reference keeps the case system's own reference)",
                problems=["/referral/referral_id: not accepted from the client"],
            )
        reference = doc.get("client_reference")
        if reference is not None and not (
            isinstance(reference, str) and CLIENT_REFERENCE.fullmatch(reference)
        ):
            raise ProblemError(
                422,
                UNPROCESSABLE,
                "client_reference must be 1-100 characters of A-Z, a-z, 0-9 and . _ : / -",
                problems=["/client_reference: not a client reference"],
            )
        result = request.app[BACKEND].submit_referral(
            recipients=recipients,
            referral=referral,
            client_reference=reference,
            client=request[CLIENT].name,
        )
        return 202, result

    response = await _idempotent(request, "submit", act)
    if response.status == 202:
        response.headers["Location"] = f"/v1/referrals/{json.loads(response.body)['id']}"  # type: ignore[arg-type]
    return response


async def list_referrals(request: web.Request) -> web.Response:
    _need(request, "read")
    settings = request.app[SETTINGS]
    limit = _int_param(request, "limit", settings.default_page_size, 1, settings.max_page_size)
    after = _int_param(request, "cursor", 0, 0, MAX_CURSOR)
    since = _int_param(request, "since", 0, 0, MAX_SINCE)
    rows = request.app[BACKEND].store.referrals_page(
        after=after, since=since, state=request.query.get("state"), limit=limit
    )
    items = [
        {
            "id": r[1],
            "sender": r[9],
            "counterpart": r[2],
            "side": r[3],
            "state": r[4],
            "referral_type": r[5],
            "urgency": r[6],
            "created": r[7],
            "updated": r[8],
        }
        for r in rows
    ]
    next_cursor = str(rows[-1][0]) if len(rows) == limit else None
    return web.json_response({"items": items, "next_cursor": next_cursor})


def _as_schema(request: web.Request) -> Callable[[Any], Any]:
    """How `?schema=` asks a received referral to be shown: as received, or (`2`) a schema
    v1 one read as v2 (PROTOCOL §8.1); anything else is 400."""
    wanted = request.query.get("schema")
    if wanted is None:
        return lambda referral: referral
    if wanted != "2":
        raise ProblemError(
            400, "Bad Request", "schema must be 2 (a referral of schema v1 is read as v2)"
        )
    return lambda referral: None if referral is None else as_v2(referral)


async def get_referral(request: web.Request) -> web.Response:
    _need(request, "read")
    shown = _as_schema(request)
    backend = request.app[BACKEND]
    held = backend.break_glass.held(request.match_info["id"])
    if held is not None and held.state != "submitted" and request.query.get("sender") is None:
        # A client that may confirm (and read) sees what it would confirm; no access
        # record: those are reads of another agency's data (its break-glass.confirmed or
        # .refused names the client that decided).
        may_confirm = "confirm" in request[CLIENT].scopes
        return web.json_response(backend.break_glass.status(held.referral_id, document=may_confirm))
    backend, owner, referral_id = _named_referral(request, "read")
    rows = backend.store.referral_rows(owner, referral_id)
    if not rows:
        raise ProblemError(404, "Not Found", NO_REFERRAL)
    side = rows[0][1]
    parties = []
    urgency = rows[0][4]
    for counterpart, _, state, _t, _u, _b, message_id, _c, updated, escalated, _r, started in rows:
        delivery = failure = None
        if side == "sender":
            out = backend.store.outgoing(message_id)
            delivery = "queued" if out is None else out.status
            copy = (
                next((d for d in out.deliveries if d.recipient == counterpart), None)
                if out
                else None
            )
            if copy is not None:
                delivery = copy.state
                failure = copy.failure
        party: dict[str, Any] = {
            "agency": counterpart,
            "state": state,
            "status": delivery,
            "updated": updated,
            "escalated_at": escalated,
            "due_at": backend.desk.respond_due(urgency, started),
        }
        if failure is not None:
            party["failure"] = failure
        parties.append(party)
    body: dict[str, Any] = {
        "id": referral_id,
        "legal_hold": backend.retention.status(owner, referral_id)["legal_hold"],
        "side": side,
        "referral_type": rows[0][3],
        "urgency": rows[0][4],
        "legal_basis": rows[0][5],
        "created": rows[0][7],
    }
    body["sender"] = owner
    if side == "sender":
        body["status"] = min((p["status"] for p in parties), key=STATUS_ORDER.index)
        body["client_reference"] = rows[0][10]
        body["recipients"] = parties
        hold = backend.break_glass.held(referral_id) if owner == backend.desk.agency else None
        body["break_glass"] = None if hold is None else glass_view(hold)
    else:
        body["state"] = parties[0]["state"]
        body["due_at"] = parties[0]["due_at"]
        opened = backend.desk.open_body(
            owner, referral_id, backend.store.received_body(owner, referral_id)
        )
        body["referral"] = None if opened is None else opened.get("referral")
        body["erased"] = opened is None
        body["break_glass"] = received_break_glass(body["referral"])
        body["service"] = received_service(body["referral"])
        if body["referral"] is not None:  # nothing of a person in an erased one
            with backend.store.transaction() as tx:
                _record_read(request, tx, owner, referral_id, body["referral"])
            body["referral"] = shown(body["referral"])
    return web.json_response(body)


def received_break_glass(referral: Any) -> dict[str, Any] | None:
    """The `break_glass` routing member of a received referral (its reason, confirmed), or
    None: not break-glass, or erased."""
    glass = referral.get("break_glass") if isinstance(referral, dict) else None
    return dict(glass) if isinstance(glass, dict) else None


def received_service(referral: Any) -> dict[str, str] | None:
    """The `service` routing member of a received referral (the provider and the service
    asked for, PROTOCOL §8.2 step 5), or None: none named, or erased."""
    service = referral.get("service") if isinstance(referral, dict) else None
    return dict(service) if isinstance(service, dict) else None


def _record_read(
    request: web.Request,
    db: sqlite3.Connection,
    owner: str,
    referral_id: str,
    referral: Any,
    *,
    record: str = "body",
) -> None:
    """Count this answer's read of a received referral's `record` (agents/access.py), in
    `db`, a transaction opened right after the rows were read: no await comes between the
    two, so on the agent's one connection nothing else runs in between, and `_durable`
    holds the answer until the count is on disk."""
    categories = {"attachments"} if record == "attachment" else body_categories(referral)
    request.app[BACKEND].access.read(
        db,
        client=request[CLIENT].name,
        owner=owner,
        referral_id=referral_id,
        record=record,
        categories=categories,
    )


async def referral_history(request: web.Request) -> web.Response:
    backend, owner, referral_id = _named_referral(request, "read")
    rows = backend.store.history_rows(owner, referral_id)
    if not rows:
        raise ProblemError(404, "Not Found", NO_REFERRAL)
    items = [
        {
            "counterpart": r[0],
            "from": r[1],
            "to": r[2],
            "party": r[3],
            "reason": r[4],
            "outcome": r[5],
            "at": r[6],
        }
        for r in rows
    ]
    return web.json_response({"id": referral_id, "sender": owner, "items": items})


async def transition(request: web.Request) -> web.Response:
    def act(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _only(doc, {"to", "sender", "counterpart", "reason", "outcome"})
        to = doc.get("to")
        if not isinstance(to, str):
            raise ProblemError(422, UNPROCESSABLE, "to must name the target state")
        for name in ("sender", "counterpart", "reason", "outcome"):
            if doc.get(name) is not None and not isinstance(doc[name], str):
                raise ProblemError(422, UNPROCESSABLE, f"{name} must be a string")
        if doc.get("reason") is not None and doc["reason"] not in REASON_CODES:
            raise ProblemError(  # never echoed: a "code" outside the vocabulary may be a name
                400, "Bad Request", "reason must be one of: " + ", ".join(REASON_CODES)
            )
        if doc.get("outcome") is not None and doc["outcome"] not in OUTCOMES:
            raise ProblemError(  # never echoed either: the closed outcome vocabulary, §8.4
                400, "Bad Request", "outcome must be one of: " + ", ".join(OUTCOMES)
            )
        result = request.app[BACKEND].desk.transition(
            request.match_info["id"],
            sender=doc.get("sender"),
            to=to,
            counterpart=doc.get("counterpart"),
            reason=doc.get("reason"),
            outcome=doc.get("outcome"),
        )
        return 202, result

    return await _idempotent(request, "act", act)


async def confirm_break_glass(request: web.Request) -> web.Response:
    """A second API client (scope confirm) confirms a held break-glass referral: it is
    sealed and sent (PROTOCOL §8.2 step 2)."""

    def act(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _only(doc, set())
        backend = request.app[BACKEND]
        return 202, backend.break_glass.confirm(
            request.match_info["id"], client=request[CLIENT].name
        )

    return await _idempotent(request, "confirm", act)


async def refuse_break_glass(request: web.Request) -> web.Response:
    """A second API client (scope confirm) refuses a held break-glass referral, with a
    reason code: nothing is sent, the held referral is dropped."""

    def act(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _only(doc, {"reason"})
        reason = doc.get("reason")
        if reason not in REFUSAL_REASONS:
            raise ProblemError(  # never echoed, as for transitions
                400, "Bad Request", "reason must be one of: " + ", ".join(REFUSAL_REASONS)
            )
        backend = request.app[BACKEND]
        return 200, backend.break_glass.refuse(
            request.match_info["id"], client=request[CLIENT].name, reason=reason
        )

    return await _idempotent(request, "confirm", act)


async def referral_decisions(request: web.Request) -> web.Response:
    """The identification decisions held under a referral, each verified again (§8.7). A
    coordinator holds them under the referrer's pair without holding the referral: named
    with `?sender=`, that pair is found by its decisions. `erased` as for the referral."""
    return _held_under_pair(request, lambda i: i.decisions)


async def referral_protections(request: web.Request) -> web.Response:
    """The protection notices held under a referral, each verified again (§8.9); the pair is
    found as for decisions (`?sender=` for a coordinator's copy)."""
    return _held_under_pair(request, lambda i: i.protections)


def _held_under_pair(
    request: web.Request,
    listing: Callable[[Identification], Callable[[str, str], list[dict[str, Any]]]],
) -> web.Response:
    """What the identification `listing` holds under the referral's pair (read scope): the
    pair this agency holds, or the one `?sender=` names and the listing finds items under
    (a coordinator's); 404 when neither."""
    _need(request, "read")
    backend = request.app[BACKEND]
    referral_id = request.match_info["id"]
    sender = _sender_param(request)
    try:
        owner = backend.desk.owner_of(referral_id, sender)
    except E.NotFound:
        if sender is None:
            raise
        owner = sender
    items = listing(backend.identification)(owner, referral_id)
    if not items and owner not in backend.store.owners_of(referral_id):
        raise ProblemError(404, "Not Found", NO_REFERRAL)
    # As for the referral itself: `erased` once the referral received under the pair was
    # erased (consent withdrawal); what was received under it went too, this agency's own
    # decisions and notices (a competent authority's) stay (docs/DESIGN.md "Erasure").
    erased = backend.store.is_erased(owner, referral_id)
    return web.json_response({"id": referral_id, "sender": owner, "erased": erased, "items": items})


async def request_reconsideration(request: web.Request) -> web.Response:
    """Ask the authority to reconsider a negative decision held under the referral (act
    scope: it sends a message, as a transition does): sealed to the decision's authority
    (PROTOCOL §8.7 "Reconsideration requests")."""

    def act(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _only(doc, {"decision_id", "ground"})
        decision_id = doc.get("decision_id")
        if not (isinstance(decision_id, str) and HEX32.fullmatch(decision_id)):
            raise ProblemError(400, "Bad Request", "decision_id must be 32 lowercase hex digits")
        ground = doc.get("ground")
        if ground not in GROUNDS:
            raise ProblemError(  # never echoed
                400, "Bad Request", "ground must be one of: " + ", ".join(GROUNDS)
            )
        result = request.app[BACKEND].identification.request_reconsideration(
            request.match_info["id"],
            sender=_sender_param(request),
            decision_id=decision_id,
            ground=str(ground),
        )
        return 202, result

    return await _idempotent(request, "act", act)


# --- transfer requests (PROTOCOL §8.10) -------------------------------------------------------


def _hex32_field(doc: dict[str, Any], name: str, *, nullable: bool = False) -> str | None:
    value = doc.get(name)
    if value is None and nullable and name in doc:
        return None
    if not (isinstance(value, str) and HEX32.fullmatch(value)):
        tail = " or null" if nullable else ""
        raise ProblemError(400, "Bad Request", f"{name} must be 32 lowercase hex digits{tail}")
    return value


def _code_field(doc: dict[str, Any], name: str, codes: Sequence[str]) -> str:
    value = doc.get(name)
    if not (isinstance(value, str) and value in codes):
        raise ProblemError(  # never echoed
            400, "Bad Request", f"{name} must be one of: " + ", ".join(codes)
        )
    return value


async def request_transfer(request: web.Request) -> web.Response:
    """Ask the owner of a referral this agency received for the case (act scope: it sends a
    message, as a transition does): one `transfer-request` sealed to the owner (PROTOCOL
    §8.10)."""

    def act(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _only(doc, {"owner", "referral_id", "case_id", "reason"})
        owner = doc.get("owner")
        try:
            owner = check_agency_id(owner) if isinstance(owner, str) else None
        except ValueError:
            owner = None
        if owner is None:
            raise ProblemError(400, "Bad Request", "owner must be an agency id")
        referral_id = _hex32_field(doc, "referral_id")
        if "case_id" not in doc:
            raise ProblemError(400, "Bad Request", "case_id is required (null for none)")
        case_id = _hex32_field(doc, "case_id", nullable=True)
        reason = _code_field(doc, "reason", TRANSFER_REASONS)
        backend = request.app[BACKEND]
        with backend.store.transaction() as db:
            result = backend.transfer_requests.request(
                db, owner=owner, referral_id=str(referral_id), case_id=case_id, reason=reason
            )
        return 202, result

    return await _idempotent(request, "act", act)


def _request_id(request: web.Request, what: str = "request") -> str:
    """The path's `id`: a transfer request's id (or `what` else's), 32 lowercase hex."""
    raw = request.match_info["id"]
    if not HEX32.fullmatch(raw):
        raise ProblemError(400, "Bad Request", f"a {what} id is 32 lowercase hex digits")
    return raw


def _requester_param(request: web.Request) -> str | None:
    """The `requester` query parameter: request ids are chosen by each requester, so only
    (requester, id) names one for sure."""
    return _agency_param(request, "requester")


_PERIOD = re.compile(r"^[0-9]{4}-(?:0[1-9]|1[0-2])$")


async def list_contributions(request: web.Request) -> web.Response:
    """The statistics contributions a rapporteur holds for one month (PROTOCOL §8.11)."""
    _need(request, "read")
    period = request.query.get("period", "")
    if not _PERIOD.fullmatch(period):
        raise ProblemError(400, "Bad Request", "query parameter period must be YYYY-MM")
    desk = request.app[BACKEND].statistics
    return web.json_response(
        {"period": period, "items": desk.listing(period), "statistics": desk.policy()}
    )


def _page_of(
    request: web.Request,
    listing: Callable[..., tuple[list[dict[str, Any]], str | None]],
) -> web.Response:
    """A page of `listing` (read scope) by the `limit` and `cursor` parameters."""
    _need(request, "read")
    settings = request.app[SETTINGS]
    limit = _int_param(request, "limit", settings.default_page_size, 1, settings.max_page_size)
    after = _int_param(request, "cursor", 0, 0, MAX_CURSOR)
    items, cursor = listing(after=after, limit=limit)
    return web.json_response({"items": items, "next_cursor": cursor})


async def list_transfer_requests(request: web.Request) -> web.Response:
    return _page_of(request, request.app[BACKEND].transfer_requests.listing)


async def get_transfer_request(request: web.Request) -> web.Response:
    _need(request, "read")
    request_id = _request_id(request)
    requester = _requester_param(request)
    backend = request.app[BACKEND]
    desk = backend.transfer_requests
    with backend.store.transaction() as db:
        found = desk.held(db, request_id, requester)
    return web.json_response(view(found, desk.agency))


async def _transfer_step(
    request: web.Request,
    party: str,
    to_state: str,
    codes: Sequence[str],
    *,
    kind: str = REQUEST,
) -> web.Response:
    """This agency's step as `party` on the request (or, `kind` transfer, the transfer)
    named in the path (and maybe `?requester=`, `?owner=`) where it is that party: the body
    is `{"reason"}` when the step takes one of `codes`, else empty."""
    transfer = kind == TRANSFER
    ident = _request_id(request, "transfer" if transfer else "request")
    sender = _agency_param(request, "owner") if transfer else _requester_param(request)

    def act(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _only(doc, {"reason"} if codes else set())
        reason = _code_field(doc, "reason", codes) if codes else None
        backend = request.app[BACKEND]
        desk = backend.transfers if transfer else backend.transfer_requests
        with backend.store.transaction() as db:
            result = desk.step(db, ident, sender, party=party, to_state=to_state, reason=reason)
        return 202, result

    return await _idempotent(request, "act", act)


# --- case transfers (PROTOCOL §8.10) ----------------------------------------------------------


async def propose_transfer(request: web.Request) -> web.Response:
    """Hand the case to a transferee with R, a schema-v2 referral minimised for it as a
    referral is (act scope): one `case-transfer` sealed to the transferee (PROTOCOL
    §8.10)."""

    def act(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _only(doc, {"transferee", "referral", "reason", "case_id", "request_id"})
        transferee = doc.get("transferee")
        try:
            transferee = check_agency_id(transferee) if isinstance(transferee, str) else None
        except ValueError:
            transferee = None
        if transferee is None:
            raise ProblemError(400, "Bad Request", "transferee must be an agency id")
        referral = doc.get("referral")
        if not isinstance(referral, dict):
            raise ProblemError(422, UNPROCESSABLE, "referral must be a JSON object")
        reason = _code_field(doc, "reason", TRANSFER_REASONS)
        case_id = _hex32_field(doc, "case_id", nullable=True) if "case_id" in doc else None
        request_id = _hex32_field(doc, "request_id", nullable=True) if "request_id" in doc else None
        result = request.app[BACKEND].transfers.propose(
            transferee=transferee,
            document=referral,
            reason=reason,
            case_id=case_id,
            request_id=request_id,
        )
        return 202, result

    return await _idempotent(request, "act", act)


async def list_transfers(request: web.Request) -> web.Response:
    return _page_of(request, request.app[BACKEND].transfers.listing)


async def get_transfer(request: web.Request) -> web.Response:
    """One transfer; at the transferee with R, its own record (`referral`), the read
    counted as a received referral's is (`record.accessed`)."""
    _need(request, "read")
    transfer_id = _request_id(request, "transfer")
    owner = _agency_param(request, "owner")
    backend = request.app[BACKEND]
    desk = backend.transfers
    with backend.store.transaction() as db:
        found = desk.held(db, transfer_id, owner)
        shown = transfer_view(found, desk.agency)
        if found.transferee == desk.agency:
            referral = desk.referral(db, found)
            shown["referral"] = referral
            if referral is not None:
                # Counted as a read of what the old owner sent (PROTOCOL §9.0: the event's
                # counterpart is that owner, never this agency), though R is stored under
                # (this agency, referral_id): the window holds ids and counts only, till signed.
                _record_read(request, db, found.owner, found.referral_id, referral)
    return web.json_response(shown)


async def accept_transfer(request: web.Request) -> web.Response:
    """The transferee takes the case (act scope): one `transfer-step` to the owner."""
    return await _transfer_step(request, TRANSFEREE, "accepted", (), kind=TRANSFER)


async def reject_transfer(request: web.Request) -> web.Response:
    """The transferee declines the case with a rejection reason (act scope)."""
    return await _transfer_step(request, TRANSFEREE, "rejected", REJECT_REASONS, kind=TRANSFER)


async def revoke_transfer(request: web.Request) -> web.Response:
    """The owner takes its transfer back before it was accepted, with a revocation reason."""
    return await _transfer_step(request, OWNER, "revoked", REVOKE_REASONS, kind=TRANSFER)


async def complete_transfer(request: web.Request) -> web.Response:
    """The owner completes an accepted transfer (act scope): the transferee owns the case."""
    return await _transfer_step(request, OWNER, "completed", (), kind=TRANSFER)


async def revoke_transfer_request(request: web.Request) -> web.Response:
    """The requester takes its request back (act scope): one `transfer-step` to the owner."""
    return await _transfer_step(request, REQUESTER, "revoked", ())


async def refuse_transfer_request(request: web.Request) -> web.Response:
    """The owner asked refuses the request with a refusal reason (act scope): one
    `transfer-step` to the requester."""
    return await _transfer_step(request, OWNER, "refused", REFUSE_REASONS)


async def list_cases(request: web.Request) -> web.Response:
    _need(request, "decide")
    settings = request.app[SETTINGS]
    limit = _int_param(request, "limit", settings.default_page_size, 1, settings.max_page_size)
    after = _case_id(request.query.get("cursor", ""), allow_empty=True)
    items = request.app[BACKEND].identification.cases(after=after, limit=limit)
    next_cursor = items[-1]["case_id"] if len(items) == limit else None
    return web.json_response({"items": items, "next_cursor": next_cursor})


async def get_case(request: web.Request) -> web.Response:
    _need(request, "decide")
    case_id = _case_id(request.match_info["case_id"])
    return web.json_response(request.app[BACKEND].identification.case(case_id))


async def decide(request: web.Request) -> web.Response:
    """Decide a stage of a case (§8.7): signed, and sealed to whom the protocol says."""

    def act(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _only(doc, {"stage", "outcome", "reason"})
        for name in ("stage", "outcome"):
            if not isinstance(doc.get(name), str):
                raise ProblemError(422, UNPROCESSABLE, f"{name} must be a string")
        reason = doc.get("reason")
        if reason is not None and reason not in DECISION_REASONS:
            raise ProblemError(  # never echoed, as for transitions
                400, "Bad Request", "reason must be one of: " + ", ".join(DECISION_REASONS)
            )
        result = request.app[BACKEND].identification.decide(
            _case_id(request.match_info["case_id"]),
            stage=doc["stage"],
            outcome=doc["outcome"],
            reason=reason,
        )
        return 202, result

    return await _idempotent(request, "decide", act)


async def leave_case(request: web.Request) -> web.Response:
    """The person left the process (§8.7 "Leaving the process and closing"): the case moves
    to `left_process` and what protection runs ends, each notice sealed to whom receives the
    case's decisions."""

    def act(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _only(doc, {"reason"})
        reason = doc.get("reason")
        if not isinstance(reason, str) or reason not in LEAVE_REASONS:
            raise ProblemError(  # never echoed
                400, "Bad Request", "reason must be one of: " + ", ".join(LEAVE_REASONS)
            )
        result = request.app[BACKEND].identification.leave(
            _case_id(request.match_info["case_id"]), reason=reason
        )
        return 202, result

    return await _idempotent(request, "decide", act)


#: What the authority's case system may ask of each protection (§8.9; agents/protections.py
#: says which steps its state allows): protection -> events -> reason codes.
PROTECTION_STEPS: dict[str, dict[str, tuple[str, ...]]] = authority_steps()


async def protect(request: web.Request) -> web.Response:
    """The authority's own step of a protection of a case: signed, and sealed to whom
    receives the case's decisions."""
    _need(request, "decide")
    protection = request.match_info["protection"]
    if protection not in PROTECTION_STEPS:
        raise ProblemError(404, "Not Found", "a protection is reflection or no-removal")
    steps = PROTECTION_STEPS[protection]

    def act(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _only(doc, {"event", "reason", "ends_on"})
        event = doc.get("event")
        if not isinstance(event, str) or event not in steps:
            raise ProblemError(  # never echoed
                422, UNPROCESSABLE, f"event must be one of: {', '.join(steps)}"
            )
        reason = doc.get("reason")
        if reason not in steps[event]:
            raise ProblemError(
                422, UNPROCESSABLE, "reason must be one of: " + ", ".join(steps[event])
            )
        ends_on = doc.get("ends_on")
        if ends_on is not None and not _full_date(ends_on):
            raise ProblemError(422, UNPROCESSABLE, "ends_on must be a full date (YYYY-MM-DD)")
        result = request.app[BACKEND].identification.protect(
            _case_id(request.match_info["case_id"]),
            protection,
            event=event,
            reason=reason,
            ends_on=ends_on,
        )
        return 202, result

    return await _idempotent(request, "decide", act)


def _full_date(value: object) -> bool:
    if not (isinstance(value, str) and len(value) == 10):
        return False
    try:
        return datetime.date.fromisoformat(value).isoformat() == value
    except ValueError:
        return False


async def link_case_referral(request: web.Request) -> web.Response:
    """Name a referral this authority sent to a provider as one of the case's (idempotent)."""
    _need(request, "decide")
    case_id = _case_id(request.match_info["case_id"])
    referral_id = _case_id(request.match_info["id"])
    return web.json_response(request.app[BACKEND].identification.link(case_id, referral_id))


#: Every reason code of a decision, of either stage (keys/decision.py).
DECISION_REASONS = tuple(
    sorted({code for codes in DECISION_REASON_CODES.values() for code in codes})
)


def _case_id(raw: str, *, allow_empty: bool = False) -> str:
    if (allow_empty and raw == "") or HEX32.fullmatch(raw):
        return raw
    raise ProblemError(400, "Bad Request", "a case id is 32 lowercase hex digits")


async def place_legal_hold(request: web.Request) -> web.Response:
    """Stop every retention purge of this referral until the hold is lifted (idempotent)."""
    return _legal_hold(request, lambda r, owner, rid: r.hold(owner, rid, by=request[CLIENT].name))


async def lift_legal_hold(request: web.Request) -> web.Response:
    """Let the retention schedule apply to this referral again (idempotent)."""
    return _legal_hold(request, lambda r, owner, rid: r.lift(owner, rid))


def _legal_hold(
    request: web.Request, act: Callable[[Retention, str, str], dict[str, Any]]
) -> web.Response:
    backend, owner, referral_id = _named_referral(request, "act")
    return web.json_response(act(backend.retention, owner, referral_id))


async def list_inbox(request: web.Request) -> web.Response:
    _need(request, "read")
    settings = request.app[SETTINGS]
    limit = _int_param(request, "limit", settings.default_page_size, 1, settings.max_page_size)
    after = _int_param(request, "cursor", 0, 0, MAX_CURSOR)
    shown = _as_schema(request)
    backend = request.app[BACKEND]
    rows = backend.store.inbox_page(kind="referral", after=after, limit=limit)
    items = []
    read: list[tuple[str, str, Any]] = []  # (owner, referral id, referral) of each body returned
    for r in rows:
        opened = (
            None
            if r.referral_id is None
            else backend.desk.open_body(r.sender, r.referral_id, r.body)
        )
        items.append(
            {
                "id": r.referral_id,
                "message_id": r.message_id,
                "sender": r.sender,
                "created": r.created,
                "received_at": r.received_at,
                "envelope_hash": r.envelope_hash,
                "referral": None if opened is None else opened.get("referral"),
                "erased": opened is None,
            }
        )
        if opened is not None and r.referral_id is not None:
            read.append((r.sender, r.referral_id, opened.get("referral")))
    if read:
        with backend.store.transaction() as tx:
            for owner, referral_id, referral in read:
                _record_read(request, tx, owner, referral_id, referral)
    for item in items:  # each read recorded as received, then shown as asked
        item["referral"] = shown(item["referral"])
    next_cursor = str(rows[-1].seq) if len(rows) == limit else None
    return web.json_response({"items": items, "next_cursor": next_cursor})


async def record_consent(request: web.Request) -> web.Response:
    return await _idempotent(
        request, "submit", lambda doc: (201, request.app[BACKEND].desk.record_consent(doc))
    )


async def get_consent(request: web.Request) -> web.Response:
    _need(request, "read")
    desk = request.app[BACKEND].desk
    fmt = request.query.get("format", "nrm")
    if fmt == "kantara":
        return web.json_response(desk.kantara(request.match_info["id"]))
    if fmt != "nrm":
        raise ProblemError(400, "Bad Request", "format must be nrm or kantara")
    return web.json_response(desk.consent_status(request.match_info["id"]))


async def withdraw_consent(request: web.Request) -> web.Response:
    _need(request, "act")
    # A stored receipt that does not verify is refused here, before the request's
    # transaction, so that its consent.unverifiable audit event is kept (PROTOCOL §8.3).
    request.app[BACKEND].desk.verified_consent(request.match_info["id"], audit=True)
    return await _idempotent(
        request,
        "act",
        lambda doc: (202, request.app[BACKEND].desk.withdraw(request.match_info["id"])),
    )


async def subject_access(request: web.Request) -> web.Response:
    """The subject access report on referrals this agency sent (agents/subject_access.py).
    A query sent as POST for its length: it changes nothing, so Idempotency-Key is moot."""
    _need(request, "read")
    backend = request.app[BACKEND]
    doc = _json_object(request, await request.read())
    _only(doc, {"referral_ids"})
    ids = doc.get("referral_ids")
    most = backend.limits.subject_access_max_referrals
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= most
        or not all(isinstance(i, str) and REFERRAL_ID.fullmatch(i) for i in ids)
        or len(set(ids)) != len(ids)
    ):
        raise ProblemError(
            422,
            UNPROCESSABLE,
            f"referral_ids must list 1 to {most} distinct referral ids (32 lowercase hex digits)",
            problems=["/referral_ids: not a list of distinct referral ids"],
        )
    return web.json_response(await backend.subject_access.report(ids))


async def upload_attachment(request: web.Request) -> web.Response:
    """Upload one attachment (up to the attachment limit), to cite in a referral."""
    _need(request, "submit")
    backend = request.app[BACKEND]
    limit = backend.limits.max_attachment_bytes
    media_type = request.content_type
    if media_type not in ATTACHMENT_TYPES:
        raise ProblemError(
            415,
            "Unsupported Media Type",
            f"an attachment must be one of {sorted(ATTACHMENT_TYPES)}",
        )
    if request.content_length is not None and request.content_length > limit:
        raise ProblemError(413, "Content Too Large", f"an attachment is at most {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise ProblemError(413, "Content Too Large", f"an attachment is at most {limit} bytes")
        chunks.append(chunk)
    content = b"".join(chunks)
    if not content:
        raise ProblemError(400, "Bad Request", "the attachment is empty")
    return await _idempotent(
        request,
        "submit",
        lambda _: (201, backend.attachments.upload(content, media_type=media_type)),
        raw=content,
    )


async def get_attachment(request: web.Request) -> web.StreamResponse:
    backend, owner, referral_id = _named_referral(request, "read")
    state, media_type, content = backend.attachments.read(
        owner, referral_id, request.match_info["attachment_id"]
    )
    if state == "unknown":
        raise ProblemError(404, "Not Found", "no such attachment of this referral here")
    if state == "pending":
        raise ProblemError(409, "Conflict", "the attachment has not been fetched yet")
    if state == "corrupted":
        raise ProblemError(
            422, UNPROCESSABLE, "the attachment did not match the referral's hash and was refused"
        )
    if state == "erased":
        raise ProblemError(410, "Gone", "the attachment was erased after consent withdrawal")
    if owner != backend.desk.agency:  # a received referral's attachment
        with backend.store.transaction() as tx:
            _record_read(request, tx, owner, referral_id, None, record="attachment")
    return web.Response(body=content, content_type=media_type)


def _named_referral(request: web.Request, scope: str) -> tuple[Backend, str, str]:
    """For a request naming a referral in its path (and maybe `?sender=`), after checking
    the token has `scope`: the backend, the referral's owner and its id."""
    _need(request, scope)
    backend = request.app[BACKEND]
    referral_id = request.match_info["id"]
    return backend, backend.desk.owner_of(referral_id, _sender_param(request)), referral_id


def _sender_param(request: web.Request) -> str | None:
    """The `sender` query parameter: the agency that sent (owns) the referral named in the
    path. Referral ids are chosen by each sender, so only (sender, id) names one for sure."""
    return _agency_param(request, "sender")


def _agency_param(request: web.Request, name: str) -> str | None:
    """The query parameter `name`, an agency id if given (400 otherwise)."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return check_agency_id(raw)
    except ValueError:
        raise ProblemError(
            400, "Bad Request", f"query parameter {name} must be an agency id"
        ) from None


# --- services with capacity (PROTOCOL §8.8) ---------------------------------------------------

#: GET /v1/services filters: name -> what a value must be (one of, or a pattern).
SERVICE_FILTERS: dict[str, frozenset[str] | re.Pattern[str]] = {
    "type": frozenset(SERVICE_TYPES),
    "suitable_for": frozenset(SUITABLE_FOR),
    "language": re.compile(r"[a-z]{2,3}"),
    "region": re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?"),
}


async def put_catalogue(request: web.Request) -> web.Response:
    """Sign and publish this agency's service catalogue at its next version."""
    _need(request, "act")
    backend = request.app[BACKEND]
    doc = _json_object(request, await request.read())
    _only(doc, {"services"})
    backend.check_can_submit()
    return web.json_response(await backend.services.publish_catalogue(doc.get("services")))


async def put_capacity(request: web.Request) -> web.Response:
    """Sign and publish the next capacity record of one of this agency's services."""
    _need(request, "act")
    backend = request.app[BACKEND]
    doc = _json_object(request, await request.read())
    _only(doc, {"free", "total"})
    backend.check_can_submit()
    service_id = request.match_info["service_id"]
    return web.json_response(
        await backend.services.publish_capacity(service_id, doc.get("free"), doc.get("total"))
    )


async def list_services(request: web.Request) -> web.Response:
    """Every provider's services from this agent's verified copy, filtered; nothing is
    asked of the bus."""
    _need(request, "read")
    filters: dict[str, str] = {}
    for name, allowed in SERVICE_FILTERS.items():
        value = request.query.get(name)
        if value is None:
            continue
        if not (value in allowed if isinstance(allowed, frozenset) else allowed.fullmatch(value)):
            raise ProblemError(400, "Bad Request", f"query parameter {name} is not a known code")
        filters[name] = value
    available = request.query.get("available", "false")
    if available not in ("true", "false"):
        raise ProblemError(400, "Bad Request", "query parameter available must be true or false")
    items = request.app[BACKEND].services.listing(**filters, available=available == "true")
    return web.json_response({"items": items})


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # At most 20 digits: int() refuses over 4300 (ValueError), and no bound here is longer.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20) or not low <= int(raw) <= high:
        raise ProblemError(
            400, "Bad Request", f"query parameter {name} must be an integer from {low} to {high}"
        )
    return int(raw)
