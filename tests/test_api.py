"""The agent's HTTP API refuses bad requests with problem+json and writes nothing."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from agents.api import ApiSettings, make_app
from agents.config import ApiClient
from agents.openapi import OPENAPI, document
from keys import DEFAULT_LIMITS
from runtime.http import token_digest

from . import samples
from .support import Mechanism
from .test_agent import rows

PROBLEM = "application/problem+json"
OK_BODY = {"recipients": ["shelter"], "referral": samples.referral()}


BAD_SUBMISSIONS: list[tuple[str, dict[str, Any], int]] = [
    ("not JSON", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
    ("not UTF-8", {"data": b'{"a": "\xff"}', "headers": {"Content-Type": "application/json"}}, 400),
    ("JSON array", {"json": [OK_BODY]}, 400),
    (
        "wrong media type",
        {"data": b"recipients=shelter", "headers": {"Content-Type": "text/plain"}},
        415,
    ),
    ("no recipients", {"json": {"referral": {"a": 1}}}, 422),
    ("empty recipients", {"json": {"recipients": [], "referral": {"a": 1}}}, 422),
    ("recipient not a string", {"json": {"recipients": [7], "referral": {"a": 1}}}, 422),
    ("unknown recipient", {"json": {"recipients": ["nobody"], "referral": {"a": 1}}}, 422),
    ("self as recipient", {"json": {"recipients": ["police"], "referral": {"a": 1}}}, 422),
    ("duplicate recipients", {"json": {"recipients": ["shelter", "shelter"], "referral": {}}}, 422),
    ("referral not an object", {"json": {"recipients": ["shelter"], "referral": "x"}}, 422),
    ("unknown field", {"json": {**OK_BODY, "extra": True}}, 422),
    (
        "deeply nested",
        {"data": b"[" * 100_000, "headers": {"Content-Type": "application/json"}},
        400,
    ),
    (
        "body over the request limit",
        {
            "data": b'{"x": "' + b"a" * (DEFAULT_LIMITS.max_request_bytes + 10) + b'"}',
            "headers": {"Content-Type": "application/json"},
        },
        413,
    ),
]


@pytest.mark.parametrize(
    ("case", "kwargs", "expected"), BAD_SUBMISSIONS, ids=[c[0] for c in BAD_SUBMISSIONS]
)
async def test_bad_submission_is_refused_and_writes_nothing(
    mechanism: Mechanism, case: str, kwargs: dict[str, Any], expected: int
) -> None:
    """Each malformed or invalid submission gets its 4xx problem+json and leaves no row."""
    status, body, ctype = await mechanism.api("police").call("POST", "/v1/referrals", **kwargs)
    assert status == expected, body
    assert ctype == PROBLEM
    assert body["status"] == expected and body["title"] and body["detail"]
    assert rows(mechanism.database("police"), "outbox") == 0
    assert rows(mechanism.database("police"), "deliveries") == 0


@pytest.mark.parametrize("token", ["", "wrong-token", "Basic abc"])
async def test_missing_or_wrong_token_is_401(mechanism: Mechanism, token: str) -> None:
    """Without the right bearer token every endpoint but /healthz answers 401 problem+json."""
    api = mechanism.api("police")
    for method, path in [
        ("POST", "/v1/referrals"),
        ("GET", "/v1/inbox"),
        ("GET", "/v1/referrals/x"),
    ]:
        status, _body, ctype = await api.call(method, path, token=token, json=OK_BODY)
        assert (status, ctype) == (401, PROBLEM)
    assert rows(mechanism.database("police"), "outbox") == 0


async def test_another_agencys_token_is_refused(mechanism: Mechanism) -> None:
    """A token of one agency's agent does not open another agency's agent."""
    shelter_token = mechanism.setups["shelter"].token
    status, _, _ = await mechanism.api("police").call("GET", "/v1/inbox", token=shelter_token)
    assert status == 401


async def test_unknown_referral_is_404(mechanism: Mechanism) -> None:
    """Asking for a referral this agency never sent is a 404 problem."""
    status, _body, ctype = await mechanism.api("police").call("GET", "/v1/referrals/" + "0" * 32)
    assert (status, ctype) == (404, PROBLEM)


@pytest.mark.parametrize("query", ["limit=0", "limit=100000", "limit=x", "cursor=-1", "cursor=a"])
async def test_bad_paging_is_400(mechanism: Mechanism, query: str) -> None:
    """Out-of-range or non-numeric paging parameters are refused."""
    status, body, ctype = await mechanism.api("shelter").call("GET", f"/v1/inbox?{query}")
    assert (status, ctype) == (400, PROBLEM)
    assert query.split("=")[0] in body["detail"]


async def test_inbox_pages_with_a_cursor(mechanism: Mechanism) -> None:
    """The inbox is paged oldest first; following next_cursor visits every item once."""
    from .test_agent import delivered

    ids = [await mechanism.api("police").refer(["shelter"], samples.referral()) for _ in range(5)]
    for rid in ids:
        await delivered(mechanism, "police", rid)
    seen: list[str] = []
    cursor = ""
    while True:
        status, body, _ = await mechanism.api("shelter").call("GET", f"/v1/inbox?limit=2{cursor}")
        assert status == 200 and len(body["items"]) <= 2
        seen += [item["id"] for item in body["items"]]
        if body["next_cursor"] is None:
            break
        cursor = f"&cursor={body['next_cursor']}"
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))


def test_the_served_openapi_document_states_this_agents_limits() -> None:
    """`limit`, `recipients` and `referral_ids` are bounded as this agent bounds them, and
    building the served document leaves the module's default one as it was."""
    before = json.dumps(OPENAPI, sort_keys=True)
    doc = document(max_page_size=7, max_recipients=3, max_subject_access=5)
    for path in ("/v1/referrals", "/v1/inbox"):
        [limit] = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == "limit"]
        assert limit["schema"]["maximum"] == 7
    post = doc["paths"]["/v1/referrals"]["post"]["requestBody"]["content"]["application/json"]
    assert post["schema"]["properties"]["recipients"]["maxItems"] == 3
    report = doc["paths"]["/v1/subject-access"]["post"]["requestBody"]["content"]
    assert report["application/json"]["schema"]["properties"]["referral_ids"]["maxItems"] == 5
    assert json.dumps(OPENAPI, sort_keys=True) == before


