"""Problem details and bearer tokens (runtime/http.py), shared by the agent and the ledger."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog import get_logger

from runtime.http import (
    ProblemError,
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
