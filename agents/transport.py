"""The JetStream side of the agent: one connection, the outbox publisher, the inbox consumer.

Publishing: every queued delivery is published to the recipient's inbox subject with
`Nats-Msg-Id`, retried with back-off until JetStream acknowledges it; only then is it marked
sent. A batch is published as a window whose acks are awaited together, not one round trip
each; messages of one referral to one recipient keep their order.

The directory first: over every connection, the one made at start and each one after a drop
or a refusal, nothing is published or consumed before the directory watch has read the
directory bucket to its end and the owner has applied what it found (`directory_read`). An
agent back on the bus — a removed agency readmitted, typically with new keys — would
otherwise sign, publish and judge by the directory it cached before, in which its old key is
active: a copy signed with it is held back by its recipient as `unknown-key` and refused
after the grace, without a word to the sender. Nor is the inbox judged before the services
bucket was read once since the start (`services.bucket_read`): a referral naming one of this
agency's services is judged by its own catalogues (PROTOCOL §8.2 step 5). And right before
each publish the owner's `hold_reason` may hold a copy back (one signed by a key its
directory no longer accepts). What is held is counted by reason (`held`; the metric
`nrm_outbox_held`) and logged once as the hold begins (`outbox_held`) and ends
(`outbox_released`).

Consuming: a durable pull consumer on the agency's own inbox stream; each message is handed
to a handler that commits it and says whether to ack or terminate; once one fsync covers all
the commits of a fetched batch (group commit, runtime/durability.py), each message it is done
with is erased from the inbox stream (`STREAM.MSG.DELETE`: nats-server overwrites its bytes,
where an ack alone would leave them in the block file) and then acked, each once. The
subscription lasts as long as the connection: while the instance lease is not held nothing
is fetched, and what still reaches it (answers to pull requests sent before) is handed back
at once (`hand_back`), never left to wait out the ack wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from keys import Limits
from keys.subjects import (
    MOVED_FROM_HEADER,
    audit_publish_id,
    audit_subject,
    inbox_consumer,
    inbox_stream,
    inbox_subject,
    publish_id,
    reply_prefix,
    resend_publish_id,
)
from runtime import clock
from runtime.backoff import Backoff, Retry
from runtime.bus_client import close_client
from runtime.bus_link import RELEASED_CLIENT_PAUSE_SECONDS
from runtime.endpoint import BusEndpoint
from runtime.jetstream import erase_message, inbox_consumer_config, read_directory_bucket
from runtime.supervisor import Supervisor, pause, unless_stopping

from .bus_link import BusLink, is_refusal
from .presence import Presence
from .store import PendingDelivery, Store

log = structlog.get_logger("nrm.transport")

#: Errors that mean "the bus is not answering right now": retry later.
#: How long stop() lets the loops finish their current step before cancelling them.
STOP_GRACE_SECONDS = 3.0

TRANSIENT = (nats.errors.Error, TimeoutError, OSError, ConnectionError)


class Verdict(enum.Enum):
    ACK = "ack"  # committed (or already committed): remove from the bus
    TERM = "term"  # refused for good: never redeliver
    RETRY = "retry"  # cannot be judged yet (e.g. a key from a directory not seen yet)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a consumed message is on the bus: its stream and sequence there (sequences are
    per stream), and where it was before if the bus moved it (`MOVED_FROM_HEADER`)."""

    stream: str
    seq: int
    moved_from: tuple[str, int] | None = None


#: (envelope bytes, where it is, time the bus stored it) -> what to do with it
MessageHandler = Callable[[bytes, Position, int], Verdict]
DirectoryHandler = Callable[[str, bytes], Awaitable[None]]
#: While the instance lease is not held: how often what reaches the inbox subscription is
#: handed back (and how long one message is waited for then).
HAND_BACK_SECONDS = 0.5
#: How many times a message whose handling fails unexpectedly is retried before it is set aside.
MAX_HANDLER_ATTEMPTS = 5
#: How long a message is held back when it cannot be judged yet.
RETRY_DELAY_SECONDS = 1.0
#: How many times erasing a consumed message from the inbox stream is tried (the bus not
#: answering) before it is acked anyway, the failure counted; and the pause between tries.
ERASE_ATTEMPTS = 3
ERASE_RETRY_SECONDS = 0.5