async def test_metrics_scope_reads_metrics_and_nothing_else(mechanism: Mechanism) -> None:
    """A token with only the metrics scope reads /metrics and is refused a referral, the
    inbox and a submission (403); read still reads /metrics; submit alone does not."""
    agent = mechanism.agents["police"]
    rid = await mechanism.api("police").refer(["shelter"], samples.referral())
    tokens = {scope: secrets.token_urlsafe(16) for scope in ("metrics", "read", "submit")}
    settings = ApiSettings(
        clients=tuple(
            ApiClient(scope, token_digest(token), frozenset({scope}))
            for scope, token in tokens.items()
        ),
        max_request_bytes=DEFAULT_LIMITS.max_request_bytes,
        default_page_size=DEFAULT_LIMITS.default_page_size,
        max_page_size=DEFAULT_LIMITS.max_page_size,
    )
    async with TestServer(make_app(agent, settings)) as server, ClientSession() as http:

        async def status(method: str, path: str, scope: str) -> tuple[int, str]:
            headers = {"Authorization": f"Bearer {tokens[scope]}"}
            async with http.request(method, server.make_url(path), headers=headers) as r:
                return r.status, r.content_type

        assert await status("GET", "/metrics", "metrics") == (200, "text/plain")
        assert await status("GET", "/metrics", "read") == (200, "text/plain")
        assert await status("GET", "/metrics", "submit") == (403, PROBLEM)
        assert await status("GET", f"/v1/referrals/{rid}", "read") == (200, "application/json")
        for method, path in [
            ("GET", f"/v1/referrals/{rid}"),
            ("GET", "/v1/inbox"),
            ("POST", "/v1/referrals"),
        ]:
            assert await status(method, path, "metrics") == (403, PROBLEM), path
