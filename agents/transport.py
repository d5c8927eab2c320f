"""The JetStream side of the agent: one connection, the outbox publisher, the inbox consumer.

Publishing: every queued delivery is published to the recipient's inbox subject with
`Nats-Msg-Id`, retried with back-off until JetStream acknowledges it; only then is it marked
sent. Consuming: a durable pull consumer on the agency's own inbox; each message is handed to
a handler that commits it and says whether to ack or terminate, and is acked exactly once,
after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from keys import Limits
from keys.subjects import MESSAGE_STREAM, inbox_consumer, inbox_subject, publish_id

from .store import Store

log = structlog.get_logger("nrm.transport")

#: Errors that mean "the bus is not answering right now": retry later.
#: How long stop() lets the loops finish their current step before cancelling them.
STOP_GRACE_SECONDS = 3.0

TRANSIENT = (nats.errors.Error, TimeoutError, OSError, ConnectionError)


class Verdict(enum.Enum):
    ACK = "ack"  # committed (or already committed): remove from the bus
    TERM = "term"  # refused for good: never redeliver


MessageHandler = Callable[[bytes, int], Verdict]


class Transport:
    """Owns the NATS connection and the two background loops."""

    def __init__(
        self,
        *,
        agency: str,
        urls: tuple[str, ...],
        store: Store,
        handler: MessageHandler,
        limits: Limits,
    ) -> None:
        self.agency = agency
        self.urls = urls
        self.store = store
        self.handler = handler
        self.limits = limits
        self.log = log.bind(agency=agency)
        self._nc: Client | None = None
        self._wake = asyncio.Event()
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
        self._tasks = [
            asyncio.create_task(self._run(), name=f"transport-{self.agency}"),
        ]

    async def stop(self) -> None:
        """Let the loops finish their current step, then close the connection.

        The loops watch `_running` as well as cancellation: nats-py can turn a cancelled
        fetch into a plain timeout, so cancellation alone is not a reliable stop signal.
        """
        self._running = False
        self._wake.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=STOP_GRACE_SECONDS)
            for task in late:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks = []
        if self._nc is not None:
            try:
                await asyncio.wait_for(self._nc.drain(), timeout=5)
            except (TimeoutError, *TRANSIENT):
                await self._nc.close()
            self._nc = None

    async def _run(self) -> None:
        nc = await self._connect()
        if nc is None:
            return
        js = nc.jetstream(timeout=5)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._publish_loop(js), name=f"publisher-{self.agency}")
            group.create_task(self._consume_loop(js), name=f"consumer-{self.agency}")

    async def _connect(self) -> Client | None:
        while self._running:
            try:
                self._nc = await nats.connect(
                    servers=list(self.urls),
                    name=f"nrm-agent-{self.agency}",
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                self.log.info("bus_connected")
                return self._nc
            except TRANSIENT as e:
                _raise_if_cancelled()
                self.log.warning("bus_unreachable", error=type(e).__name__)
                await asyncio.sleep(1.0)
        return None

    async def _on_error(self, e: Exception) -> None:
        self.log.warning("bus_error", error=type(e).__name__)

    async def _on_disconnected(self) -> None:
        self.log.warning("bus_disconnected")

    async def _on_reconnected(self) -> None:
        self.log.info("bus_reconnected")
        self._wake.set()

    # --- outbox -> bus --------------------------------------------------------------------

    async def _publish_loop(self, js: JetStreamContext) -> None:
        delay = self.limits.retry_initial_seconds
        while self._running:
            batch = self.store.pending(self.limits.batch_size)
            if not batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                continue
            failed = False
            for item in batch:
                try:
                    ack = await js.publish(
                        inbox_subject(item.recipient),
                        item.envelope,
                        timeout=5,
                        headers={"Nats-Msg-Id": publish_id(item.message_id, item.recipient)},
                    )
                except TRANSIENT as e:
                    _raise_if_cancelled()
                    self.store.mark_attempt(item.message_id, item.recipient)
                    self.log.warning(
                        "publish_retry",
                        message_id=item.message_id,
                        recipient=item.recipient,
                        attempts=item.attempts + 1,
                        error=type(e).__name__,
                    )
                    failed = True
                    break
                self.store.mark_sent(item.message_id, item.recipient, ack.seq)
                self.log.info(
                    "published",
                    message_id=item.message_id,
                    recipient=item.recipient,
                    stream_seq=ack.seq,
                    duplicate=bool(ack.duplicate),
                )
            if failed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.limits.retry_max_seconds)
            else:
                delay = self.limits.retry_initial_seconds

    # --- bus -> inbox ---------------------------------------------------------------------

    async def _consume_loop(self, js: JetStreamContext) -> None:
        subject = inbox_subject(self.agency)
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.limits.ack_wait_seconds,
            max_ack_pending=self.limits.batch_size * 4,
            filter_subject=subject,
        )
        while self._running:
            try:
                sub = await js.pull_subscribe(
                    subject,
                    durable=inbox_consumer(self.agency),
                    stream=MESSAGE_STREAM,
                    config=config,
                )
            except TRANSIENT as e:
                _raise_if_cancelled()
                self.log.warning("consumer_unavailable", error=type(e).__name__)
                await asyncio.sleep(1.0)
                continue
            try:
                await self._fetch_forever(sub)
            except TRANSIENT as e:
                _raise_if_cancelled()
                self.log.warning("consumer_interrupted", error=type(e).__name__)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(*TRANSIENT):
                    await sub.unsubscribe()

    async def _fetch_forever(self, sub: Any) -> None:
        while self._running:
            try:
                msgs: list[Msg] = await sub.fetch(self.limits.batch_size, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                _raise_if_cancelled()  # nats-py turns a cancelled fetch into a timeout
                continue
            for msg in msgs:
                verdict = self.handler(msg.data, msg.metadata.sequence.stream)
                if verdict is Verdict.ACK:
                    await msg.ack()
                else:
                    await msg.term()


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library reported as a timeout or connection error."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
