"""Webhooks: delivering events to the agency system, at least once, in order, signed.

An event is committed to `webhook_outbox` in the same transaction as whatever caused it
(`enqueue`). `WebhookSender` owns one background loop per configured URL; each loop POSTs that
URL's undelivered events oldest first, retrying the head of its queue with bounded exponential
back-off until the receiver answers 2xx, and only then moves on. An event is marked delivered
once every URL has taken it. The event id is stable across retries, so receivers de-duplicate.

Request (docs/PROTOCOL.md §10, "Webhooks"):

    POST <url>
    Content-Type: application/json
    X-NRM-Event-Id: <id, 32 lowercase hex>
    X-NRM-Timestamp: <Unix seconds, decimal>
    X-NRM-Signature: v1=<hex HMAC-SHA256(secret, timestamp || "." || body)>

    {"id": ..., "type": ..., "created": ..., "data": {...}}

The body bytes are fixed at enqueue time and identical on every attempt; the timestamp and
signature are fresh per attempt. Receivers MUST verify the signature in constant time and
SHOULD refuse timestamps more than 5 minutes from their clock (`verify_signature`). Bodies are
never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import structlog

from keys.errors import BadSignatureError, ExpiredError
from runtime import clock
from runtime.backoff import Retry
from runtime.supervisor import Supervisor
from runtime.tls import client_context

from .storage.webhooks import WebhookOutbox

log = structlog.get_logger("nrm.webhooks")

EVENT_TYPES: Final = frozenset(
    {
        "referral.received",
        "transition.received",
        "consent.withdrawn",
        "escalation.received",
        "overdue.received",
        "decision.received",
        "protection.received",
        "reconsideration.received",
        "transfer_request.received",
        "transfer.received",
        "transfer_step.received",
        "case.closed",
        "delivery.failed",
        "break_glass.requested",
        "statistics.received",
    }
)
#: Largest serialized event body accepted by `enqueue`.
MAX_EVENT_BYTES: Final = 64 * 1024
SIGNATURE_VERSION: Final = "v1"
STOP_GRACE_SECONDS: Final = 3.0

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,15}$")
_SIGNATURE = re.compile(r"^v1=([0-9a-f]{64})$")
#: Shortest accepted shared secret (bytes).
MIN_SECRET_BYTES: Final = 16

#: Errors that mean "the receiver is not answering right now": retry later.
TRANSIENT = (aiohttp.ClientError, TimeoutError, OSError)


class WebhookSignatureError(BadSignatureError):
    """A webhook request whose signature header is missing, malformed or does not verify."""

    reason = "bad-webhook-signature"


class StaleWebhookError(ExpiredError):
    """A webhook request whose timestamp is too far from the receiver's clock."""

    reason = "stale-webhook"


