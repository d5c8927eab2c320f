"""Problem details and bearer tokens (runtime/http.py), shared by the agent and the ledger."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog import get_logger

from runtime.http import (
    ProblemError,
    bearer_match,
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
