"""The agent checks the ledger instead of trusting it (issue 5, PROTOCOL.md §9).

Every few seconds: fetch the latest checkpoint and verify its signature; check that it
extends the previous one (consistency proof); for each of this agency's events not yet
confirmed (up to 256), fetch their entries and inclusion proofs in one request and verify
them against the checkpoint.
A missing event, a failed proof or checkpoints that do not extend each other raise an
alert: a log event, a counter, a row in the agent's database (`ledger_alerts`) and a degraded
/healthz until an administrator acknowledges it (`nrm agent ack-alert`); acknowledged alerts
survive restarts, and new ones still raise. A missing event whose signature the trusted
directory itself refuses (its key revoked at the event's time or by now, or no longer listed)
is raised as `revoked-signer` rather than `missing-event`: the ledger was right to refuse it.

While the bus refuses this agency's credentials (it was perhaps removed from the directory),
the watch also fetches the directory the ledger holds (GET /v1/directories) and offers the
newest to the agent, which verifies it from its pinned root like any other: the ledger is a
second way to learn why, never a source of trust.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from keys import DEFAULT_LIMITS, PublicIdentity, UntrustedInputError
from keys.audit import decode_signed_event
from keys.checkpoint import Checkpoint, ledger_origin, verify_checkpoint
from keys.directory import Directory
from keys.errors import MalformedError, RetiredKeyError, RevokedKeyError, UnknownKeyError
from keys.ledger_entry import LedgerEntry
from keys.merkle import leaf_hash, verify_consistency, verify_inclusion
from keys.subjects import DIRECTORY_KEY
from runtime import clock
from runtime.tls import client_context

from .ledger_restore import LedgerRestores, RestoreVerdict
from .store import Store

log = structlog.get_logger("nrm.ledger_check")

#: Every reason an alert can have (docs/RUNBOOK.md explains each).
ALERT_REASONS = frozenset(
    {
        "missing-event",
        "revoked-signer",
        "bad-inclusion-proof",
        "altered-event",
        "inconsistent-checkpoints",
        "checkpoint-rolled-back",
        "bad-checkpoint-signature",
        "bad-ledger-answer",
        "restore-unproven",
    }
)
#: How often, at most, the directory is fetched from the ledger while the bus refuses us.
DIRECTORY_FETCH_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    url: str
    token: str
    name: str
    identity: PublicIdentity
    interval_seconds: float = 2.0
    missing_after_seconds: int = 60
    #: The CA that signs an https ledger's certificate (else the system's CAs).
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        ledger_origin(self.name)  # a DNS-like name (PROTOCOL.md §9.3), else a ValueError

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What the ledger's certificate is verified with (True: the system's CAs)."""
        return True if self.ca_file is None else client_context(self.ca_file)

    @property
    def origin(self) -> str:
        """The ledger's checkpoint origin and key name, `<name>/nrm-ledger`."""
        return ledger_origin(self.name)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path) -> LedgerSettings:
        def path(key: str) -> Path:
            p = Path(str(doc[key]))
            return p if p.is_absolute() else base / p

        url = str(doc["url"]).rstrip("/")
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise ValueError("ledger.url must be an http:// or https:// URL")
        if "ca_file" in doc and scheme != "https":
            raise ValueError("ledger.ca_file goes with an https:// ledger.url")
        settings = cls(
            url=url,
            token=path("token_file").read_text(encoding="utf-8").strip(),
            name=str(doc["name"]),
            identity=PublicIdentity.from_json(path("identity").read_bytes()),
            interval_seconds=float(doc.get("interval_seconds", 2.0)),
            missing_after_seconds=int(doc.get("missing_after_seconds", 60)),
            ca_file=path("ca_file") if "ca_file" in doc else None,
        )
        settings.ssl_context()  # a CA file that cannot be read is named at once
        return settings


async def _offer_nowhere(key: str, value: bytes) -> None:
    """The default `offer_directory`: nobody to offer it to."""


def proved_entry(item: Mapping[str, Any], cp: Checkpoint) -> LedgerEntry:
    """The entry of one proved item of a ledger answer (POST /v1/proofs, GET /v1/accesses
    with a size) once its leaf is verified inside checkpoint `cp` at the item's index;
    else UntrustedInputError (KeyError, TypeError, ValueError: an item of the wrong
    shape)."""
    index = item["index"]
    if type(index) is not int or not 0 <= index < cp.size:
        raise MalformedError("a proved entry's index must lie inside the checkpoint")
    leaf = base64.b64decode(item["leaf"], validate=True)
    entry = LedgerEntry.decode(leaf)
    if entry.index != index:
        raise MalformedError("a ledger entry must hold the index it is served at")
    verify_inclusion(
        leaf_hash=leaf_hash(leaf),
        index=index,
        size=cp.size,
        proof=[bytes.fromhex(h) for h in item.get("proof", ())],
        root=cp.root,
    )
    return entry


