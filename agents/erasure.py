"""Erasure that leaves no recoverable byte (issue 11; docs/DESIGN.md "Erasure").

The desk commits an erasure (agents/storage/erasure.py) in the transaction that takes the
withdrawal in, and queues the confirmation instead of sending it. This loop then makes the
commit durable, checkpoints the WAL in full and truncates it (retrying until no reader
holds it up) — `PRAGMA secure_delete=ON` has already zeroed the freed space in the
database file — and only then seals and queues each confirmation. At the sender the same
loop truncates the WAL after a withdrawal dropped envelopes; the attachment loop deletes
the objects (agents/attachments.py). Both queues are tables, so a crash anywhere resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable

import structlog

from keys import UntrustedInputError
from keys.codec import canonical_json

from .desk import Sender
from .errors import DomainError
from .messages import ERASURE_CONFIRMATION
from .store import Store

log = structlog.get_logger("nrm.erasure")

#: Confirmations sealed per round.
BATCH = 16
#: How long the loop sleeps when nothing wakes it.
IDLE_SECONDS = 1.0


class Eraser:
    """Owns the erasure tables and the loop that finishes erasures."""

    def __init__(self, *, store: Store, send: Sender, agency: str) -> None:
        self.store = store
        self.send = send
        self.log = log.bind(agency=agency)
        self._wake = asyncio.Event()
        #: A WAL truncation is due (set at start: a crash may have come between).
        self._dirty = True
        self.truncations = 0

    def erased(self) -> None:
        """Call after committing an erasure or a withdrawal that dropped envelopes."""
        self._dirty = True
        self._wake.set()

    async def run(self, running: Callable[[], bool], on_sent: Callable[[], None]) -> None:
        """Until `running()` is false: truncate the WAL when due, then send confirmations.
        A failed step is logged and tried again; cancellation is re-raised."""
        while running():
            try:
                await self.step(on_sent)
            except (sqlite3.Error, OSError, UntrustedInputError, DomainError) as e:
                self.log.error("erasure_step_failed", error=type(e).__name__)
            self._wake.clear()
            if self._dirty or self.store.pending_confirmations(1):
                await asyncio.sleep(IDLE_SECONDS)  # a step failed: back off, then retry
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=IDLE_SECONDS)

    async def step(self, on_sent: Callable[[], None]) -> int:
        """One round; how many confirmations were queued for sending."""
        pending = self.store.pending_confirmations(BATCH)
        if not self._dirty and not pending:
            return 0
        self._dirty = False
        try:
            await self.store.truncate_wal()
        except BaseException:
            self._dirty = True
            raise
        self.truncations += 1
        for c in pending:
            body = canonical_json(
                {
                    "receipt_id": c.receipt_id,
                    "referral_ids": list(c.referral_ids),
                    "erased_at": c.erased_at,
                }
            )
            try:
                with self.store.transaction() as db:
                    self.send(ERASURE_CONFIRMATION, body, [c.sender], db)
                    self.store.confirmation_sent(db, c.receipt_id, c.sender)
            except UntrustedInputError as e:
                # The withdrawing agency can no longer be sealed to (removed, keys revoked):
                # the erasure stands; only its confirmation cannot go. Drop it rather than
                # hold back every other agency's confirmation behind it.
                with self.store.transaction() as db:
                    self.store.confirmation_sent(db, c.receipt_id, c.sender)
                self.log.warning(
                    "erasure_confirmation_unsendable",
                    receipt_id=c.receipt_id,
                    counterpart=c.sender,
                    reason=e.reason,
                )
                continue
            self.log.info(
                "erasure_confirmation_queued", receipt_id=c.receipt_id, counterpart=c.sender
            )
        if pending:
            on_sent()
        return len(pending)
