"""Schemathesis against the live agent's and the live ledger's OpenAPI documents, as they
serve them.

Every operation gets a bounded number of generated requests, schema-conforming and not,
with a valid bearer token. Nothing may answer 5xx, every error is problem+json, and every
answer is one the document declares, in the shape (body and headers) it declares; the
ledger's run is on a ledger holding a real exchange, with real ids pinned, so its 200 shapes
are checked on entries, not only on empty lists. And the document is no looser
than the code (`positive_data_acceptance`): a request it allows is never refused 400, 413 or
415. What a valid request may still meet is the state of things — 404 (no such referral, a
tree not that big yet), 409 (a conflict), 422 (well formed but not possible now: an agency
not in the directory, a transition the lifecycle does not allow, two sizes in the wrong
order), 503 (this agency cannot send). The servers run in the test's event loop, so the
(blocking) schemathesis calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agents.openapi import document as agent_document
from broker.ledger_http import OPENAPI as LEDGER_DOCUMENT
from keys import DEFAULT_LIMITS

from . import samples
from .conftest import LedgerAccess
from .support import Api, Mechanism
from .test_agent import delivered

EXAMPLES = 20


def errors_are_problem_json(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Every 4xx and 5xx answer is an RFC 9457 problem document."""
    if response.status_code >= 400:
        ctype = response.headers.get("content-type", [""])[0].split(";")[0].strip()
        assert ctype == "application/problem+json", (
            f"{case.operation.label} answered {response.status_code} as {ctype!r}, "
            "not application/problem+json"
        )
    return None


CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    errors_are_problem_json,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    positive_data_acceptance,
]
#: Answers a request the document allows may get (see the module docstring): not 400, 413
#: or 415, which would mean the code refuses what the document allows.
ACCEPTED = ["2xx", "401", "403", "404", "409", "422", "503"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}}}
)


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    ]


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        for part in node["$ref"].removeprefix("#/").split("/"):
            document = document[part]
        node = document
    return node


def _longest(schema: dict[str, Any]) -> int:
    """The most bytes a value of `schema` takes in a URL: an integer's digits and sign, an
    enum's longest member, a string's maxLength of four-byte characters, percent-encoded."""
    if "enum" in schema:
        return max(len(str(v)) for v in schema["enum"])
    if schema["type"] == "integer":
        return max(len(str(schema["minimum"])), len(str(schema["maximum"]))) + 1
    assert schema["type"] == "string" and "maxLength" in schema, f"unbounded: {schema}"
    return 12 * int(schema["maxLength"])


DOCUMENTS = {
    "agent": agent_document(
        max_page_size=DEFAULT_LIMITS.max_page_size, max_recipients=DEFAULT_LIMITS.max_recipients
    ),
    "ledger": LEDGER_DOCUMENT,
}


def test_every_request_the_documents_allow_fits_the_request_line() -> None:
    """Every operation of both documents declares a 400 problem (a request the server cannot
    parse), and none allows a request line longer than the server parses: schemathesis'
    longest positive request is answered, never refused 400 (which it would count as the
    code being stricter than the document), whatever it generates."""
    for name, document in DOCUMENTS.items():
        for method, path, operation in _operations(document):
            answer = _resolve(document, operation["responses"].get("400", {}))
            assert "application/problem+json" in answer.get("content", {}), (name, path)
            parameters = [
                _resolve(document, p)
                for p in document["paths"][path].get("parameters", [])
                + operation.get("parameters", [])
            ]
            line = len(f"{method} {path} HTTP/1.1")
            for parameter in parameters:
                if parameter["in"] not in ("path", "query"):
                    continue
                value = _longest(_resolve(document, parameter["schema"]))
                if parameter["in"] == "path":
                    line += value - len(parameter["name"]) - 2  # the braces
                else:
                    line += len(f"&{parameter['name']}=") + value
            assert line <= DEFAULT_LIMITS.http_max_request_line, (name, method, path, line)


def fuzz(
    document: dict[str, Any],
    base_url: str,
    token: str,
    pinned: dict[str, dict[str, str]] | None = None,
) -> list[str]:
    """Run every operation of `document` against `base_url`; the failures, one each. With
    `pinned` (path prefix -> path parameters), run only the operations under those prefixes,
    with those path parameters: ids that exist, so the requests reach past the 404."""
    schema = schemathesis.openapi.from_dict(document, config=CONFIG)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operation = result.ok()
        operations += 1
        path_parameters = None
        if pinned is not None:
            prefix = next((p for p in pinned if operation.path.startswith(p)), None)
            if prefix is None or "{" not in operation.path:
                continue
            path_parameters = pinned[prefix]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: keep the run bounded
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            @hypothesis.given(
                case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            )
            def run(case: Case[Any]) -> None:
                case.call_and_validate(
                    base_url=base_url,
                    session=session,
                    headers=headers,
                    checks=CHECKS,
                    timeout=10,
                )

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): nothing negative to send.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as e:  # schemathesis' FailureGroup
                failures.append(f"{operation.label} ({mode.value}): {e}")
    assert pinned is not None or operations == len(
        [op for item in document["paths"].values() for op in item if op != "parameters"]
    )
    return failures


