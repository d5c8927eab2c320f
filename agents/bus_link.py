"""The state of the agent's link to the bus, and the pace of its reconnection attempts.

States: `connecting` (no attempt has failed yet), `connected`, `reconnecting` (the link
dropped; retrying), `unreachable` (the last attempt found no server or timed out), `refused`
(the bus refused this agency's credentials: its NKey is not, or no longer, authorized —
typically the agency was removed from the directory), `tls-failed` (the TLS handshake
failed: the server's certificate is not trusted by `[nats_tls] ca_file` or does not carry the
expected name, or a server requiring mutual TLS refused this agent's certificate or its
absence — a configuration to fix, not an outage to wait out). One log line `bus_state` per change
of state, never one per attempt; attempts are counted (`nrm_bus_connect_failures_total`).

Pacing: nats-py awaits the error callback after every failed connection attempt, on the
first connection and on every reconnection alike, and retries as soon as it returns. The
link sleeps there a capped, exponentially growing, fully jittered delay (runtime.backoff),
so the agent stops knocking at a fixed rate; nats-py's own fixed wait is set to zero.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final

import nats.errors
import structlog

from runtime import clock
from runtime.backoff import Backoff

log = structlog.get_logger("nrm.transport")

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
    """Owned by the Transport; fed by nats-py's callbacks."""

    def __init__(
        self,
        *,
        agency: str,
        backoff: Backoff,
        on_failure: Callable[[str], None] = lambda state: None,
    ) -> None:
        self.agency = agency
        self.backoff = backoff
        #: Called with `unreachable` or `refused` after each failed attempt (for a metric).
        self.on_failure = on_failure
        self.state = "connecting"
        self.since = clock.now()
        #: Failed attempts since the link was last connected.
        self.attempts = 0
        #: Delays chosen since the link was last connected (the latest 64).
        self.delays: list[float] = []
        #: Set while connected: loops that need the bus wait on it instead of polling.
        self.up = asyncio.Event()
        self.log = log.bind(agency=agency)

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def _become(self, state: str, **extra: Any) -> None:
        if state == self.state:
            return
        level = logging.INFO if state == "connected" else logging.WARNING
        self.log.log(
            level, "bus_state", state=state, previous=self.state, attempts=self.attempts, **extra
        )
        self.state = state
        self.since = clock.now()
        if state == "connected":
            self.up.set()
        else:
            self.up.clear()

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
        elif self.state == "tls-failed" and isinstance(error, ConnectionResetError):
            # nats-server resets the next attempt of a client whose certificate it just
            # refused: the same cause, not a change of state (nor a log line per attempt)
            state = "tls-failed"
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
