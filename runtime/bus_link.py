"""The state of a long-lived client's link to the bus, told from nats-py's callbacks, and
the pace of its reconnection attempts: the agent's (agents/bus_link.py, logging `bus_state`
bound with its agency), the ledger's audit consumer, and the directory follower of the
ledger and of the bus authority.

States: `connecting` (no attempt has failed yet), `connected`, `reconnecting` (the link
dropped), `unreachable` (no server answered, or in time), `refused` (the bus refused the
NKey: it is not, or no longer, authorized — typically the agency was removed from the
directory, or the bus does not admit the ledger's identity), `tls-failed` (the TLS handshake
failed: the server's certificate is not trusted or does not carry the expected name, or a
server requiring mutual TLS refused ours: a configuration to fix, not an outage to wait
out). One log line per change of state, never one per attempt, with nats-py's own words
(`detail`); the event is the owner's (`event(state)`), the logger bound with ids only.

Pacing: nats-py awaits the error callback after each failed attempt and retries when it
returns; the link sleeps there a capped, exponentially growing, fully jittered delay
(runtime.backoff), and nats-py's own fixed wait is set to zero (`connect_linked`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import nats.errors
from nats.aio.client import Client

from . import clock
from .backoff import Backoff
from .bus_client import close_client
from .supervisor import unless_stopping

if TYPE_CHECKING:  # endpoint.py imports bus_client, which this module imports
    from .endpoint import BusEndpoint

STATES: Final = ("connecting", "connected", "reconnecting", "unreachable", "refused", "tls-failed")
#: Errors reported when an established connection drops (the reconnection that follows is
#: what the link reports).
_DROPPED = (nats.errors.UnexpectedEOF, nats.errors.StaleConnectionError, OSError)


def is_tls_failure(error: BaseException) -> bool:
    """Whether `error` is a failed TLS handshake (ours or the server's verdict)."""
    return isinstance(error, ssl.SSLError)


def is_refusal(error: BaseException) -> bool:
    """Whether `error` is the server refusing our credentials (nats-py raises a plain
    `Error("nats: 'Authorization Violation'")` during CONNECT, `AuthorizationError` later)."""
    if isinstance(error, nats.errors.AuthorizationError):
        return True
    text = str(error).lower()
    return "authorization violation" in text or "authentication" in text


class BusLink:
    """Fed by nats-py's callbacks (`connect_linked`); read by its owner's /healthz."""

    def __init__(
        self,
        *,
        backoff: Backoff,
        log: Any,
        event: Callable[[str], str] = lambda state: "bus_state",
        on_failure: Callable[[str], None] = lambda state: None,
    ) -> None:
        self.backoff = backoff
        #: A structlog logger bound with ids only.
        self.log = log
        #: The log event of a change to a state.
        self.event = event
        #: Called with the state after each failed attempt (for a metric).
        self.on_failure = on_failure
        self.state = "connecting"
        self.since = clock.now()
        #: Failed attempts since the link was last connected.
        self.attempts = 0
        #: Delays chosen since the link was last connected (the latest 64).
        self.delays: list[float] = []
        #: Set while connected: loops that need the bus wait on it instead of polling.
        self.up = asyncio.Event()
        #: Monotonic time the link was last not connected since (a duration, not a date).
        self._down_at: float | None = time.monotonic()
        #: The client whose callbacks speak for the link; None once its owner closes it.
        self.client: Client | None = None

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def down_seconds(self) -> float:
        """How long the link has been other than connected (0 while connected)."""
        return 0.0 if self._down_at is None else time.monotonic() - self._down_at

    def _become(self, state: str, **extra: Any) -> None:
        if state == self.state:
            return
        level = logging.INFO if state == "connected" else logging.WARNING
        self.log.log(
            level, self.event(state), state=state, previous=self.state,
            attempts=self.attempts, **extra,
        )  # fmt: skip
        if state == "connected":
            self._down_at = None
            self.up.set()
        else:
            self._down_at = self._down_at or time.monotonic()
            self.up.clear()
        self.state = state
        self.since = clock.now()

    def on_connected(self) -> None:
        self._become("connected")
        self.attempts = 0
        self.delays.clear()

    def on_disconnected(self) -> None:
        if self.state == "connected":
            self._become("reconnecting")

    async def on_error(self, error: Exception, *, attempting: bool) -> None:
        """Record an error nats-py reported. While not connected it is a failed attempt:
        note the state it shows, then wait the back-off delay before nats-py tries again."""
        if not attempting:
            if is_refusal(error):
                self._become("refused", error=type(error).__name__, detail=_detail(error))
            elif not isinstance(error, _DROPPED):  # a drop is logged as the state change
                # nats errors name subjects and permissions, never payloads
                self.log.warning("bus_error", error=type(error).__name__, detail=_detail(error))
            return
        if is_refusal(error):
            state = "refused"
        elif is_tls_failure(error):
            state = "tls-failed"
        elif self.state in ("tls-failed", "refused") and isinstance(error, ConnectionResetError):
            # nats-server resets the attempt that follows its refusal of our certificate or
            # NKey: the same cause, not a change of state (nor a log line per attempt)
            state = self.state
        else:
            state = "unreachable"
        self._become(state, error=type(error).__name__, detail=_detail(error))
        self.on_failure(state)
        delay = self.backoff.delay(self.attempts)
        self.attempts += 1
        self.delays = [*self.delays[-63:], delay]
        await asyncio.sleep(delay)

    def health(self) -> dict[str, Any]:
        return {"state": self.state, "since": self.since, "failed_attempts": self.attempts}


def _detail(error: Exception) -> str:
    """What nats-py says about `error` (`nats: 'Authorization Violation'`, a refused address):
    subjects, permissions and addresses, never payloads; at most 200 characters."""
    return str(error)[:200]


#: How long a released client, still reconnecting until it is closed, waits between attempts.
RELEASED_CLIENT_PAUSE_SECONDS = 1.0


async def connect_linked(
    link: BusLink, endpoint: BusEndpoint, *, stopping: asyncio.Event, **options: Any
) -> Client | None:
    """A client connected to one of `endpoint`'s servers that reconnects for ever, its
    attempts paced and its state told by `link`; None if `stopping` is set first.
    `release` closes it."""
    nc = link.client = Client()

    async def on_error(error: Exception) -> None:
        if nc is link.client:
            await link.on_error(error, attempting=not nc.is_connected)
        else:  # released, closing: nothing else paces its attempts (reconnect_time_wait=0)
            await asyncio.sleep(RELEASED_CLIENT_PAUSE_SECONDS)

    async def on_disconnected() -> None:
        if nc is link.client:
            link.on_disconnected()

    async def on_reconnected() -> None:
        if nc is link.client:
            link.on_connected()

    try:
        await unless_stopping(
            nc.connect(
                **endpoint.connect_options(),  # servers, tls, tls_hostname
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0,  # the link's back-off paces attempts
                connect_timeout=2,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                **options,
            ),
            stopping,
        )
    except BaseException as e:
        await release(link, nc)  # whatever the unfinished attempt left open
        if isinstance(e, TimeoutError) and stopping.is_set():
            return None
        raise
    link.on_connected()
    return nc


async def release(link: BusLink, nc: Client) -> None:
    """Close `nc` (runtime.bus_client.close_client); its callbacks no longer speak for
    `link`. A link left connected says `reconnecting` until the next attempt tells another:
    its owner dropped the connection, and /healthz must not show one that is gone."""
    if link.client is nc:
        link.client = None
        if link.connected:
            link.on_disconnected()
    await close_client(nc)
