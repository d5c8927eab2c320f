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
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from structlog.typing import FilteringBoundLogger

from keys.limits import DEFAULT_LIMITS

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


#: Headers an HTTP error carries that its problem+json rewrite must keep (RFC 9110 §15.5.6:
#: a 405 MUST list the allowed methods; §15.5.14, §15.5.21: 413/414 may say when to retry).
_KEPT_HEADERS = ("Allow", "Retry-After")


def http_exception_problem(error: web.HTTPException, detail: str | None = None) -> web.Response:
    """An aiohttp HTTP error (404, 405, 413, ...) as problem+json, with the headers it
    carries that say what to do next (`Allow` on a 405)."""
    title = error.reason or "Error"
    response = problem(error.status, title, title if detail is None else detail)
    for name in _KEPT_HEADERS:
        if name in error.headers:
            response.headers[name] = error.headers[name]
    return response


#: The largest magnitude of a JSON integer any request body may carry: I-JSON (RFC 7493
#: §2.2), the range every JSON implementation represents exactly; also what every NRM format
#: allows (PROTOCOL.md §6.4, §7.1).
MAX_JSON_INT = DEFAULT_LIMITS.max_json_integer
_MAX_INT_DIGITS = len(str(MAX_JSON_INT))


class _IntegerOutOfRange(ValueError):
    pass


class _NotFinite(ValueError):
    pass


def _bounded_int(text: str) -> int:
    # Check the length before converting: int() of thousands of digits is slow, and over
    # 4300 digits Python refuses it (a ValueError that would otherwise be a 500).
    if len(text.lstrip("-")) > _MAX_INT_DIGITS or abs(value := int(text)) > MAX_JSON_INT:
        raise _IntegerOutOfRange  # no digits of the input: it could be anything
    return value


def _number(text: str) -> int | float:
    # JSON Schema (and so the OpenAPI documents) counts 5.0 as an integer: so do we, within
    # the I-JSON range; any other number stays a float, for the handler to refuse or take.
    if len(text) <= 1000:  # a bound on the work; longer is no integer anyone sends
        value = Decimal(text)
        # adjusted() first: arithmetic on an exponent like 1e9999999 overflows the context.
        small = value.adjusted() < _MAX_INT_DIGITS
        if small and value == value.to_integral_value() and abs(value) <= MAX_JSON_INT:
            return int(value)
    number = float(text)
    if not math.isfinite(number):  # 1e999: no JSON implementation holds it
        raise _NotFinite
    return number


def _constant(name: str) -> float:
    # NaN, Infinity and -Infinity: Python's json module takes them, JSON (RFC 8259) does not.
    raise _NotFinite


def parse_json_body(raw: bytes) -> Any:
    """A request body parsed as JSON, or a 400 ProblemError saying what is wrong with it
    (not JSON, not UTF-8, nesting too deep, an integer beyond ±(2^53 - 1)). A number with a
    fraction or exponent that is a whole number in that range (`5.0`, `5e0`) is that integer,
    as JSON Schema counts it."""
    try:
        return json.loads(
            raw, parse_int=_bounded_int, parse_float=_number, parse_constant=_constant
        )
    except _IntegerOutOfRange as e:
        raise ProblemError(
            400, "Bad Request", "the body has an integer beyond ±(2^53 - 1), the I-JSON limit"
        ) from e
    except _NotFinite as e:
        raise ProblemError(
            400,
            "Bad Request",
            "the body has a number no JSON implementation holds exactly "
            "(NaN, Infinity, or beyond the range of a double)",
        ) from e
    except json.JSONDecodeError as e:
        raise ProblemError(400, "Bad Request", f"the body is not valid JSON ({e.msg})") from e
    except UnicodeDecodeError as e:
        raise ProblemError(400, "Bad Request", "the body is not valid UTF-8") from e
    except RecursionError as e:
        raise ProblemError(400, "Bad Request", "the body nests too deeply") from e


def problems_middleware(
    *,
    log: FilteringBoundLogger,
    event: str,
    unanswerable: str,
    translate: Callable[[web.Request, Exception], ProblemError | None] | None = None,
) -> Middleware:
    """The middleware that makes every error a service answers problem+json: a ProblemError
    as raised; what `translate` maps (the service's own errors, or a better detail); an HTTP
    error by its status and reason, keeping the headers that say what to do next (a 405's
    `Allow`); anything else 500 with `unanswerable` as detail, logged as `event` with the
    path and the exception's type only (its message could quote input). Redirects and other
    HTTP answers below 400 pass through."""

    def answer(request: web.Request, e: Exception) -> web.Response:
        if isinstance(e, ProblemError):
            return e.response()
        mapped = None if translate is None else translate(request, e)
        if mapped is not None:
            return mapped.response()
        if isinstance(e, web.HTTPException):
            return http_exception_problem(e)
        log.error(event, path=request.path, error=type(e).__name__)
        return problem(500, "Internal Server Error", unanswerable)

    @web.middleware
    async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as e:
            if isinstance(e, web.HTTPException) and e.status < 400:
                raise
            return answer(request, e)

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
