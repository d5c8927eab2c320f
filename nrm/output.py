"""`--json` for the commands that show or verify something: one option, one printer.

The shapes are documented in README.md ("Scripting: --json"); times are Unix seconds, keys
and kids in full (never truncated as the tables do). Each is one JSON document on standard
output, with sorted keys; errors stay one line on standard error with the exit code of
nrm/exits.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    """`--json`: the command gets `as_json: bool`."""
    return click.option(
        "--json", "as_json", is_flag=True, help="One JSON document on stdout (README: --json)."
    )(f)


def emit(doc: Any) -> None:
    click.echo(json.dumps(doc, sort_keys=True, indent=2))


def key_entry(k: Any) -> dict[str, Any]:
    """A keys.directory.KeyEntry."""
    return {
        "kid": k.kid,
        "public": k.public.hex(),
        "status": k.status,
        "valid_from": k.valid_from,
        "valid_until": k.valid_until,
        "revoked_at": k.revoked_at,
        "reason": k.reason,
    }


def agency_entry(a: Any) -> dict[str, Any]:
    """A keys.directory.AgencyEntry."""
    return {
        "agency": a.agency,
        "name": a.name,
        "roles": list(a.roles),
        "nats_key": a.nats_key,
        "signing_keys": [key_entry(k) for k in a.signing_keys],
        "encryption_keys": [key_entry(k) for k in a.encryption_keys],
    }