def exact(
    document: dict[str, Any],
    base_url: str,
    token: str,
    cases: list[tuple[str, str, dict[str, Any], int]],
) -> list[str]:
    """Send each (method, path, case fields, status it must get) once, with every check; the
    failures."""
    schema = schemathesis.openapi.from_dict(document, config=CONFIG)
    failures = []
    for method, path, fields, expected in cases:
        case = schema[path][method].Case(**fields)
        try:
            response = case.call_and_validate(
                base_url=base_url,
                headers={"Authorization": f"Bearer {token}"},
                checks=CHECKS,
                timeout=10,
            )
            assert response.status_code == expected, (response.status_code, response.text)
        except (Exception, BaseExceptionGroup) as e:
            failures.append(f"{method} {path} {fields}: {e}")
    return failures


async def test_agent_api_survives_schemathesis(mechanism: Mechanism) -> None:
    api = mechanism.api("police")
    # Found by schemathesis: a query number of over 4300 digits made int() raise (500).
    for path in ("/v1/referrals?limit=", "/v1/inbox?cursor=", "/v1/referrals?since="):
        status, body, ctype = await api.call("GET", path + "9" * 5000)
        assert (status, ctype) == (400, "application/problem+json"), (path, body)
    status, document, _ = await api.call("GET", "/openapi.json")
    assert status == 200, document
    failures = await asyncio.to_thread(fuzz, document, api.base, api.token)
    # Then again on a referral and a consent receipt that exist: transitions, history and
    # withdrawal get to do their work on generated input.
    consent_id = str(uuid.uuid4())
    status, body, _ = await api.call("POST", "/v1/consents", json=samples.consent(consent_id))
    assert status == 201, body
    referral_id = await api.refer(["shelter"], samples.referral())
    # A second one, left alone by the fuzzing, for the recipient's side of the answers.
    received_id = await api.refer(["shelter"], samples.referral())
    pinned = {"/v1/referrals/": {"id": referral_id}, "/v1/consents/": {"id": consent_id}}
    failures += await asyncio.to_thread(fuzz, document, api.base, api.token, pinned)
    failures += await asyncio.to_thread(
        exact,
        document,
        api.base,
        api.token,
        [
            (
                "GET",
                "/v1/consents/{id}",
                {"path_parameters": {"id": consent_id}, "query": {"format": "kantara"}},
                200,
            )
        ],
    )
    await delivered(mechanism, "police", received_id)
    shelter = mechanism.api("shelter")
    status, shelter_document, _ = await shelter.call("GET", "/openapi.json")
    assert status == 200, shelter_document
    named = {"path_parameters": {"id": received_id}, "query": {"sender": "police"}}
    failures += await asyncio.to_thread(
        exact,
        shelter_document,
        shelter.base,
        shelter.token,
        [
            ("GET", "/v1/inbox", {}, 200),
            ("GET", "/v1/referrals", {}, 200),
            ("GET", "/v1/referrals/{id}", named, 200),
            (
                "POST",
                "/v1/referrals/{id}/transitions",
                {"path_parameters": {"id": received_id}, "body": {"to": "acknowledged"}},
                202,
            ),
            ("GET", "/v1/referrals/{id}/history", named, 200),
            # A request line over the server's limit: refused before any handler, 400 as
            # the document declares it (before app_runner: text/plain, now and then found).
            ("GET", "/v1/referrals/{id}", {"path_parameters": {"id": "9" * 9000}}, 400),
        ],
    )
    assert not failures, "\n\n".join(failures)


async def test_ledger_api_survives_schemathesis(
    mechanism: Mechanism, ledger_with_data: LedgerAccess
) -> None:
    # Found by schemathesis: a non-numeric entry index became -1 (500), so did an index past
    # the tree, and a number of over 4300 digits made int() raise (500).
    api = Api(mechanism.http, ledger_with_data.url, ledger_with_data.token)
    for path, expected in [
        ("/v1/entries/abc/proof", 404),
        ("/v1/entries/%22d%C2%87/proof", 404),
        ("/v1/entries/" + "9" * 30 + "/proof", 404),
        ("/v1/entries/0/proof?size=0", 400),
        ("/v1/events?limit=" + "9" * 5000, 400),
        ("/v1/entries?start=" + "9" * 5000, 400),
    ]:
        status, body, ctype = await api.call("GET", path)
        assert (status, ctype) == (expected, "application/problem+json"), (path, body)
    status, document, _ = await api.call("GET", "/openapi.json")
    assert status == 200, document
    failures = await asyncio.to_thread(fuzz, document, api.base, api.token)
    # Then again on an event and a referral that exist, so that their answers (not only the
    # 404) are held to the document; and a batch of proofs of real events, one past the size.
    status, body, _ = await api.call("GET", "/v1/entries?start=0")
    assert status == 200, body
    entries = body["items"]
    referral_id = next(e["referral_id"] for e in entries if e["referral_id"] is not None)
    pinned = {
        "/v1/events/": {"event_id": entries[0]["event_id"]},
        "/v1/referrals/": {"referral_id": referral_id},
    }
    failures += await asyncio.to_thread(fuzz, document, api.base, api.token, pinned)
    ids = [e["event_id"] for e in entries[:3]] + [entries[-1]["event_id"], "0" * 32]
    cases = [
        ("POST", "/v1/proofs", {"body": {"size": len(entries) - 1, "event_ids": ids}}, 200),
        (
            "GET",
            "/v1/events/{event_id}",
            {"path_parameters": pinned["/v1/events/"], "query": {"size": len(entries)}},
            200,
        ),
        # A request line over the server's limit: 400 as the document declares it.
        (
            "GET",
            "/v1/referrals/{referral_id}/timeline",
            {"path_parameters": {"referral_id": "9" * 9000}},
            400,
        ),
    ]
    failures += await asyncio.to_thread(exact, document, api.base, api.token, cases)
    assert not failures, "\n\n".join(failures)
