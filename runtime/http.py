"""What every HTTP service of NRM Exchange answers the same way: RFC 9457 problem details
for every error (`problems_middleware`) and bearer tokens checked by SHA-256 digest in
constant time (the agent's API, the ledger's).

Only a token's digest is configured (`token_sha256`); a presented token is hashed and
compared against every configured digest, each in constant time, so neither the answer nor
its timing says which digest came close.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from structlog.typing import FilteringBoundLogger

PROBLEM_TYPE_BASE = "https://nrm-exchange.org/problems/"


def problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    """A problem+json response. `detail` must never carry personal data."""
    slug = title.lower().replace(" ", "-")
    body = {"type": PROBLEM_TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    body.update(extra)
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/problem+json",
    )


class ProblemError(Exception):
    """Raised by handlers; the service's middleware turns it into a problem+json response."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra

    def response(self) -> web.Response:
        return problem(self.status, self.title, self.detail, **self.extra)


def problems_middleware(
    *,
    log: FilteringBoundLogger,
    event: str,
    unanswerable: str,
    translate: Callable[[web.Request, Exception], ProblemError | None] | None = None,
) -> Middleware:
    """The middleware that makes every error a service answers problem+json: a ProblemError
    as raised; what `translate` maps (the service's own errors, or a better detail); an HTTP
    error by its status and reason; anything else 500 with `unanswerable` as detail, logged
    as `event` with the path and the exception's type only (its message could quote input).
    Redirects and other HTTP answers below 400 pass through."""

    def answer(request: web.Request, e: Exception) -> ProblemError:
        if isinstance(e, ProblemError):
            return e
        mapped = None if translate is None else translate(request, e)
        if mapped is not None:
            return mapped
        if isinstance(e, web.HTTPException):
            title = e.reason or "Error"
            return ProblemError(e.status, title, title)
        log.error(event, path=request.path, error=type(e).__name__)
        return ProblemError(500, "Internal Server Error", unanswerable)

    @web.middleware
    async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as e:
            if isinstance(e, web.HTTPException) and e.status < 400:
                raise
            return answer(request, e).response()

    return problems


def token_digest(token: str) -> bytes:
    """The SHA-256 digest of a bearer token: what `token_sha256` holds, in hex."""
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def bearer_match(authorization: str, digests: Sequence[bytes]) -> int | None:
    """The index in `digests` of the token an `Authorization: Bearer <token>` header
    carries, or None (no bearer token, or none matches). Every digest is compared."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    presented = token_digest(token)
    found = None
    for index, expected in enumerate(digests):
        if hmac.compare_digest(presented, expected):
            found = index
    return found


def unauthorized(detail: str, *, realm: str) -> web.Response:
    """401 problem+json asking for a bearer token of `realm`."""
    response = problem(401, "Unauthorized", detail)
    response.headers["WWW-Authenticate"] = f'Bearer realm="{realm}"'
    return response


def json_object_body(required: Sequence[str], properties: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI `requestBody` of an operation that takes a JSON object with `properties`
    (no others), of which `required` must be present."""
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": list(required),
                    "additionalProperties": False,
                    "properties": properties,
                }
            }
        },
    }
