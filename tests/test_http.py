"""Problem details and bearer tokens (runtime/http.py), shared by the agent and the ledger."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog import get_logger

from keys import DEFAULT_LIMITS
from runtime.http import (
    ProblemError,
    app_runner,
    bearer_match,
    http_exception_problem,
    parse_json_body,
    problem,
    problems_middleware,
    token_digest,
    unauthorized,
)

DIGESTS = [token_digest("first-token"), token_digest("second-token")]


def test_a_bearer_token_is_found_among_the_digests() -> None:
    """The index of the matching digest; the scheme is case-insensitive, spaces trimmed."""
    assert bearer_match("Bearer second-token", DIGESTS) == 1
    assert bearer_match("bearer  first-token ", DIGESTS) == 0


def test_anything_but_a_known_bearer_token_matches_nothing() -> None:
    """Another scheme, no token, or an unknown token: None."""
    for header in ("", "Bearer", "Bearer ", "Basic first-token", "Bearer third-token"):
        assert bearer_match(header, DIGESTS) is None, header
    assert bearer_match("Bearer first-token", []) is None


def test_problems_are_rfc_9457_with_a_stable_type() -> None:
    """type, title, status, detail and any extra members; 401 names the realm."""
    response = ProblemError(409, "Conflict", "already used", reason="replayed").response()
    assert response.status == 409 and response.content_type == "application/problem+json"
    assert response.body is not None
    assert json.loads(bytes(response.body)) == {  # type: ignore[arg-type]
        "type": "https://nrm-exchange.org/problems/conflict",
        "title": "Conflict",
        "status": 409,
        "detail": "already used",
        "reason": "replayed",
    }
    refused = unauthorized("a token is required", realm="nrm-ledger")
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="nrm-ledger"'
    assert problem(404, "Not Found", "x").status == 404


async def test_the_problems_middleware_answers_every_error_with_problem_json() -> None:
    """A ProblemError as raised, what `translate` maps, an HTTP error by its reason, anything
    else 500 without its message; a redirect passes through."""

    async def refuse(request: web.Request) -> web.StreamResponse:
        raise ProblemError(409, "Conflict", "already used")

    async def translated(request: web.Request) -> web.StreamResponse:
        raise LookupError("quoted input")

    async def crash(request: web.Request) -> web.StreamResponse:
        raise RuntimeError("quoted input")

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/elsewhere")

    def translate(request: web.Request, e: Exception) -> ProblemError | None:
        return (
            ProblemError(404, "Not Found", "no such thing") if isinstance(e, LookupError) else None
        )

    app = web.Application(
        middlewares=[
            problems_middleware(
                log=get_logger("test"), event="x", unanswerable="failed", translate=translate
            )
        ]
    )
    for path, handler in [("/refuse", refuse), ("/translated", translated), ("/crash", crash)]:
        app.router.add_get(path, handler)
    app.router.add_get("/redirect", redirect)
    async with TestClient(TestServer(app)) as client:
        answers = {}
        for path in ("/refuse", "/translated", "/crash", "/missing"):
            async with client.get(path) as r:
                assert r.content_type == "application/problem+json", path
                answers[path] = (r.status, (await r.json())["detail"])
        async with client.get("/redirect", allow_redirects=False) as r:
            assert r.status == 302
    assert answers == {
        "/refuse": (409, "already used"),
        "/translated": (404, "no such thing"),
        "/crash": (500, "failed"),
        "/missing": (404, "Not Found"),
    }


def test_json_bodies_are_bounded_to_i_json_integers() -> None:
    """Integers up to ±(2^53 - 1) parse; beyond, up to 5000 digits, is a 400 naming the limit;
    bad JSON, bad UTF-8 and deep nesting are 400s of their own."""
    limit = (1 << 53) - 1
    assert parse_json_body(b'{"a": [%d, %d, 0, -0]}' % (limit, -limit)) == {
        "a": [limit, -limit, 0, 0]
    }
    assert parse_json_body(b"1.5e300") == 1.5e300
    parsed = parse_json_body(b"[5.0, 5e0, -0.0, 2.5, 9007199254740991.0, 9007199254740992.0]")
    assert parsed == [5, 5, 0, 2.5, limit, float(limit + 1)]
    assert [type(x) for x in parsed] == [int, int, int, float, int, float]
    for number in (b"9" * 5000, b"-" + b"9" * 5000, b"%d" % (limit + 1), b"%d" % (-limit - 1)):
        with pytest.raises(ProblemError) as info:
            parse_json_body(b'{"n": ' + number + b"}")
        assert info.value.status == 400 and "2^53" in info.value.detail
    for number in (b"1e9999999", b"-1e999", b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(ProblemError) as info:
            parse_json_body(b'{"n": ' + number + b"}")
        assert info.value.status == 400 and "NaN" in info.value.detail, number
    for raw, words in ((b"{", "not valid JSON"), (b"\xff", "UTF-8"), (b"[" * 100_000, "nests")):
        with pytest.raises(ProblemError) as info:
            parse_json_body(raw)
        assert info.value.status == 400 and words in info.value.detail, info.value.detail


def test_an_http_error_keeps_its_allow_header_as_problem_json() -> None:
    """A 405 rewritten as problem+json still says which methods are allowed."""
    response = http_exception_problem(web.HTTPMethodNotAllowed("PUT", ["GET", "POST"]))
    assert response.status == 405 and response.content_type == "application/problem+json"
    assert response.headers["Allow"] == "GET,POST"
    assert "Allow" not in http_exception_problem(web.HTTPNotFound()).headers


#: Raw requests aiohttp's parser refuses before any middleware, and the detail of each
#: answer. MARK is in each request and must be in no answer, nor in any log line.
MARK = b"quoted-input"
UNPARSEABLE = {
    "request line over 8190 bytes": (
        b"GET /" + MARK * 700 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "the request line or a header field is too long (the request line at most 8190 "
        "bytes, a header field at most 8190)",
    ),
    "header field over 8190 bytes": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + MARK * 700 + b"\r\n\r\n",
        "the request line or a header field is too long (the request line at most 8190 "
        "bytes, a header field at most 8190)",
    ),
    "129 header fields": (
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, MARK) for i in range(129)) + b"\r\n",
        "the request has too many header fields (at most 128)",
    ),
    "no HTTP method": (MARK + b"\r\n\r\n", "the request line does not start with an HTTP method"),
    "a TLS handshake": (
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + MARK + b"\r\n\r\n",
        "the request is a TLS handshake, sent to a plain-HTTP port",
    ),
    "a bad HTTP version": (
        b"GET /" + MARK + b" HTTP/9.x\r\n\r\n",
        "the request line is not `METHOD target HTTP/1.x`",
    ),
    "a NUL in the path": (
        b"GET /" + MARK + b"\x00 HTTP/1.1\r\n\r\n",
        "the request target is not a valid URL path",
    ),
    "a malformed header field": (
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: " + MARK + b"\r\n\r\n",
        "the request's header fields or body framing are not valid HTTP/1.1",
    ),
    "a handler escaping the middlewares": (
        b"GET /crash HTTP/1.1\r\nHost: x\r\n\r\n",
        "the request could not be answered",
    ),
}


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw` on a new connection; the status, headers and body of the answer, read to
    the end (the server closes the connection after an error)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


async def test_app_runner_answers_what_aiohttp_cannot_parse_with_problem_json(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request aiohttp's parser refuses (request line or header over 8190 bytes, over 128
    header fields, not HTTP), and a handler error no middleware caught, are answered
    problem+json naming what was wrong, quoting nothing of the request, logged by type only.
    This is also the check of the private aiohttp hook app_runner relies on (aiohttp 3.14)."""

    async def crash(request: web.Request) -> web.StreamResponse:
        raise RuntimeError(MARK.decode())

    app = web.Application()  # no problems middleware: the 500 comes from the handler
    app.router.add_get("/crash", crash)
    runner = app_runner(app, DEFAULT_LIMITS)
    await runner.setup()
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        answers = {}
        for case, (raw, _) in UNPARSEABLE.items():
            status, headers, body = await exchange(port, raw)
            assert headers["content-type"] == "application/problem+json", (case, body)
            assert MARK not in body, case
            problem_body = json.loads(body)
            assert problem_body["status"] == status, case
            answers[case] = (status, problem_body["detail"])
    finally:
        await runner.cleanup()
    assert answers == {
        case: (500 if "handler" in case else 400, detail)
        for case, (_, detail) in UNPARSEABLE.items()
    }
    assert caplog.records, "each refusal is logged"
    for record in caplog.records:
        assert MARK.decode() not in record.getMessage() and record.exc_info is None
