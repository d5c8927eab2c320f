"""The instance lease: at most one agent process consumes an agency's inbox.

docs/PROTOCOL.md §5.2. A lease value is `<instance>.<run>`: the instance id is drawn once
per agent installation and kept beside its database (a copy of the key folder is another
instance), the run id is drawn at each process start. A process holds the lease when the
presence bucket's key `<agency>` names its run: it creates the key if there is none
(`Nats-Expected-Last-Subject-Sequence: 0`) and renews it every quarter of the bucket's TTL
with a compare-and-set on the revision it last wrote; a clean stop deletes it. Only the bus's
clock times a lease out: the bucket's `max_age` removes a value that was not renewed, so a
holder killed with kill -9 loses its lease one TTL after its last renewal and any successor
can create it. A restart of the same installation takes its own earlier run's lease over at
once (compare-and-set on that revision) instead of waiting.

A process that finds another instance's lease, or whose compare-and-set fails because
someone else wrote, does not consume; it reports `duplicate-instance` (health, metric, one
log line per change) and keeps trying, so it takes over once the other lease lapses. A holder
that has not renewed for TTL minus one renewal interval stops consuming by itself, before the
bus can hand the lease to anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from keys.subjects import PRESENCE_BUCKET, presence_key
from runtime.files import write_new_file

log = structlog.get_logger("nrm.presence")

#: An instance or run id: 32 lowercase hex characters.
ID = re.compile(r"^[0-9a-f]{32}$")
#: A lease value: `<instance>.<run>`, ASCII.
LEASE_VALUE = re.compile(rb"^([0-9a-f]{32})\.([0-9a-f]{32})$")
#: Lease states, as /healthz shows them.
ACQUIRING = "acquiring"
HELD = "held"
DUPLICATE = "duplicate-instance"
RENEWING = "renewing"
#: Renewals per TTL.
RENEWALS_PER_TTL = 4
#: How long to wait before asking again when the bus is not answering.
RETRY_SECONDS = 1.0

TRANSIENT = (nats.errors.Error, TimeoutError, OSError, ConnectionError)


def new_id() -> str:
    """A fresh random instance or run id (128 bits)."""
    return secrets.token_hex(16)


def instance_id(path: Path) -> str:
    """The installation's instance id kept in `path` (created on first use, 0600)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):  # another process made it first
            write_new_file(path, (new_id() + "\n").encode("ascii"))
        text = path.read_text(encoding="ascii").strip()
    if not ID.fullmatch(text):
        raise ValueError(f"{path} does not hold an instance id (32 lowercase hex characters)")
    return text


