"""Problem details and bearer tokens (runtime/http.py), shared by the agent and the ledger."""

from __future__ import annotations

import json

from runtime.http import ProblemError, bearer_match, problem, token_digest, unauthorized

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
