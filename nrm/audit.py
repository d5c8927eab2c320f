"""Auditor commands: verify, query and export the ledger, from its HTTP API or a copy of
its database, trusting neither the ledger's operator nor the bus (issue 5)."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from broker.ledger_store import EntryRow, LedgerStore
from keys import PublicIdentity, UntrustedInputError
from keys.checkpoint import Checkpoint, ledger_origin, verify_checkpoint
from keys.directory import Directory
from keys.ledger_verify import (
    LedgerVerificationError,
    Row,
    verify_directory_history,
    verify_rows,
    verify_source,
)
from keys.restore import RestoreDeclaration, verify_restore
from runtime.tls import client_context

PAGE = 1000
#: From this many rows a database is verified by one worker process per core (below it,
#: starting them costs more than they save).
PARALLEL_FROM = 1 << 15


class Rows(Protocol):
    """Rows in index order, counted: a list, or `DatabaseRows` read as they are iterated."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Row]: ...


@dataclass
class LedgerCopy:
    """Everything an auditor downloads: rows, directory history, the latest checkpoint and
    the root chain the ledger verified (signed root files; verified again by the auditor)."""

    rows: Rows
    directories: list[tuple[int, bytes, int]]
    checkpoint_note: str
    roots: list[bytes]
    restores: list[bytes] = field(default_factory=list)  # signed declarations, oldest first


class DatabaseRows:
    """The rows of a ledger database, read from it (read-only) as they are iterated, never
    all held; by index range from any process (a `keys.ledger_verify.RowSource`: it pickles
    as its path, and each process opens its own connection)."""

    def __init__(self, path: Path, count: int) -> None:
        self.path = path
        self._count = count
        self._store: LedgerStore | None = None

    def __getstate__(self) -> tuple[Path, int]:
        return self.path, self._count

    def __setstate__(self, state: tuple[Path, int]) -> None:
        self.path, self._count = state
        self._store = None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Row]:
        return map(_as_row, self._open().iter_rows())

    def between(self, start: int | None, end: int) -> Iterator[Row]:
        return map(_as_row, self._open().rows_between(start, end))

    def first_from(self, index: int) -> int | None:
        return self._open().first_index_from(index)

    def _open(self) -> LedgerStore:
        if self._store is None:
            self._store = LedgerStore(self.path, readonly=True)
        return self._store


def _as_row(r: EntryRow) -> Row:
    return Row(r.index, r.leaf, r.directory_version, r.to_json())


def from_database(path: Path) -> LedgerCopy:
    store = LedgerStore(path, readonly=True)
    try:
        latest = store.latest_checkpoint()
        if latest is None:
            raise LedgerVerificationError(None, "the database holds no checkpoint")
        rows = DatabaseRows(path, store.size())
        roots = [data for _, data, _ in store.roots()]
        try:
            restores = [data for _, data in store.restores()]
        except sqlite3.OperationalError:  # a database from before restores existed
            restores = []
        return LedgerCopy(rows, store.directories(), latest[3], roots, restores)
    finally:
        store.close()


async def from_http(url: str, token: str, *, ca_file: Path | None = None) -> LedgerCopy:
    """Download the ledger at `url`; an https ledger's certificate is verified against
    `ca_file` if given, else the system's CAs."""
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(ssl=True if ca_file is None else client_context(ca_file))
    async with aiohttp.ClientSession(headers=headers, connector=connector) as http:

        async def get(path: str) -> Any:
            async with http.get(url.rstrip("/") + path) as r:
                if r.status != 200:
                    raise LedgerVerificationError(None, f"GET {path}: HTTP {r.status}")
                return await r.json()

        checkpoint = await get("/v1/checkpoint")
        directories = [
            (d["version"], base64.b64decode(d["data"]), d["accepted_at"])
            for d in (await get("/v1/directories"))["items"]
        ]
        rows: list[Row] = []
        while True:
            page = (await get(f"/v1/entries?start={len(rows)}"))["items"]
            rows += [
                Row(item["index"], base64.b64decode(item["leaf"]), item["directory_version"], item)
                for item in page
            ]
            if len(page) < PAGE:
                break
        roots = [base64.b64decode(r["data"]) for r in (await get("/v1/roots"))["items"]]
        served = (await get("/v1/restores"))["items"]
        restores = [base64.b64decode(d["declaration"]) for d in served]
        return LedgerCopy(rows, directories, checkpoint["note"], roots, restores)