def new_event_id() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One event for the agency system. `data` is metadata the system acts on (ids, states,
    codes); the system fetches anything more over the API."""

    id: str
    type: str
    created: int
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not (isinstance(self.id, str) and _HEX32.fullmatch(self.id)):
            raise ValueError("event id must be 32 lowercase hex characters")
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {self.type!r}")
        if type(self.created) is not int or self.created < 0:
            raise ValueError("created must be a non-negative integer")
        if not isinstance(self.data, Mapping) or not all(isinstance(k, str) for k in self.data):
            raise ValueError("data must be a mapping with string keys")

    def body(self) -> bytes:
        """The JSON request body: compact, UTF-8, fields in a fixed order."""
        payload = {"id": self.id, "type": self.type, "created": self.created, "data": self.data}
        try:
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"event data is not JSON-serializable: {e}") from e
        return text.encode("utf-8")


def enqueue(db: sqlite3.Connection, event: WebhookEvent) -> bool:
    """Queue `event` inside the caller's transaction; False if its id was already queued."""
    body = event.body()
    if len(body) > MAX_EVENT_BYTES:
        raise ValueError(f"webhook event is {len(body)} bytes, more than {MAX_EVENT_BYTES}")
    return WebhookOutbox.insert_webhook_event(db, event.id, event.type, event.created, body)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The X-NRM-Signature header value for `body` sent at `timestamp`."""
    _check_secret(secret)
    return f"{SIGNATURE_VERSION}={_mac(secret, str(timestamp), body)}"


def verify_signature(
    secret: bytes,
    timestamp: str,
    body: bytes,
    header: str,
    *,
    tolerance_seconds: int = 300,
    now: int | None = None,
) -> None:
    """Return if `header` is a valid signature of `body` at `timestamp`, recent enough.

    `timestamp` and `header` are the X-NRM-Timestamp and X-NRM-Signature values as received.
    `header` may list several comma-separated signatures (during secret rotation); one valid
    `v1` signature suffices. Raises WebhookSignatureError or StaleWebhookError.
    """
    _check_secret(secret)
    if tolerance_seconds <= 0:
        raise ValueError("tolerance_seconds must be positive")
    if not isinstance(timestamp, str) or not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookSignatureError("X-NRM-Timestamp is missing or not a decimal integer")
    if not isinstance(header, str) or not header:
        raise WebhookSignatureError("X-NRM-Signature is missing")
    expected = _mac(secret, timestamp, bytes(body)).encode("ascii")
    matched = False
    for part in header.split(","):
        found = _SIGNATURE.fullmatch(part.strip())
        if found is not None and hmac.compare_digest(found.group(1).encode("ascii"), expected):
            matched = True
    if not matched:
        raise WebhookSignatureError("X-NRM-Signature does not verify")
    current = clock.now() if now is None else now
    if abs(current - int(timestamp)) > tolerance_seconds:
        raise StaleWebhookError("X-NRM-Timestamp is outside the accepted window")


def _mac(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes):
        raise TypeError("a webhook secret is bytes")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"a webhook secret must be at least {MIN_SECRET_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """One URL of the agency system and the secret shared with it. An https URL's
    certificate is verified, against `ca_file` if given, else the system's CAs."""

    url: str
    secret: bytes = field(repr=False)
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a webhook URL must be http(s) with a host")
        if self.ca_file is not None and parts.scheme != "https":
            raise ValueError("a webhook ca_file goes with an https URL")
        _check_secret(self.secret)

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What aiohttp verifies this URL's server with (True: the default, system CAs)."""
        return True if self.ca_file is None else client_context(self.ca_file)

    @property
    def safe_url(self) -> str:
        """The URL without credentials, path or query: what logs may show."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Every limit of webhook delivery."""

    #: Back-off bounds (runtime.backoff, full jitter): retry n waits a random time up to
    #: min(retry_max_seconds, retry_initial_seconds * 2**n).
    retry_initial_seconds: float = 0.2
    retry_max_seconds: float = 30.0
    #: Whole-request timeout.
    timeout_seconds: float = 10.0
    #: Events read from the outbox per query.
    batch_size: int = 32
    #: How long an idle loop waits before looking at the outbox again without a wake().
    poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_initial_seconds <= self.retry_max_seconds:
            raise ValueError("need 0 < retry_initial_seconds <= retry_max_seconds")
        if self.timeout_seconds <= 0 or self.poll_seconds <= 0 or self.batch_size < 1:
            raise ValueError("timeouts, poll interval and batch size must be positive")


DEFAULT_WEBHOOK_SETTINGS: Final = WebhookSettings()


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    event_id: str
    type: str
    body: bytes