@dataclass
class LedgerWatch:
    settings: LedgerSettings
    store: Store
    agency: str
    checkpoint: Checkpoint | None = None
    confirmed: int = 0
    on_alert: Callable[[str], None] = lambda reason: None
    #: Events confirmed per round (one proof request): Limits.ledger_proof_batch.
    batch: int = DEFAULT_LIMITS.ledger_proof_batch
    #: The directory the agent trusts (to recognise events it no longer accepts itself).
    directory: Callable[[], Directory | None] = lambda: None
    #: Whether the agent needs the directory from the ledger (the bus refuses it), and
    #: where to offer it (the agent's on_directory, which verifies it).
    directory_wanted: Callable[[], bool] = lambda: False
    offer_directory: Callable[[str, bytes], Awaitable[None]] = _offer_nowhere
    _next_directory_fetch: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.log = log.bind(agency=self.agency)
        s = self.settings
        self.restores = LedgerRestores(
            url=s.url,
            origin=s.origin,
            key=s.identity.signing_key,
            store=self.store,
            agency=self.agency,
        )

    @property
    def alerts(self) -> int:
        """Alerts raised and not acknowledged (kept in the agent's database)."""
        return self.store.open_alerts()[0]

    @property
    def last_alert(self) -> str | None:
        return self.store.open_alerts()[1]

    def health(self) -> dict[str, Any]:
        alerts, last = self.store.open_alerts()
        return {
            "status": "alert" if alerts else "ok",
            "alerts": alerts,
            "last_alert": last,
            "checkpoint_size": None if self.checkpoint is None else self.checkpoint.size,
            "events_confirmed": self.confirmed,
        }

    def alert(self, reason: str, **ids: Any) -> None:
        """Raise an alert about a ledger answer checked outside the watch's rounds (the
        proofs of a subject access report, agents/subject_access.py)."""
        self._alert(reason, **ids)

    def _alert(self, reason: str, event_id: str | None = None, **ids: Any) -> None:
        self.store.raise_alert(reason, event_id)
        self.on_alert(reason)
        if event_id is not None:
            ids["event_id"] = event_id
        self.log.error("ledger_alert", reason=reason, **ids)

    async def run(self, running: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {self.settings.token}"}
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(ssl=self.settings.ssl_context())
        async with aiohttp.ClientSession(
            headers=headers, timeout=timeout, connector=connector
        ) as http:
            while running.is_set():
                try:
                    await self.check(http)
                except (aiohttp.ClientError, TimeoutError) as e:
                    self.log.warning("ledger_unreachable", error=type(e).__name__)
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    # An answer of the wrong shape: the ledger is not doing its job.
                    self._alert("bad-ledger-answer", error=type(e).__name__)
                if self.directory_wanted() and time.monotonic() >= self._next_directory_fetch:
                    self._next_directory_fetch = time.monotonic() + DIRECTORY_FETCH_SECONDS
                    try:
                        await self.fetch_directory(http)
                    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
                        self.log.warning("ledger_directory_unavailable")
                await asyncio.sleep(self.settings.interval_seconds)

    async def fetch_directory(self, http: aiohttp.ClientSession) -> None:
        """Offer the newest directory the ledger holds to the agent (which verifies it)."""
        async with http.get(f"{self.settings.url}/v1/directories") as r:
            r.raise_for_status()
            items = (await r.json())["items"]
        trusted = self.directory()
        if items:
            newest = max(items, key=lambda item: int(item["version"]))
            if trusted is not None and int(newest["version"]) <= trusted.version:
                return  # nothing newer: an older copy would only be refused as rolled back
            data = base64.b64decode(newest["data"], validate=True)
            self.log.info("ledger_directory_offered", directory_version=int(newest["version"]))
            await self.offer_directory(DIRECTORY_KEY, data)

    async def check(self, http: aiohttp.ClientSession) -> None:
        s = self.settings
        async with http.get(f"{s.url}/v1/checkpoint") as r:
            if r.status == 404:
                return
            r.raise_for_status()
            note = (await r.json())["note"]
        try:
            cp = verify_checkpoint(note, key=s.identity.signing_key, origin=s.origin)
        except UntrustedInputError as e:
            self._alert("bad-checkpoint-signature", detail=e.reason)
            return
        previous = self.checkpoint
        if previous is None:
            await self.restores.catch_up(http)
        elif cp.size < previous.size:
            if not await self._declared(http, previous, cp):
                self._alert("checkpoint-rolled-back", size=cp.size, previous=previous.size)
                return
            previous = None
        if previous is not None and cp.size > previous.size:
            url = f"{s.url}/v1/proof/consistency?first={previous.size}&second={cp.size}"
            async with http.get(url) as r:
                r.raise_for_status()
                proof = [bytes.fromhex(h) for h in (await r.json())["proof"]]
            try:
                verify_consistency(
                    first=previous.size,
                    second=cp.size,
                    first_root=previous.root,
                    second_root=cp.root,
                    proof=proof,
                )
            except UntrustedInputError:
                if not await self._declared(http, previous, cp):
                    self._alert("inconsistent-checkpoints", first=previous.size, second=cp.size)
                    return
        elif (
            previous is not None
            and cp.root != previous.root
            and not await self._declared(http, previous, cp)
        ):
            self._alert("inconsistent-checkpoints", first=previous.size, second=cp.size)
            return
        self.checkpoint = cp
        await self._confirm_own_events(http, cp)

    async def _declared(
        self, http: aiohttp.ClientSession, previous: Checkpoint, cp: Checkpoint
    ) -> bool:
        """Whether a restore declaration covers this rollback (agents/ledger_restore.py)."""
        verdict = await self.restores.judge(http, previous=previous, current=cp)
        if verdict is RestoreVerdict.UNPROVEN:
            self._alert("restore-unproven", size=cp.size, previous=previous.size)
        return verdict is not RestoreVerdict.NOT_COVERED

    async def _confirm_own_events(self, http: aiohttp.ClientSession, cp: Checkpoint) -> None:
        """Fetch, in one request, the entries and inclusion proofs of this agency's events not
        yet confirmed, and verify each against the checkpoint."""
        s = self.settings
        pending = self.store.unconfirmed_audit(self.batch)
        if not pending:
            return
        query = {"size": cp.size, "event_ids": [event_id for event_id, _, _ in pending]}
        async with http.post(f"{s.url}/v1/proofs", json=query) as r:
            r.raise_for_status()
            answer = await r.json()
        found = {
            item["event_id"]: item
            for item in answer["items"]
            if isinstance(item, dict) and isinstance(item.get("event_id"), str)
        }
        now = clock.now()
        reoffered = self.restores.reoffered_since()
        confirmed: list[tuple[str, int]] = []
        for n, (event_id, event, created) in enumerate(pending):
            if n % 32 == 31:
                await asyncio.sleep(0)  # let requests and messages in between proofs
            item = found.get(event_id)
            if item is None:
                if now - max(created, reoffered) > s.missing_after_seconds:
                    self._alert_once(self._missing_reason(event), event_id)
                continue
            index = item.get("index")
            if type(index) is not int or index < 0:
                self._alert_once("bad-inclusion-proof", event_id)
                continue
            if index >= cp.size:
                continue  # appended after this checkpoint: next round
            try:
                entry = proved_entry(item, cp)
            except (UntrustedInputError, KeyError, TypeError, ValueError):  # binascii.Error too
                self._alert_once("bad-inclusion-proof", event_id, index=index)
                continue
            if entry.signed_event != event:
                self._alert_once("altered-event", event_id, index=index)
                continue
            confirmed.append((event_id, index))
        self.store.mark_audit_included(confirmed)
        self.confirmed += len(confirmed)

    def _missing_reason(self, event: bytes) -> str:
        """`revoked-signer` if the trusted directory refuses the event's own signature at its
        time (revoked or unlisted key, removed agency) or its key is revoked by now, else
        `missing-event`.

        The ledger also refuses an event the bus stored at or after its key's revocation,
        whatever its time (PROTOCOL.md §9.0): one signed before the revocation and published
        after it (the outbox held it through an outage). The outbox does not record when the
        bus stored an event, so any missing event of a key revoked by now counts as
        `revoked-signer`. The cost: one the ledger took before the revocation and then lost
        is told as `revoked-signer`, not `missing-event`; it is still an alert, and once a key
        is revoked whatever it signed is in doubt anyway."""
        directory = self.directory()
        if directory is None:
            return "missing-event"
        try:
            ev, kid, _, _ = decode_signed_event(event)
            directory.signing_key(ev.agency, kid, at=ev.time)
            directory.check_not_revoked(ev.agency, kid, at=clock.now())
        except (RevokedKeyError, UnknownKeyError, RetiredKeyError):
            return "revoked-signer"
        except UntrustedInputError:
            return "missing-event"
        return "missing-event"

    def _alert_once(self, reason: str, event_id: str, **ids: Any) -> None:
        """Alert about one event once (even across restarts, and once acknowledged), not on
        every round it stays unconfirmed."""
        if not self.store.alerted(event_id):
            self._alert(reason, event_id=event_id, **ids)
