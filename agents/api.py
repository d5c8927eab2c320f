"""The agent's local HTTP API for the agency's own systems (aiohttp).

Bearer tokens per client system, compared by SHA-256 digest in constant time; every error is
problem+json; request bodies are bounded before they are read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiohttp import web

from .config import ApiClient
from .problems import ProblemError, problem
from .store import OutgoingStatus, Received, Store

log = structlog.get_logger("nrm.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Backend(Protocol):
    """What the API needs from the agent."""

    store: Store

    def submit_referral(self, *, recipients: Sequence[str], referral: dict[str, Any]) -> str:
        """Seal and commit a referral to the outbox; return its id. Raises ProblemError."""
        ...

    def health(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class ApiSettings:
    clients: tuple[ApiClient, ...]
    max_request_bytes: int
    default_page_size: int
    max_page_size: int


BACKEND = web.AppKey("backend", Backend)
SETTINGS = web.AppKey("settings", ApiSettings)
CLIENT = web.RequestKey("client", str)


def make_app(backend: Backend, settings: ApiSettings) -> web.Application:
    app = web.Application(
        middlewares=[_problems, _authenticate],
        client_max_size=settings.max_request_bytes,
    )
    app[BACKEND] = backend
    app[SETTINGS] = settings
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/referrals", submit_referral)
    app.router.add_get("/v1/referrals/{id}", get_referral)
    app.router.add_get("/v1/inbox", list_inbox)
    return app


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProblemError as e:
        return e.response()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        title = e.reason or "Error"
        if isinstance(e, web.HTTPRequestEntityTooLarge):
            detail = (
                f"the request body is larger than {request.app[SETTINGS].max_request_bytes} bytes"
            )
        else:
            detail = title
        return problem(e.status, title, detail)
    except Exception as e:
        # Never echo the exception: it could quote input. Log its type only.
        log.error("api_internal_error", path=request.path, error=type(e).__name__)
        return problem(500, "Internal Server Error", "the agent could not process the request")


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/healthz":
        return await handler(request)
    client = _client_for(request.headers.get("Authorization", ""), request.app[SETTINGS].clients)
    if client is None:
        response = problem(401, "Unauthorized", "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="nrm-agent"'
        return response
    request[CLIENT] = client.name
    return await handler(request)


def _client_for(authorization: str, clients: Sequence[ApiClient]) -> ApiClient | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    digest = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
    found = None
    for client in clients:  # compare against every client, in constant time each
        if hmac.compare_digest(digest, client.token_sha256):
            found = client
    return found


async def healthz(request: web.Request) -> web.Response:
    health = request.app[BACKEND].health()
    return web.json_response(health, status=200 if health["status"] == "ok" else 503)


async def submit_referral(request: web.Request) -> web.Response:
    doc = await _json_object(request)
    unknown = set(doc) - {"recipients", "referral"}
    if unknown:
        raise ProblemError(422, "Unprocessable Content", f"unknown fields: {sorted(unknown)}")
    recipients = doc.get("recipients")
    if (
        not isinstance(recipients, list)
        or not recipients
        or not all(isinstance(r, str) for r in recipients)
    ):
        raise ProblemError(
            422, "Unprocessable Content", "recipients must be a non-empty list of agency ids"
        )
    referral = doc.get("referral")
    if not isinstance(referral, dict):
        raise ProblemError(422, "Unprocessable Content", "referral must be a JSON object")
    message_id = request.app[BACKEND].submit_referral(recipients=recipients, referral=referral)
    return web.json_response(
        {"id": message_id, "status": "queued"},
        status=202,
        headers={"Location": f"/v1/referrals/{message_id}"},
    )


async def get_referral(request: web.Request) -> web.Response:
    status = request.app[BACKEND].store.outgoing(request.match_info["id"])
    if status is None or status.kind != "referral":
        raise ProblemError(404, "Not Found", "no referral with this id was sent by this agency")
    return web.json_response(_status_json(status))


async def list_inbox(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    limit = _int_param(request, "limit", settings.default_page_size, 1, settings.max_page_size)
    after = _int_param(request, "cursor", 0, 0, 2**62)
    rows = request.app[BACKEND].store.inbox_page(kind="referral", after=after, limit=limit)
    items = [_received_json(r) for r in rows]
    next_cursor = str(rows[-1].seq) if len(rows) == limit else None
    return web.json_response({"items": items, "next_cursor": next_cursor})


async def _json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ProblemError(
            415, "Unsupported Media Type", "the request body must be application/json"
        )
    raw = await request.read()  # bounded by client_max_size
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ProblemError(400, "Bad Request", f"the body is not valid JSON ({e.msg})") from e
    except UnicodeDecodeError as e:
        raise ProblemError(400, "Bad Request", "the body is not valid UTF-8") from e
    except RecursionError as e:
        raise ProblemError(400, "Bad Request", "the body nests too deeply") from e
    if not isinstance(doc, dict):
        raise ProblemError(400, "Bad Request", "the body must be a JSON object")
    return doc


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ProblemError(
            400, "Bad Request", f"query parameter {name} must be an integer from {low} to {high}"
        )
    return int(raw)


def _status_json(s: OutgoingStatus) -> dict[str, Any]:
    return {
        "id": s.message_id,
        "status": s.status,
        "created": s.created,
        "envelope_hash": s.envelope_hash,
        "recipients": [
            {
                "agency": d.recipient,
                "status": d.state,
                "sent_at": d.sent_at,
                "delivered_at": d.delivered_at,
            }
            for d in s.deliveries
        ],
    }


def _received_json(r: Received) -> dict[str, Any]:
    return {
        "id": r.message_id,
        "sender": r.sender,
        "created": r.created,
        "received_at": r.received_at,
        "envelope_hash": r.envelope_hash,
        "referral": json.loads(r.body) if r.body is not None else None,
    }