#: The stream behind the directory bucket, and how often the agent reads what is new in it.
DIRECTORY_POLL_SECONDS = 0.5


class Transport:
    """Owns the NATS connection and the two background loops."""

    def __init__(
        self,
        *,
        agency: str,
        endpoint: BusEndpoint,
        store: Store,
        handler: MessageHandler,
        on_directory: DirectoryHandler,
        nats_seed: bytes | None,
        limits: Limits,
        after_commit: Callable[[], None] = lambda: None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.agency = agency
        #: Runs the transport's loop; its owner's, so that a death shows in its health.
        self.supervisor = supervisor or Supervisor(f"transport-{agency}")
        #: The bus's URLs and TLS settings (runtime/endpoint.py).
        self.endpoint = endpoint
        self.store = store
        self.handler = handler
        self.on_directory = on_directory
        self.nats_seed = nats_seed
        self.limits = limits
        #: Called once a fetched batch is committed and on disk, before it is acked.
        self.after_commit = after_commit
        #: Set by the owner once a trusted directory is loaded; the inbox waits for it.
        self.ready = asyncio.Event()
        #: Uploads and fetches attachments with this transport's JetStream context.
        self.attachments: Any = None
        #: Follows and publishes service catalogues and capacity (agents/services.py).
        self.services: Any = None
        #: Set by the owner: the instance lease that gates consuming the inbox (§5.2).
        self.presence: Presence | None = None
        #: Called whenever the bus refuses this connection's NKey (the owner may have a
        #: newer one: docs/PROTOCOL.md §3.4).
        self.on_auth_refused: Callable[[bytes | None], None] = lambda seed: None
        #: Called (in a transaction) for a message whose handler failed on every one of
        #: MAX_HANDLER_ATTEMPTS deliveries: the owner records the refusal and says TERM.
        self.on_give_up: Callable[[bytes, int, BaseException], Verdict] = lambda data, seq, error: (
            Verdict.TERM
        )
        #: Called with the reason (`refused`, `unavailable`) when a consumed message could
        #: not be erased from the inbox stream and is acked all the same (a metric).
        self.on_erase_failed: Callable[[str], None] = lambda reason: None
        #: After the last fetch: messages still waiting on the inbox consumer (JetStream's
        #: num_pending) and how long the oldest of that batch had waited on the bus, seconds
        #: (both 0 once a fetch finds the inbox drained; metrics).
        self.inbox_backlog: tuple[int, float] = (0, 0.0)
        #: Set by the owner: why a queued copy must not be published now (a reason code), or
        #: None if it may; asked right before each publish.
        self.hold_reason: Callable[[PendingDelivery], str | None] = lambda item: None
        #: Queued copies the publisher held back the last time it looked (at most one
        #: batch), by reason: `directory-unread` or what `hold_reason` said; empty if none.
        self.held: dict[str, int] = {}
        #: Set once the directory watch has read the directory bucket to its end (and the
        #: owner applied it) over the current connection; cleared when a connection is made
        #: or lost. The publisher and the inbox wait for it.
        self.directory_read = asyncio.Event()
        #: Counts connections made (the first and every reconnection): a directory read
        #: begun over an earlier one does not count for the current one.
        self._epoch = 0
        self.log = log.bind(agency=agency)
        #: The link's state and the pace of reconnection attempts (agents/bus_link.py).
        self.link = BusLink(
            agency=agency,
            backoff=Backoff(limits.reconnect_initial_seconds, limits.reconnect_max_seconds),
        )
        self._nc: Client | None = None
        #: The client of the newest connection attempt: callbacks of any other (one this
        #: transport replaced, still closing) are late and say nothing of the link.
        self._current: Client | None = None
        self._wake = asyncio.Event()
        #: Set by stop(): the loops' idle waits end at once (runtime.supervisor.unless_stopping).
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def wake(self) -> None:
        """Tell the publisher there is something new in the outbox."""
        self._wake.set()

    async def start(self) -> None:
        self._running = True
        self._stopping.clear()
        self._tasks = [self.supervisor.spawn(f"transport-{self.agency}", self._run)]

    async def stop(self) -> None:
        """Let the loops finish their current step, then close the connection. A loop that
        is only waiting (for messages, an update, the link, a pause) stops at once.

        The loops watch `_running` as well as cancellation: nats-py can turn a cancelled
        fetch into a plain timeout, so cancellation alone is not a reliable stop signal.
        """
        self._running = False
        self._stopping.set()
        self._wake.set()
        if self.presence is not None:
            self.presence.wake()
        if self.attachments is not None:
            self.attachments.wake()
        if self.services is not None:
            self.services.wake()
        # A step begun over a link that is down (a publish, a lease renewal or release) can
        # only wait out its timeout: it is cut short at once. Nothing is lost: unacked
        # publishes are repeated under the same Nats-Msg-Id, unacked messages redelivered
        # and recognised, and a lease not released lapses by itself.
        grace = STOP_GRACE_SECONDS if self.link.connected else 0.0
        await self.supervisor.stop(self._tasks, grace_seconds=grace)
        self._tasks = []
        if self._nc is not None:
            await close_client(self._nc)
            self._nc = None

    async def use_seed(self, seed: bytes) -> None:
        """Reconnect with another NATS seed: let the loops finish their step, close the
        connection, start again. Nothing is lost: unacked messages are redelivered (and
        recognised), unacknowledged publishes repeated under the same Nats-Msg-Id."""
        await self.stop()
        self.nats_seed = seed
        await self.start()

    async def _run(self) -> None:
        nc = await self._connect()
        if nc is None:
            return
        js = nc.jetstream(timeout=5)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._publish_loop(js), name=f"publisher-{self.agency}")
            group.create_task(self._consume_loop(js), name=f"consumer-{self.agency}")
            group.create_task(self._watch_directory(js), name=f"directory-{self.agency}")
            if self.presence is not None:
                group.create_task(
                    self.presence.run(js, lambda: self._running), name=f"presence-{self.agency}"
                )
            if self.attachments is not None:
                group.create_task(
                    self.attachments.run(js, lambda: self._running),
                    name=f"attachments-{self.agency}",
                )
            if self.services is not None:
                group.create_task(
                    self.services.run(js, lambda: self._running), name=f"services-{self.agency}"
                )

    async def _connect(self) -> Client | None:
        seed = self.nats_seed  # errors are reported against the seed of their own connection
        retry = Retry.after(1.0)
        while self._running:
            nc = self._current = Client()

            async def on_error(e: Exception, nc: Client = nc) -> None:
                if nc is self._current:
                    await self._on_error(e, seed)
                else:
                    # A replaced client still reconnecting: its errors say nothing of the
                    # link, but this callback paces its retries (reconnect_time_wait=0).
                    await asyncio.sleep(RELEASED_CLIENT_PAUSE_SECONDS)

            async def on_disconnected(nc: Client = nc) -> None:
                if nc is self._current:
                    await self._on_disconnected()

            async def on_reconnected(nc: Client = nc) -> None:
                if nc is self._current:
                    await self._on_reconnected()

            try:
                # nats-py retries until connected, waiting out the link's back-off in
                # on_error between attempts: that is an idle wait stop() ends at once.
                await unless_stopping(
                    nc.connect(
                        **self.endpoint.connect_options(),  # servers, tls, tls_hostname
                        name=f"nrm-agent-{self.agency}",
                        allow_reconnect=True,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=0,  # the link's back-off paces attempts (bus_link.py)
                        connect_timeout=2,
                        inbox_prefix=reply_prefix(self.agency),
                        nkeys_seed_str=None if self.nats_seed is None else self.nats_seed.decode(),
                        error_cb=on_error,
                        disconnected_cb=on_disconnected,
                        reconnected_cb=on_reconnected,
                    ),
                    self._stopping,
                )
                self._nc = nc
                self._new_connection()
                self.link.on_connected()
                return nc
            except asyncio.CancelledError:
                await close_client(nc)  # whatever the attempt cut short left open
                raise
            except TRANSIENT as e:
                await close_client(nc)  # whatever the unfinished attempt left open
                _raise_if_cancelled()
                if not self._running:
                    return None
                self.log.warning("bus_unreachable", error=type(e).__name__)
                if is_refusal(e):
                    self.on_auth_refused(seed)
                await pause(retry.next_delay(), self._stopping)
        return None

    async def _on_error(self, e: Exception, seed: bytes | None) -> None:
        if is_refusal(e):
            self.on_auth_refused(seed)  # perhaps our NATS key was rotated (nats_key.py)
        attempting = self._nc is None or not self._nc.is_connected
        await self.link.on_error(e, attempting=attempting)

    async def _on_disconnected(self) -> None:
        self.directory_read.clear()
        if self._running:  # not when stop() closes the connection
            self.link.on_disconnected()

    async def _on_reconnected(self) -> None:
        self._new_connection()
        self.link.on_connected()
        self._wake.set()

    def _new_connection(self) -> None:
        """A connection was made: the directory must be read over it before anything is
        published or consumed (the bus may have refused us for a directory not seen yet)."""
        self._epoch += 1
        self.directory_read.clear()

    async def _pause(self, event: str, error: BaseException, seconds: float) -> None:
        """After a failed bus operation: while the link is down, wait quietly for it to come
        back (the link logs its state changes); otherwise log `event` and wait `seconds`."""
        _raise_if_cancelled()
        if self.link.connected:
            self.log.warning(event, error=type(error).__name__)
            await pause(seconds, self._stopping)
            return
        while self._running and not self.link.connected:
            with contextlib.suppress(TimeoutError):
                await unless_stopping(
                    asyncio.wait_for(self.link.up.wait(), timeout=1.0), self._stopping
                )

    # --- outbox -> bus --------------------------------------------------------------------

    async def _publish_loop(self, js: JetStreamContext) -> None:
        delay = self.limits.retry_initial_seconds
        while self._running:
            batch = self.store.pending(self.limits.batch_size)
            events = self.store.pending_audit(self.limits.batch_size)
            if not self.link.connected:  # nothing is attempted while the link is down
                with contextlib.suppress(TimeoutError):
                    await unless_stopping(
                        asyncio.wait_for(self.link.up.wait(), timeout=1.0), self._stopping
                    )
                continue
            if not self.directory_read.is_set():  # not before the bus's directory is applied
                self._set_held({"directory-unread": len(batch)} if batch else {})
                with contextlib.suppress(TimeoutError):
                    await unless_stopping(
                        asyncio.wait_for(self.directory_read.wait(), timeout=1.0), self._stopping
                    )
                continue
            window, held = self._window(batch)
            self._set_held(held)
            if not window and not events:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                continue
            await self.store.durable()  # nothing is published that a power cut could undo
            failed = not await self._publish_deliveries(js, window)
            if not failed:
                failed = not await self._publish_audit(js, events)
            if failed:
                await pause(delay, self._stopping)
                delay = min(delay * 2, self.limits.retry_max_seconds)
            else:
                delay = self.limits.retry_initial_seconds

    def _window(self, batch: list[PendingDelivery]) -> tuple[list[PendingDelivery], dict[str, int]]:
        """The copies of `batch` to publish together, and how many were held back by reason.
        Two messages of one referral to one recipient never share a window, so a message
        that fails is never overtaken by a later one that depends on it; nor is one held
        back (`hold_reason`)."""
        window: list[PendingDelivery] = []
        held: dict[str, int] = {}
        keys: set[tuple[str, str | None]] = set()
        for item in batch:
            if (item.recipient, item.referral_id) in keys:
                break
            keys.add((item.recipient, item.referral_id))
            reason = self.hold_reason(item)
            if reason is None:
                window.append(item)
            else:
                held[reason] = held.get(reason, 0) + 1
        return window, held

    def _set_held(self, held: dict[str, int]) -> None:
        """Note what the publisher holds back now; log a hold as it begins and ends."""
        for reason in sorted(held.keys() - self.held.keys()):
            # Waiting for the directory after a (re)connection is routine, and short.
            level = logging.INFO if reason == "directory-unread" else logging.WARNING
            self.log.log(level, "outbox_held", reason=reason, copies=held[reason])
        for reason in sorted(self.held.keys() - held.keys()):
            self.log.info("outbox_released", reason=reason)
        self.held = held

    async def _publish_deliveries(
        self, js: JetStreamContext, window: list[PendingDelivery]
    ) -> bool:
        """Publish a window of queued deliveries (`_window`) and await their acks together;
        False if any failed."""
        resends = self.store.resend_ids([(i.message_id, i.recipient) for i in window])

        def msg_id(item: PendingDelivery) -> str:
            request = resends.get((item.message_id, item.recipient))
            if request is None:
                return publish_id(item.message_id, item.recipient)
            return resend_publish_id(item.message_id, item.recipient, request)

        acks = await asyncio.gather(
            *(
                js.publish(
                    inbox_subject(item.recipient),
                    item.envelope,
                    timeout=5,
                    headers={"Nats-Msg-Id": msg_id(item)},
                )
                for item in window
            ),
            return_exceptions=True,
        )
        # Acknowledged publishes are marked in one transaction per window. One left unmarked
        # by a crash is published again under the same Nats-Msg-Id, which JetStream drops.
        sent: list[tuple[str, str, int]] = []
        failed: list[tuple[PendingDelivery, BaseException]] = []
        try:
            for item, ack in zip(window, acks, strict=True):
                if isinstance(ack, BaseException):
                    if not isinstance(ack, TRANSIENT):
                        raise ack
                    failed.append((item, ack))
                    continue
                sent.append((item.message_id, item.recipient, ack.seq))
                self.log.info(
                    "published",
                    message_id=item.message_id,
                    recipient=item.recipient,
                    stream_seq=ack.seq,
                    duplicate=bool(ack.duplicate),
                )
        finally:
            self.store.mark_sent_many(sent)
            self.store.mark_attempts([(i.message_id, i.recipient) for i, _ in failed])
        if failed:
            _raise_if_cancelled()
            first, error = failed[0]
            self.log.warning(
                "publish_retry",
                failed=len(failed),
                message_id=first.message_id,
                recipient=first.recipient,
                attempts=first.attempts + 1,
                error=type(error).__name__,
            )
        return len(sent) == len(window)

    async def _publish_audit(self, js: JetStreamContext, events: list[tuple[str, bytes]]) -> bool:
        """Publish queued audit events, acks awaited together (the ledger's order is its own);
        False if any failed."""
        reoffers = self.store.reoffered([event_id for event_id, _ in events])
        acks = await asyncio.gather(
            *(
                js.publish(
                    audit_subject(self.agency),
                    event,
                    timeout=5,
                    headers={"Nats-Msg-Id": audit_publish_id(event_id, reoffers.get(event_id))},
                )
                for event_id, event in events
            ),
            return_exceptions=True,
        )
        sent: list[tuple[str, int]] = []
        failed: list[tuple[str, BaseException]] = []
        try:
            for (event_id, _), ack in zip(events, acks, strict=True):
                if isinstance(ack, BaseException):
                    if not isinstance(ack, TRANSIENT):
                        raise ack
                    failed.append((event_id, ack))
                    continue
                sent.append((event_id, ack.seq))
        finally:
            self.store.mark_audit_sent_many(sent)
        if failed:
            _raise_if_cancelled()
            self.log.warning(
                "audit_publish_retry",
                failed=len(failed),
                event_id=failed[0][0],
                error=type(failed[0][1]).__name__,
            )
        return len(sent) == len(events)

    # --- bus -> inbox ---------------------------------------------------------------------

    async def _consume_loop(self, js: JetStreamContext) -> None:
        subject = inbox_subject(self.agency)
        await self.ready.wait()
        config = inbox_consumer_config(self.agency, self.limits)
        retry = Retry.after(1.0)
        # One subscription for as long as this connection lasts, kept through a lapse of the
        # lease and through failed fetches: the bus may still deliver to pull requests sent
        # over it (after an outage the agent's direction of the connection can recover
        # seconds before the bus's, the lease lapsing in between), and what reaches a
        # subscription dropped meanwhile would come back only after the ack wait.
        sub: Any = None
        try:
            while self._running:
                if not await self._wait_lease(sub):
                    return  # stopping
                try:
                    # Create or update (no `action`): provisioning created it with the bus's
                    # defaults, and nats-py's pull_subscribe alone would not apply our ack wait.
                    await js.add_consumer(inbox_stream(self.agency), config=config)
                    if sub is None:
                        sub = await js.pull_subscribe(
                            subject,
                            durable=inbox_consumer(self.agency),
                            stream=inbox_stream(self.agency),
                            config=config,
                        )
                except TRANSIENT as e:
                    await self._pause("consumer_unavailable", e, retry.next_delay())
                    continue
                try:
                    await self._fetch_forever(js, sub)
                    retry.succeeded()
                except TRANSIENT as e:
                    await self._pause("consumer_interrupted", e, retry.next_delay())
        finally:
            if sub is not None:
                with contextlib.suppress(*TRANSIENT):
                    await sub.unsubscribe()

    async def _wait_lease(self, sub: Any) -> bool:
        """Wait until this instance holds the inbox lease (True) or the transport stops
        (False), handing back meanwhile whatever reaches the subscription (`_hand_back`)."""
        if self.presence is None:
            return self._running
        while self._running:
            if sub is not None:
                await self._hand_back(sub)
            if self.presence.held:
                return True
            with contextlib.suppress(TimeoutError):
                await unless_stopping(
                    asyncio.wait_for(
                        self.presence.wait_held(lambda: self._running),
                        timeout=HAND_BACK_SECONDS,
                    ),
                    self._stopping,
                )
        return False

    async def _hand_back(self, sub: Any) -> None:
        given = await hand_back(sub)
        if given:
            self.log.info("inbox_handed_back", messages=given)

    async def _fetch_forever(self, js: JetStreamContext, sub: Any) -> None:
        while self._running and (self.presence is None or self.presence.held):
            # Not while the agency has no usable key (standing.py), nor before the directory
            # is read over this connection: what is received is judged, and answered, by it;
            # nor before the services bucket was read once since the start (a referral naming
            # one of this agency's services is judged by its own catalogue, PROTOCOL §8.2
            # step 5): however long the mail waited, none is judged before.
            gate = self.ready if not self.ready.is_set() else self.directory_read
            if gate.is_set() and self.services is not None:
                gate = self.services.bucket_read
            if not gate.is_set():
                with contextlib.suppress(TimeoutError):
                    await unless_stopping(
                        asyncio.wait_for(gate.wait(), timeout=1.0), self._stopping
                    )
                continue
            try:
                msgs: list[Msg] = await unless_stopping(
                    sub.fetch(self.limits.batch_size, timeout=1.0), self._stopping
                )
            except (nats.errors.TimeoutError, TimeoutError):
                _raise_if_cancelled()  # nats-py turns a cancelled fetch into a timeout
                self.inbox_backlog = (0, 0.0)
                continue
            self.inbox_backlog = _backlog(msgs)
            # One transaction for the batch, each message a savepoint of its own; one fsync
            # for it (group commit) before any of it is acked.
            try:
                with self.store.transaction():
                    verdicts = [(msg, self._judge(msg)) for msg in msgs]
                await self.store.durable()
            except (sqlite3.Error, OSError) as e:
                # Nothing of the batch is acked: the bus redelivers it after ack_wait.
                self.log.error("inbox_commit_failed", error=type(e).__name__, messages=len(msgs))
                await pause(1.0, self._stopping)
                continue
            self.after_commit()
            # Committed and on disk: nothing of what it is done with stays on the bus.
            await asyncio.gather(
                *(self._erase(js, msg) for msg, verdict in verdicts if verdict is not Verdict.RETRY)
            )
            for msg, verdict in verdicts:
                if verdict is Verdict.ACK:
                    await msg.ack()
                elif verdict is Verdict.RETRY:
                    await msg.nak(delay=RETRY_DELAY_SECONDS)
                else:
                    await msg.term()

    async def _erase(self, js: JetStreamContext, msg: Msg) -> None:
        """Erase a message this agent is done with (committed, or refused on the record) from
        its inbox stream, before it is acked (docs/DESIGN.md "Erasure"). Erasing one gone
        already (a redelivery, erased before a crash) is fine. If the bus refuses, or is
        unavailable ERASE_ATTEMPTS times (`erase_failure`; the pauses between tries end
        at once on stop), the message is acked all the same — it is already
        committed, and holding it back would only bring it back — and the failure is
        logged with the sequence only and counted (`on_erase_failed`)."""
        seq = msg.metadata.sequence.stream
        retry = Retry.after(ERASE_RETRY_SECONDS)
        for attempt in range(1, ERASE_ATTEMPTS + 1):
            try:
                await erase_message(js, inbox_stream(self.agency), seq)
                return
            except TRANSIENT as e:
                _raise_if_cancelled()
                reason = erase_failure(e)
                if reason == "refused" or attempt == ERASE_ATTEMPTS or not self._running:
                    self._erase_failed(reason, seq, e)
                    return
                await pause(retry.next_delay(), self._stopping)

    def _erase_failed(self, reason: str, seq: int, error: BaseException) -> None:
        self.log.error(
            "inbox_erase_failed", stream_seq=seq, reason=reason, error=type(error).__name__
        )
        self.on_erase_failed(reason)

    def _judge(self, msg: Msg) -> Verdict:
        meta = msg.metadata
        stored_at = int(clock.from_bus(meta.timestamp.timestamp())) if meta.timestamp else 0
        try:
            with self.store.transaction():
                return self.handler(msg.data, _position(msg), stored_at)
        except Exception as e:
            # Not the message (its refusals are handled inside) but, say, the disk: keep
            # consuming; retry the message a few times, then refuse it, on the record.
            self.log.error(
                "handler_failed",
                stream_seq=meta.sequence.stream,
                error=type(e).__name__,
                deliveries=meta.num_delivered,
            )
            if (meta.num_delivered or 0) < MAX_HANDLER_ATTEMPTS:
                return Verdict.RETRY
            return self._give_up(msg, e)

    def _give_up(self, msg: Msg, error: BaseException) -> Verdict:
        """Refuse a message for good once its refusal is committed (`on_give_up`); while
        even that cannot be written, keep it on the bus rather than drop it unrecorded."""
        seq = msg.metadata.sequence.stream
        try:
            with self.store.transaction():
                return self.on_give_up(msg.data, seq, error)
        except Exception as e:
            self.log.error("give_up_failed", stream_seq=seq, error=type(e).__name__)
            return Verdict.RETRY

    # --- trust directory ------------------------------------------------------------------

    async def _watch_directory(self, js: JetStreamContext) -> None:
        """Offer every root and directory published in the bucket to `on_directory`: first
        the newest value of each key, then every value published after, in order.

        The bucket's stream is read message by message (`STREAM.MSG.GET`, next by subject),
        polled every DIRECTORY_POLL_SECONDS, not watched through a consumer: PROTOCOL.md §5.1
        lets no agency create a consumer on it, since a push consumer delivers to whatever
        subject its creator names, another agency's replies included.

        A pass that reads the stream to its end over the current connection, every value
        found offered and applied, sets `directory_read`; one begun over an earlier
        connection does not, and the next pass starts at once."""
        seq, first = 1, True
        while self._running:
            epoch = self._epoch
            try:
                found, cursor = await read_directory_bucket(js, seq, newest_only=first)
                for key, value in found:
                    await self.on_directory(key, value)
                seq, first = cursor, False
            except TRANSIENT as e:
                # A fixed second, no back-off: after the link comes back (a removed agency
                # readmitted, say) the agent must see the current directory before long,
                # since it signs with the keys its newest directory lists.
                await self._pause("directory_watch_interrupted", e, 1.0)
                continue
            if epoch != self._epoch:
                continue  # connected again meanwhile: read over the new connection
            if self.link.connected and not self.directory_read.is_set():
                self.directory_read.set()
            await pause(DIRECTORY_POLL_SECONDS, self._stopping)


