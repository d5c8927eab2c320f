"""docs/PROTOCOL.md is held to the code where it copies a table from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from agents.referral import ROLE_CATEGORIES
from broker.authz import (
    agency_permissions,
    auditor_permissions,
    auditor_reply_prefix,
    operator_permissions,
)
from broker.ledger_http import AGENCY_ROUTES
from broker.ledger_http import OPENAPI as LEDGER_OPENAPI
from keys import DEFAULT_LIMITS
from keys.audit import KINDS
from runtime.jetstream import inbox_consumer_config

PROTOCOL = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text("utf-8")


def _table_after(heading: str) -> list[list[str]]:
    """The cells of the first Markdown table whose header row starts with `heading`."""
    lines = PROTOCOL.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_role_categories_table_is_the_code() -> None:
    """§8.2's table lists exactly the roles of ROLE_CATEGORIES, each with exactly its
    categories: a sender minimising from the document sends what the code would."""
    table = {
        role.strip("`"): frozenset() if cats == "(none)" else frozenset(cats.split(", "))
        for role, cats in _table_after("| role | categories it may receive")
    }
    assert table == dict(ROLE_CATEGORIES)


def test_audit_event_kinds_are_the_code() -> None:
    """§9.0 names exactly the event kinds the decoder accepts, in its field table and in the
    table of what each kind carries."""
    field_row = next(line for line in PROTOCOL.splitlines() if line.startswith("| 3 | kind |"))
    assert frozenset(re.findall(r"`([a-z-]+\.[a-z]+)`", field_row)) == KINDS
    carried = _table_after("| kind | referral_id | counterpart |")
    named = {k for row in carried for k in re.findall(r"`([a-z-]+\.[a-z]+)`", row[0])}
    assert named == KINDS


def test_ledger_api_table_is_the_openapi_document() -> None:
    """§9.0's ledger HTTP API table names every /v1 operation of the ledger's OpenAPI
    document, each with exactly the problem statuses (besides 401 and 403, which every one
    answers) the document declares."""
    rows = _table_after("| request | answer (200) | errors |")
    named: set[tuple[str, str]] = set()
    for request, _, errors in rows:
        operations = {
            (method.lower(), re.sub(r"\{[^}]*\}", "{}", path))
            for method, path in re.findall(r"`(GET|POST) (/v1/[^?` ]+)", request)
        }
        documented = {
            code
            for path, item in LEDGER_OPENAPI["paths"].items()
            for method, op in item.items()
            if (method, re.sub(r"\{[^}]*\}", "{}", path)) in operations
            for code in op["responses"]
            if code not in ("200", "401", "403")
        }
        assert set(re.findall(r"\b[1-5][0-9]{2}\b", errors)) == documented, request
        named |= operations
    assert named == {
        (method, re.sub(r"\{[^}]*\}", "{}", path))
        for path, item in LEDGER_OPENAPI["paths"].items()
        if path.startswith("/v1/")
        for method in item
    }


def test_ledger_token_scopes_are_the_code() -> None:
    """§9.0's scope table names exactly the routes an agency's token reads."""
    scopes = {scope: reads for scope, reads in _table_after("| token scope | reads |")}
    assert set(scopes) == {"`auditor`", "`agency:<id>`", "`metrics`", "`rapporteur`"}
    named = set(re.findall(r"`(?:GET|POST) (/v1/[^` ]+)`", scopes["`agency:<id>`"]))
    reads, refused = named & AGENCY_ROUTES, named - AGENCY_ROUTES
    assert reads == AGENCY_ROUTES
    assert refused == {"/v1/entries", "/v1/events", "/v1/stats"}


def consumer_parameters(agency: str) -> dict[str, object]:
    """§5's consumer table for `agency`, as the JSON `config` of a create request."""
    return {
        name.strip("`"): json.loads(value.split("`")[1].replace("<A>", agency))
        for name, value in _table_after("| consumer parameter | value |")
    }


def test_consumer_parameters_are_the_agents() -> None:
    """§5's consumer table is member for member what agents/transport.py asks for (nats-py's
    zero `idle_heartbeat` and `inactive_threshold` are its way of sending none)."""
    built = inbox_consumer_config("police", DEFAULT_LIMITS).as_dict()
    assert built.pop("idle_heartbeat") == 0 and built.pop("inactive_threshold") == 0
    assert consumer_parameters("police") == built


def _subjects(cell: str, agency: str, others: list[str]) -> list[str]:
    """The backticked subjects of a table cell, `<A>` as `agency`; one with `<B>` once for
    each of `others`."""
    out = []
    for subject in re.findall(r"`([^`]+)`", cell.replace("<A>", agency)):
        out += [subject.replace("<B>", b) for b in others] if "<B>" in subject else [subject]
    return out


def test_agency_permissions_table_is_the_generated_authorization() -> None:
    """§5.1's tables of what agency A may publish to and is denied are exactly the lists
    broker/authz.py generates: the allow list subject for subject (`<B>` standing for every
    agency of the directory), and the explicit denies (the rows naming subjects of A's
    alone; the others explain what the allow list leaves out)."""
    agency, readable = "police", ["coordinator", "police", "shelter"]
    allow, deny, sub_allow, sub_deny = agency_permissions(agency, readable=readable)
    granted = [
        subject
        for cell, _ in _table_after("| agency A may publish to | for |")
        for subject in _subjects(cell, agency, readable)
    ]
    assert sorted(granted) == sorted(allow) and len(granted) == len(set(granted))
    denied = [cell for cell, _ in _table_after("| agency A is denied | why |")]
    explicit = [c for c in denied if c.startswith(("publish `", "subscribe `")) and "<B>" not in c]
    publish = [s for c in explicit if c.startswith("publish") for s in _subjects(c, agency, [])]
    assert publish == deny
    subscribe = [s for c in explicit if c.startswith("subscribe") for s in _subjects(c, agency, [])]
    assert subscribe == sub_deny
    assert sub_allow == [f"_nrm_inbox.{agency}.>"]  # the reply prefix of the user table


def test_auditor_and_operator_permissions_are_the_generated_authorization() -> None:
    """§5.1's auditor and operator rows name exactly their generated lists."""
    rows = {row[0]: row[1:] for row in _table_after("| user | publish | subscribe |")}
    nkey = "U" + "A" * 55

    def lists(cell: str) -> tuple[list[str], list[str]]:
        allowed, _, denied = cell.partition("; denied ")
        fix = {"_nrm_inbox.auditor-<k>.>": f"{auditor_reply_prefix(nkey)}.>"}
        return (
            [fix.get(s, s) for s in re.findall(r"`([^`]+)`", allowed)],
            re.findall(r"`([^`]+)`", denied),
        )

    pub, sub = rows["auditor"]
    assert (*lists(pub), *lists(sub)) == auditor_permissions(nkey)
    pub, sub = rows["operator"]
    assert (*lists(pub), *lists(sub)) == operator_permissions()
