"""docs/PROTOCOL.md is held to the code where it copies a table from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from agents.referral import ROLE_CATEGORIES
from agents.transport import inbox_consumer_config
from keys import DEFAULT_LIMITS
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