async def hand_back(sub: Any) -> int:
    """Give back at once (a nak without delay) every message waiting on the pull subscription
    `sub` while this instance does not hold the inbox lease; how many. Delivered to a pull
    request sent while it did (its fetch gave up on it: the bus received it late, after an
    outage, say), such a message is not this instance's to take now, and JetStream redelivers
    it at once to the holder (this one, once its renewal gets through) instead of after the
    ack wait."""
    waiting = sub._sub  # nats-py 2.16 (pinned): the queue PullSubscription.fetch drains first
    given = 0
    while sub.pending_msgs > 0:
        try:
            msg = await waiting.next_msg(timeout=HAND_BACK_SECONDS)
        except (nats.errors.TimeoutError, TimeoutError):
            break
        if JetStreamContext.is_status_msg(msg):
            continue  # a pull request's end (408, 404): nothing to give back
        with contextlib.suppress(*TRANSIENT):
            await msg.nak()
            given += 1
    return given


def _backlog(msgs: list[Msg]) -> tuple[int, float]:
    """(num_pending after the batch, age in seconds of its oldest message) from the batch's
    JetStream metadata: no request to the bus."""
    metas = [m.metadata for m in msgs]
    pending = metas[-1].num_pending or 0 if metas else 0
    stamps = [m.timestamp.timestamp() for m in metas if m.timestamp is not None]
    age = max(0.0, clock.now() - clock.from_bus(min(stamps))) if stamps else 0.0
    return pending, age


def _position(msg: Msg) -> Position:
    """Where `msg` is, from its JetStream metadata, and where it was before if it carries a
    well-formed `MOVED_FROM_HEADER` (anything else there is ignored)."""
    meta = msg.metadata
    moved_from = None
    stream, _, seq = (msg.headers or {}).get(MOVED_FROM_HEADER, "").partition(" ")
    if stream and seq.isascii() and seq.isdigit():
        moved_from = (stream, int(seq))
    return Position(meta.stream, meta.sequence.stream, moved_from)


def erase_failure(error: BaseException) -> Literal["refused", "unavailable"]:
    """Why erasing a message failed with `error`: `refused` for a definitive answer of the bus
    (an API error, say the 500 of a stream with `deny_delete`), `unavailable` for what may
    pass and is worth another try: no answer (a timeout, a lost connection; nats-py reports
    a permissions violation only to the error callback, so a refused request times out) or
    503, JetStream not available right now (during a leader election, say)."""
    if isinstance(error, nats.js.errors.ServiceUnavailableError):
        return "unavailable"
    if isinstance(error, nats.js.errors.APIError):
        return "unavailable" if error.code == 503 else "refused"
    return "unavailable"


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library reported as a timeout or connection error."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
