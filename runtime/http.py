"""What every HTTP service of NRM Exchange answers the same way: RFC 9457 problem details
for every error (`problems_middleware` for what reaches the application, `app_runner` for
what aiohttp refuses before it: a request it cannot parse) and bearer tokens checked by
SHA-256 digest in constant time (the agent's API, the ledger's).

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
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.typedefs import Handler, Middleware
from structlog.typing import FilteringBoundLogger

from keys.limits import DEFAULT_LIMITS, Limits

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


#: aiohttp's message for a request with more header fields than `max_headers` (aiohttp
#: 3.14, both of its parsers); it names no part of the request.
_TOO_MANY_HEADERS = "Too many headers received"
#: aiohttp's message for a TLS handshake sent to a plain-HTTP port (aiohttp 3.14).
_TLS_TO_HTTP = "Received HTTPS traffic on an HTTP port"


def unparseable_detail(exc: BaseException | None, handler: web.RequestHandler) -> str:
    """What was wrong with a request aiohttp could not parse (or, without a parser error,
    could not answer), naming the limit it broke. Never a part of the request: aiohttp's own
    messages quote the request line or header they stopped at."""
    if isinstance(exc, LineTooLong):
        return (
            f"the request line or a header field is too long (the request line at most "
            f"{handler.max_line_size} bytes, a header field at most {handler.max_field_size})"
        )
    if isinstance(exc, BadHttpMethod):
        if exc.message == _TLS_TO_HTTP:
            return "the request is a TLS handshake, sent to a plain-HTTP port"
        return "the request line does not start with an HTTP method"
    if isinstance(exc, BadStatusLine):
        return "the request line is not `METHOD target HTTP/1.x`"
    if isinstance(exc, InvalidURLError):
        return "the request target is not a valid URL path"
    if isinstance(exc, BadHttpMessage):
        if exc.message == _TOO_MANY_HEADERS:
            return f"the request has too many header fields (at most {handler.max_headers})"
        return "the request's header fields or body framing are not valid HTTP/1.1"
    return "the request could not be answered"


class _ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering what its HTTP parser refuses (and a handler
    that escapes the middlewares) as problem+json."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own answer is text/plain quoting what its parser stopped at (`message`),
        # and it logs that at ERROR with a traceback: here neither, only the exception type.
        if status >= 500:
            self.logger.error("unanswered request: %d %s", status, type(exc).__name__)
        else:
            self.logger.info("unparseable request: %d %s", status, type(exc).__name__)
        if request.writer.output_size > 0:  # as aiohttp: an answer is under way
            raise ConnectionError("a response is sent already: no error response")
        response = problem(status, HTTPStatus(status).phrase, unparseable_detail(exc, self))
        response.force_close()
        return response


class _ProblemServer(web.Server):
    """`made`, the Server an AppRunner builds, making _ProblemRequestHandler connections."""

    def __init__(self, made: web.Server) -> None:
        # aiohttp 3.14.5 has no public way to choose the RequestHandler class: its
        # Server.__call__ (the protocol factory) makes a plain one from the Server's private
        # `_loop` and `_kwargs`. This is the only place that reads them;
        # tests/test_http.py fails if that stops working.
        loop, kwargs = made._loop, made._kwargs
        super().__init__(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=loop,
            **kwargs,
        )
        self._connection_args = loop, kwargs

    def __call__(self) -> web.RequestHandler:
        loop, kwargs = self._connection_args
        return _ProblemRequestHandler(self, loop=loop, **kwargs)


class _ProblemAppRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:  # BaseRunner's abstract hook
        return _ProblemServer(await super()._make_server())


def app_runner(app: web.Application, limits: Limits) -> web.AppRunner:
    """The runner every HTTP service of NRM Exchange serves `app` with: no access log (a
    path can carry ids), the lingering and HTTP parser limits of `limits`, and a request
    aiohttp cannot parse (a request line or header field too long, too many header fields,
    not HTTP/1.1) answered problem+json like every other error, before any middleware."""
    return _ProblemAppRunner(
        app,
        access_log=None,
        lingering_time=limits.http_lingering_seconds,
        max_line_size=limits.http_max_request_line,
        max_field_size=limits.http_max_header_field,
        max_headers=limits.http_max_headers,
    )


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
