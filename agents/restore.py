"""Putting an agent database back from a backup (`nrm agent restore`, docs/RUNBOOK.md
"Restore an agent").

With the agent stopped: the backup is copied (SQLite's online backup, 0600) beside the
database, marked as restored — so that on its next start the agent sends every other agency a
resend request (agents/resend.py) — and put in place; the replaced database files are kept,
renamed, never deleted.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from keys import UntrustedInputError
from keys.audit import decode_signed_event
from runtime.durability import SUFFIXES, backup, install

from .config import AgentConfig
from .store import Store


class AgentRestoreError(ValueError):
    """The restore was refused; nothing was changed."""


@dataclass(frozen=True, slots=True)
class AgentRestoreResult:
    kept: Path | None  # where the replaced database now is


def restore_agent(config: AgentConfig, source: Path, *, stamp: int) -> AgentRestoreResult:
    """Install the backup `source` as the agent database of `config`. `stamp` (Unix
    seconds) names the kept copy of the replaced database. Raises `AgentRestoreError`."""
    database = config.database
    if not source.is_file():
        raise AgentRestoreError(f"{source} is not a file")
    if database.exists() and source.resolve() == database.resolve():
        raise AgentRestoreError("the backup is the agent database itself")
    if _listening(config.api_host, config.api_port):
        raise AgentRestoreError(
            f"something answers on {config.api_host}:{config.api_port}: stop the agent first"
        )
    if not Store.is_agent_database(source):
        raise AgentRestoreError(f"{source} is not an agent database")
    staged = database.with_name(f"{database.name}.restoring")
    for suffix in SUFFIXES:
        Path(f"{staged}{suffix}").unlink(missing_ok=True)
    backup(source, staged)
    try:
        store = Store(staged, agency=config.agency)
        try:
            _check_owner(store, config.agency)
            store.record_agent_restore()
            store.checkpoint_wal()
        finally:
            store.close()
    except BaseException:
        for suffix in SUFFIXES:
            Path(f"{staged}{suffix}").unlink(missing_ok=True)
        raise
    kept = database.with_name(f"{database.name}.before-restore-{stamp}")
    present = install(staged, database, kept=kept)
    return AgentRestoreResult(kept=kept if present else None)


def _check_owner(store: Store, agency: str) -> None:
    """Refuse another agency's backup: its audit events name the agency that signed them."""
    event = store.last_audit_event()
    if event is None:
        return
    try:
        owner = decode_signed_event(event)[0].agency
    except UntrustedInputError as e:
        raise AgentRestoreError("the backup's audit events do not decode") from e
    if owner != agency:
        raise AgentRestoreError(f"the backup is {owner}'s agent database, not {agency}'s")


def _listening(host: str, port: int) -> bool:
    if port == 0:
        return False  # an ephemeral port: nothing to probe
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