class WebhookSender:
    """Owns the HTTP session and one delivery loop per target."""

    def __init__(
        self,
        store: WebhookOutbox,
        *,
        targets: Sequence[WebhookTarget],
        settings: WebhookSettings = DEFAULT_WEBHOOK_SETTINGS,
        supervisor: Supervisor | None = None,
    ) -> None:
        urls = [t.url for t in targets]
        if not urls:
            raise ValueError("a webhook sender needs at least one target")
        if len(set(urls)) != len(urls):
            raise ValueError("each webhook URL may be configured once")
        self.store = store
        self.targets = tuple(targets)
        self.settings = settings
        #: Runs the delivery loops; its owner's, so that a death shows in its health.
        self.supervisor = supervisor or Supervisor("webhooks")
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wakes: dict[str, asyncio.Event] = {}
        self._ssl: dict[str, ssl.SSLContext | bool] = {}
        self._stopping = asyncio.Event()
        self._running = False

    def wake(self) -> None:
        """Tell the loops there is something new in the outbox (call after the commit)."""
        for event in self._wakes.values():
            event.set()

    async def start(self) -> None:
        if self._running:
            raise RuntimeError("the webhook sender is already running")
        self._running = True
        self._stopping.clear()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
        )
        self._wakes = {t.url: asyncio.Event() for t in self.targets}
        self._ssl = {t.url: t.ssl_context() for t in self.targets}
        self._tasks = [
            self.supervisor.spawn(f"webhook-{t.safe_url}", functools.partial(self._deliver_loop, t))
            for t in self.targets
        ]

    async def stop(self) -> None:
        """Let the loops finish their current request, then close the session."""
        self._running = False
        self._stopping.set()
        self.wake()
        await self.supervisor.stop(self._tasks, grace_seconds=STOP_GRACE_SECONDS)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- the outbox -----------------------------------------------------------------------

    def pending(self, url: str, limit: int) -> list[QueuedEvent]:
        """Events `url` has not taken yet, oldest first."""
        rows = self.store.webhook_pending(url, limit)
        return [QueuedEvent(event_id, kind, body) for event_id, kind, body in rows]

    def _record_attempt(self, event_id: str, url: str, status: int | None) -> None:
        self.store.webhook_attempt(event_id, url, status)

    def _mark_delivered(self, event_id: str, url: str, status: int) -> None:
        self.store.webhook_delivered(event_id, url, status, [t.url for t in self.targets])

    # --- delivery -------------------------------------------------------------------------

    async def _deliver_loop(self, target: WebhookTarget) -> None:
        wake = self._wakes[target.url]
        where = target.safe_url
        retry = Retry.after(self.settings.retry_initial_seconds, self.settings.retry_max_seconds)
        while self._running:
            batch = self.pending(target.url, self.settings.batch_size)
            if not batch:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=self.settings.poll_seconds)
                continue
            await self.store.durable()  # never announce what a power cut could undo
            delay: float | None = None
            for item in batch:
                if not self._running:
                    return
                status = await self._post(target, item)
                outcome = log.bind(url=where, event_id=item.event_id, type=item.type, status=status)
                if status is not None and 200 <= status < 300:
                    self._mark_delivered(item.event_id, target.url, status)
                    outcome.info("webhook_delivered")
                    continue
                self._record_attempt(item.event_id, target.url, status)
                delay = retry.next_delay()
                outcome.warning("webhook_retry", delay=round(delay, 3))
                break
            if delay is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            else:
                retry.succeeded()

    async def _post(self, target: WebhookTarget, item: QueuedEvent) -> int | None:
        """POST one event; the HTTP status, or None if no answer came."""
        session = self._session
        if session is None:
            raise RuntimeError("the webhook sender is not started")
        timestamp = clock.now()
        headers = {
            "Content-Type": "application/json",
            "X-NRM-Event-Id": item.event_id,
            "X-NRM-Timestamp": str(timestamp),
            "X-NRM-Signature": sign(target.secret, timestamp, item.body),
        }
        try:
            async with session.post(
                target.url,
                data=item.body,
                headers=headers,
                allow_redirects=False,
                ssl=self._ssl[target.url],
            ) as response:
                # Read (bounded) so the connection can be reused; the answer is not kept.
                await response.content.read(4096)
                return response.status
        except TRANSIENT as e:
            _raise_if_cancelled()
            log.warning(
                "webhook_unreachable",
                url=target.safe_url,
                event_id=item.event_id,
                error=type(e).__name__,
            )
            return None


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library reported as a timeout or connection error."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