class Presence:
    """One agent process's lease on its agency's inbox."""

    def __init__(
        self,
        *,
        agency: str,
        instance: str,
        on_change: Callable[[str], None] = lambda state: None,
    ) -> None:
        if not ID.fullmatch(instance):
            raise ValueError("an instance id is 32 lowercase hex characters")
        self.agency = agency
        self.instance = instance
        self.run_id = new_id()
        self.on_change = on_change
        #: Set by the owner before a clean stop: the lease is then given up, not left to lapse.
        self.releasing = False
        self.state = ACQUIRING
        #: The instance id that holds the lease when this one does not (None if unreadable).
        self.holder: str | None = None
        self.log = log.bind(agency=agency, instance=self.instance, run=self.run_id)
        self._key = presence_key(agency)
        self._revision: int | None = None
        self._sent_at = 0.0  # monotonic time just before the write that made _revision
        self._ttl: float | None = None
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._was_held = False  # held at some point by this run

    @property
    def held(self) -> bool:
        """True while this instance may consume: it holds the lease and renewed it recently
        enough that the bus cannot have timed it out yet."""
        if self._revision is None or self._ttl is None:
            return False
        return time.monotonic() < self._sent_at + self._ttl - self._ttl / RENEWALS_PER_TTL

    def wake(self) -> None:
        """End the loops' current waits at once: the owner calls it when `running()` has
        turned false, so that stopping does not wait for the next renewal."""
        self._wake.set()
        self._changed.set()

    async def wait_held(self, running: Callable[[], bool]) -> bool:
        """Wait until this instance holds the lease (True) or `running()` turns false."""
        while running():
            if self.held:
                return True
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=RETRY_SECONDS)
        return False

    def health(self) -> dict[str, Any]:
        state = self.state
        if state == HELD and not self.held:
            state = RENEWING  # not consuming until a renewal gets through
        out: dict[str, Any] = {"id": self.instance, "run": self.run_id, "lease": state}
        if self.state == DUPLICATE:
            out["holder"] = self.holder
        return out

    async def run(self, js: JetStreamContext, running: Callable[[], bool]) -> None:
        """Acquire and renew the lease until `running()` turns false."""
        kv: KeyValue | None = None
        missing = False
        while running():
            try:
                if kv is None:
                    kv = await js.key_value(PRESENCE_BUCKET)
                    status = await kv.status()
                    ttl = status.ttl
                    if not ttl or ttl <= 0:
                        raise nats.errors.Error("the presence bucket has no TTL")
                    self._ttl = float(ttl)
                await self.step(kv)
            except nats.js.errors.BucketNotFoundError:
                kv = None
                if not missing:  # once: the bus was provisioned by an older version
                    self.log.error("presence_bucket_missing", bucket=PRESENCE_BUCKET)
                missing = True
            except TRANSIENT as e:
                _raise_if_cancelled()
                self.log.warning("lease_unavailable", error=type(e).__name__)
            self._changed.set()
            # Until the next round; the owner's wake() on stopping ends it at once (the
            # stop signal itself is `running()`, checked after the event is cleared).
            self._wake.clear()
            if running():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._interval())
                # Python 3.11's wait_for can swallow a cancel that arrives with its timeout:
                # looked at here too, or the loop would go on (a stop that never ends).
                _raise_if_cancelled()
        # Cancelled rather than stopped (the owner cuts its loops short while the link is
        # down): no release, the lease lapses by itself. Python 3.11's wait_for can swallow a
        # cancel that arrives with the wake-up, so the request is looked at here.
        _raise_if_cancelled()
        if self.releasing and kv is not None and self._revision is not None:
            try:
                await kv.delete(self._key, last=self._revision)
            except (nats.js.errors.KeyWrongLastSequenceError, *TRANSIENT):
                pass  # no longer ours, or the bus is away: it lapses by itself
            else:
                self.log.info("instance_lease_released")
            self._revision = None

    def _interval(self) -> float:
        return RETRY_SECONDS if self._ttl is None else self._ttl / RENEWALS_PER_TTL

    async def step(self, kv: KeyValue) -> None:
        """One round: renew the lease if held, else try to take it."""
        value = f"{self.instance}.{self.run_id}".encode("ascii")
        sent_at = time.monotonic()
        if self._revision is not None:
            try:
                self._revision = await kv.update(self._key, value, last=self._revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                self._revision = None  # lapsed, or someone else wrote: find out which
            else:
                self._sent_at = sent_at
                self._set(HELD, None)
                return
        try:
            self._revision = await kv.create(self._key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        else:
            self._sent_at = sent_at
            self._set(HELD, None)
            return
        try:
            entry = await kv.get(self._key)
        except nats.js.errors.KeyNotFoundError:
            return  # it lapsed between the two requests: try again next round
        match = LEASE_VALUE.fullmatch(entry.value or b"")
        holder, run = (None, None) if match is None else (match[1].decode(), match[2].decode())
        if run == self.run_id and entry.revision is not None:
            # Our own earlier write whose answer was lost: adopt it.
            self._revision = entry.revision
            self._sent_at = sent_at
            self._set(HELD, None)
            return
        if holder == self.instance and not self._was_held and entry.revision is not None:
            # An earlier run of this installation (killed, or restarted): take it over now.
            try:
                self._revision = await kv.update(self._key, value, last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                return  # it changed meanwhile: look again next round
            self._sent_at = sent_at
            self.log.info("instance_lease_taken_from_earlier_run", earlier_run=run)
            self._set(HELD, None)
            return
        # Another instance, or another process of this installation took it from us (a copy
        # of the whole agent folder, database included, running at the same time).
        self._set(DUPLICATE, holder)

    def _set(self, state: str, holder: str | None) -> None:
        self._was_held = self._was_held or state == HELD
        if (state, holder) == (self.state, self.holder):
            return
        before, self.state, self.holder = self.state, state, holder
        if state == DUPLICATE:
            self.log.error(
                "duplicate_instance",
                holder=holder,
                detail="another agent process holds "
                "this agency's inbox lease: this one does not consume",
            )
        elif before == DUPLICATE:
            self.log.warning("instance_lease_taken_over")
        else:
            self.log.info("instance_lease_acquired")
        self.on_change(state)
        self._changed.set()


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library reported as a timeout or connection error."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
