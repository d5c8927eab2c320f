"""The agent checks the ledger instead of trusting it (issue 5, PROTOCOL.md §9).

Every few seconds: fetch the latest checkpoint and verify its signature; check that it
extends the previous one (consistency proof); for each of this agency's events not yet
confirmed (up to 256), fetch their entries and inclusion proofs in one request and verify
them against the checkpoint.
A missing event, a failed proof or checkpoints that do not extend each other raise an
alert: a log event, a counter, and a degraded /healthz.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from keys import DEFAULT_LIMITS, PublicIdentity, UntrustedInputError
from keys.checkpoint import Checkpoint, verify_checkpoint
from keys.ledger_entry import LedgerEntry
from keys.merkle import leaf_hash, verify_consistency, verify_inclusion
from runtime import clock

from .ledger_restore import LedgerRestores, RestoreVerdict
from .store import Store

log = structlog.get_logger("nrm.ledger_check")

ORIGIN_PREFIX = "nrm-exchange/ledger/v1/"


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    url: str
    token: str
    name: str
    identity: PublicIdentity
    interval_seconds: float = 2.0
    missing_after_seconds: int = 60

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path) -> LedgerSettings:
        def path(key: str) -> Path:
            p = Path(str(doc[key]))
            return p if p.is_absolute() else base / p

        return cls(
            url=str(doc["url"]).rstrip("/"),
            token=path("token_file").read_text(encoding="utf-8").strip(),
            name=str(doc["name"]),
            identity=PublicIdentity.from_json(path("identity").read_bytes()),
            interval_seconds=float(doc.get("interval_seconds", 2.0)),
            missing_after_seconds=int(doc.get("missing_after_seconds", 60)),
        )


@dataclass
class LedgerWatch:
    settings: LedgerSettings
    store: Store
    agency: str
    checkpoint: Checkpoint | None = None
    alerts: int = 0
    last_alert: str | None = None
    confirmed: int = 0
    on_alert: Callable[[str], None] = lambda reason: None
    #: Events confirmed per round (one proof request): Limits.ledger_proof_batch.
    batch: int = DEFAULT_LIMITS.ledger_proof_batch
    _alerted: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.log = log.bind(agency=self.agency)
        s = self.settings
        self.restores = LedgerRestores(
            url=s.url,
            origin=ORIGIN_PREFIX + s.name,
            key=s.identity.signing_key,
            store=self.store,
            agency=self.agency,
        )

    def health(self) -> dict[str, Any]:
        return {
            "status": "alert" if self.alerts else "ok",
            "alerts": self.alerts,
            "last_alert": self.last_alert,
            "checkpoint_size": None if self.checkpoint is None else self.checkpoint.size,
            "events_confirmed": self.confirmed,
        }

    def _alert(self, reason: str, **ids: Any) -> None:
        self.alerts += 1
        self.last_alert = reason
        self.on_alert(reason)
        self.log.error("ledger_alert", reason=reason, **ids)

    async def run(self, running: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {self.settings.token}"}
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
            while running.is_set():
                try:
                    await self.check(http)
                except (aiohttp.ClientError, TimeoutError) as e:
                    self.log.warning("ledger_unreachable", error=type(e).__name__)
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    # An answer of the wrong shape: the ledger is not doing its job.
                    self._alert("bad-ledger-answer", error=type(e).__name__)
                await asyncio.sleep(self.settings.interval_seconds)

    async def check(self, http: aiohttp.ClientSession) -> None:
        s = self.settings
        async with http.get(f"{s.url}/v1/checkpoint") as r:
            if r.status == 404:
                return
            r.raise_for_status()
            note = (await r.json())["note"]
        try:
            cp = verify_checkpoint(
                note, key_name=s.name, key=s.identity.signing_key, origin=ORIGIN_PREFIX + s.name
            )
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
                    self._alert_once("missing-event", event_id)
                continue
            index = item.get("index")
            if type(index) is not int or index < 0:
                self._alert_once("bad-inclusion-proof", event_id)
                continue
            if index >= cp.size:
                continue  # appended after this checkpoint: next round
            try:
                leaf = base64.b64decode(item["leaf"], validate=True)
                entry = LedgerEntry.decode(leaf)
                if entry.signed_event != event or entry.index != index:
                    self._alert_once("altered-event", event_id, index=index)
                    continue
                verify_inclusion(
                    leaf_hash=leaf_hash(leaf),
                    index=index,
                    size=cp.size,
                    proof=[bytes.fromhex(h) for h in item.get("proof", ())],
                    root=cp.root,
                )
            except (UntrustedInputError, KeyError, TypeError, ValueError):  # binascii.Error too
                self._alert_once("bad-inclusion-proof", event_id, index=index)
                continue
            confirmed.append((event_id, index))
            self._alerted.discard(event_id)
        self.store.mark_audit_included(confirmed)
        self.confirmed += len(confirmed)

    def _alert_once(self, reason: str, event_id: str, **ids: Any) -> None:
        """Alert about one event once, not on every round it stays unconfirmed."""
        if event_id not in self._alerted:
            self._alerted.add(event_id)
            self._alert(reason, event_id=event_id, **ids)
