"""docs/PROTOCOL.md is held to the code where it copies a table from it."""

from __future__ import annotations

import re
from pathlib import Path

from agents.referral import ROLE_CATEGORIES
from broker.ledger_http import OPENAPI as LEDGER_OPENAPI
from keys.audit import KINDS

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
    assert frozenset(re.findall(r"`([a-z]+\.[a-z]+)`", field_row)) == KINDS
    carried = _table_after("| kind | referral_id | counterpart |")
    named = {k for row in carried for k in re.findall(r"`([a-z]+\.[a-z]+)`", row[0])}
    assert named == KINDS


def test_ledger_api_table_is_the_openapi_document() -> None:
    """§9.0's ledger HTTP API table names every /v1 operation of the ledger's OpenAPI
    document, each with exactly the problem statuses (besides 401) the document declares."""
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
            if code not in ("200", "401")
        }
        assert set(re.findall(r"\b[1-5][0-9]{2}\b", errors)) == documented, request
        named |= operations
    assert named == {
        (method, re.sub(r"\{[^}]*\}", "{}", path))
        for path, item in LEDGER_OPENAPI["paths"].items()
        if path.startswith("/v1/")
        for method in item
    }