def trusted_directories(copy: LedgerCopy, roots: Sequence[Path]) -> dict[int, Directory]:
    """Verify each directory version the ledger used against the root chain, as it stood
    when the ledger accepted it: from the auditor's pinned root (`roots[0]`), through any
    later roots the auditor gives and those the ledger serves, each step verified."""
    if not roots:
        raise ValueError("give at least the pinned root (root.1.json)")
    later = [r.read_bytes() for r in roots[1:]] + copy.roots
    return verify_directory_history(roots[0].read_bytes(), later, copy.directories)


def checkpoint_of(copy: LedgerCopy, *, identity: Path, name: str) -> Checkpoint:
    ledger = PublicIdentity.from_json(identity.read_bytes())
    try:
        return verify_checkpoint(
            copy.checkpoint_note, key=ledger.signing_key, origin=ledger_origin(name)
        )
    except UntrustedInputError as e:
        raise LedgerVerificationError(None, f"checkpoint does not verify ({e.reason})") from e


def restores_of(copy: LedgerCopy, *, identity: Path, name: str) -> list[RestoreDeclaration]:
    """Every restore declaration in the copy, each verified under the ledger's key."""
    ledger = PublicIdentity.from_json(identity.read_bytes())
    found = []
    for n, data in enumerate(copy.restores):
        try:
            found.append(verify_restore(data, key=ledger.signing_key, origin=ledger_origin(name)))
        except UntrustedInputError as e:
            raise LedgerVerificationError(
                None, f"restore declaration {n + 1} does not verify ({e.reason})"
            ) from e
    return found


def verify_with_progress(
    copy: LedgerCopy,
    *,
    directories: Mapping[int, Directory],
    checkpoint: Checkpoint,
    restores: Sequence[RestoreDeclaration] = (),
) -> int:
    """`verify_rows` over every row of `copy` with a transient progress bar (on stderr, and
    only when it is a terminal: stdout carries the result alone, `--json` included); returns
    the number of entries verified or raises LedgerVerificationError. A database's rows are
    verified by chunks, in one worker process per core once there are `PARALLEL_FROM`."""
    from rich.console import Console
    from rich.progress import Progress

    rows = copy.rows
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("verifying events", total=len(rows))

        def advance(n: int) -> None:
            progress.update(task, completed=n)

        if not isinstance(rows, DatabaseRows):
            return verify_rows(
                rows,
                directories=directories,
                checkpoint=checkpoint,
                restores=restores,
                progress=advance,
            )
        return verify_source(
            rows,
            count=len(rows),
            directories=directories,
            checkpoint=checkpoint,
            restores=restores,
            progress=advance,
            workers=_usable_cpus() if len(rows) >= PARALLEL_FROM else 1,
        )


def describe_restore(d: RestoreDeclaration) -> str:
    when = datetime.fromtimestamp(d.declared_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    before = "a lost database" if d.previous_size is None else f"{d.previous_size} entries"
    return f"restore {d.seq} declared {when}: back to {d.restored_size} entries from {before}"


def select(
    rows: Iterable[Row],
    *,
    referral: str | None,
    agency: str | None,
    kind: str | None,
    since: int | None,
    until: int | None,
) -> Iterator[dict[str, Any]]:
    for row in rows:
        c = dict(row.columns)
        c.pop("leaf", None)
        if referral is not None and c.get("referral_id") != referral:
            continue
        if agency is not None and agency not in (c.get("agency"), c.get("counterpart")):
            continue
        if kind is not None and c.get("kind") != kind:
            continue
        if since is not None and c["time"] < since:
            continue
        if until is not None and c["time"] >= until:
            continue
        yield c


FIELDS = [
    "index",
    "event_id",
    "time",
    "agency",
    "kind",
    "counterpart",
    "referral_id",
    "reason",
    "labels",
    "directory_version",
]


def render(items: Iterable[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(i, sort_keys=True) + "\n" for i in items)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for item in items:
        writer.writerow({**item, "labels": json.dumps(item.get("labels", {}), sort_keys=True)})
    return out.getvalue()


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity and cgroup cpuset, not the host's
    count: a container limited to two cores on a large host starts two workers)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
