"""Connecting a short-lived NATS client to every node in turn, and closing a NATS client in
whatever state it is in, within a bound.

`connect_once` is for a command that does one thing and ends (provisioning, publishing the
directory): every server of the endpoint is tried, each twice ONCE_RETRY_SECONDS apart; if
none takes the client, a server's refusal of the NKey is raised if there was one, else the
last server's own error (TLS, unreachable). nats-py without reconnection stops at the first
server it picks (the list shuffled): with one node of three down, one attempt in three would
fail; with reconnection its defaults try an unreachable server 60 times, 2 s apart.

Shared by every long-lived bus client (the agent's transport, the ledger's consumer, the
directory follower). nats-py's drain and close can outlive a cancel (drain swallows it, then
flushes and closes; close can wait on a socket nobody reads), and over TLS its close writes
what it buffered while reconnecting into a socket already closed under it, which raises
`AttributeError` from asyncio's TLS transport (`_write_appdata` on None; over plain TCP the
same write is dropped with a warning). So a client whose socket is closed has that buffer
dropped before closing (nothing is lost: unacknowledged publishes are repeated under the
same Nats-Msg-Id, requests are asked again), and a client that will not close in time, or
whose close failed after nats-py had marked it closed (a second close would do nothing), is
abandoned: its tasks and its subscriptions' tasks are cancelled and its socket closed.

nats-py (2.16) waits for its subscriptions' drains with `asyncio.gather`; cancelled during
that wait (a bus that is down but whose socket is still open: the drain's round trip never
comes back) it leaves the gather's CancelledError unretrieved, which asyncio then reports
as "_GatheringFuture exception was never retrieved" with a traceback. Its own drain timeout
retrieves it, so close_client bounds that wait by nats-py's `drain_timeout` (DRAIN_SECONDS),
well within the time before the drain is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client

from .supervisor import finish_within

if TYPE_CHECKING:  # endpoint.py imports this module
    from .endpoint import BusEndpoint

#: How long `connect_once` waits before trying a server that did not answer once more.
ONCE_RETRY_SECONDS = 0.5

#: How long closing a connection may take (draining it first if it is up), and again once
#: cancelled, before the client is abandoned (close_client).
CLOSE_SECONDS = 5.0

#: How long nats-py's drain waits for the subscriptions' drains (its `drain_timeout`): less
#: than CLOSE_SECONDS and than the ledger's stop grace, so that its own timeout ends that
#: wait, never a cancel (see the module docstring).
DRAIN_SECONDS = 2.0

#: What closing a client may raise besides a timeout: the bus's errors, a socket's, and the
#: AttributeError of a write into a TLS transport that is gone (see the module docstring).
_CLOSE_ERRORS = (nats.errors.Error, OSError, ConnectionError, AttributeError)


async def close_client(nc: Client) -> None:
    """Close `nc` within 2 * CLOSE_SECONDS: drained if it is connected, else closed; past
    the deadline, or if closing fails, abandoned. Never raises but for cancellation."""
    if not nc.is_connected and _socket_closed(nc):
        _drop_pending(nc)
    try:
        if nc.is_connected:
            options = getattr(nc, "options", None)  # nats-py's connect options
            if isinstance(options, dict):
                options["drain_timeout"] = min(options.get("drain_timeout", 30), DRAIN_SECONDS)
            await finish_within(nc.drain(), CLOSE_SECONDS, what="bus-drain")
        else:
            await finish_within(nc.close(), CLOSE_SECONDS, what="bus-close")
    except TimeoutError:
        _abandon(nc)
    except asyncio.CancelledError:  # the caller's stop grace ran out: nothing left running
        _abandon(nc)
        raise
    except _CLOSE_ERRORS:
        if nc.is_closed:
            # nats-py marks the client CLOSED before the step that failed, so a second
            # close() would return at once, its subscriptions' tasks left running
            _abandon(nc)
            return
        # e.g. a drain refused while reconnecting, or the socket closed meanwhile: close
        # instead, without what can no longer be written
        if _socket_closed(nc):
            _drop_pending(nc)
        try:
            await finish_within(nc.close(), CLOSE_SECONDS, what="bus-close")
        except (TimeoutError, *_CLOSE_ERRORS):
            _abandon(nc)


def _socket_closed(nc: Client) -> bool:
    """Whether the socket under `nc` is closed or closing (nats-py's own attributes, looked
    up defensively: no socket known counts as closed)."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    transport = getattr(writer, "transport", None)
    if not isinstance(transport, asyncio.BaseTransport):
        return True
    return transport.is_closing()


def _drop_pending(nc: Client) -> None:
    """Forget what `nc` buffered for a socket that is gone (see the module docstring)."""
    if hasattr(nc, "_pending") and hasattr(nc, "_pending_data_size"):
        nc._pending = []
        nc._pending_data_size = 0


def _abandon(nc: Client) -> None:
    """Cut what a client that would not close still runs: its reader, pinger, flusher and
    reconnection tasks, and its socket. nats-py has no public call for this; these are its
    own attributes, looked up defensively."""
    for name in ("_reading_task", "_ping_interval_task", "_flusher_task", "_reconnection_task"):
        task = getattr(nc, name, None)
        if isinstance(task, asyncio.Future) and not task.done():
            task.cancel()
    subs = getattr(nc, "_subs", None)
    if isinstance(subs, dict):
        for sub in list(subs.values()):
            stop = getattr(sub, "_stop_processing", None)  # its callback task, its iterator
            if callable(stop):
                with contextlib.suppress(RuntimeError, AttributeError):
                    stop()
            waiting = getattr(sub, "_pending_next_msgs_calls", None)
            if isinstance(waiting, dict):
                for future in waiting.values():
                    future.cancel()
                waiting.clear()
        subs.clear()
    transport = getattr(nc, "_transport", None)
    if transport is not None:
        with contextlib.suppress(OSError, RuntimeError, AttributeError):
            transport.close()


async def ignore_errors(error: Exception) -> None:
    """An error callback for a connection whose caller reports the error nats-py raises
    (`connect_once`, and clients that do not reconnect)."""


async def connect_once(
    endpoint: BusEndpoint, *, nkeys_seed: bytes | None, connect_timeout: float, **options: Any
) -> Client:
    """A client connected to one of `endpoint`'s servers, each tried twice; if none takes
    it, a refusal (AuthorizationError) or else the last server's error (`connect_timeout`:
    of each attempt)."""
    settings: dict[str, Any] = {
        **endpoint.connect_options(),
        "connect_timeout": connect_timeout,
        "allow_reconnect": True,  # what makes nats-py go on to the next server
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": ONCE_RETRY_SECONDS,
        "nkeys_seed_str": None if nkeys_seed is None else nkeys_seed.decode("ascii"),
        **options,
    }
    failures: list[Exception] = []

    async def remember(error: Exception) -> None:
        if isinstance(error, nats.errors.NoServersError):
            return
        if "authorization violation" in str(error).lower():
            # nats-py raises a plain Error for the server's -ERR during the handshake
            error = nats.errors.AuthorizationError()
        failures.append(error)

    nc = Client()
    try:
        await nc.connect(**settings, error_cb=remember)  # what fails is raised
    except nats.errors.NoServersError as e:
        refusals = [f for f in failures if isinstance(f, nats.errors.AuthorizationError)]
        # a refusal says more than the reset that can follow it on the next attempt
        raise (refusals or failures or [e])[-1] from e
    return nc


#: What asyncio's TLS transport logs (on the "asyncio" logger) each time the peer closes a
#: TLS connection made by nats-py (2.16): nats-py upgrades its socket with `loop.start_tls`
#: and a StreamReaderProtocol of its own, whose connection_made is never called, so that
#: protocol does not know it runs over TLS and returns True from eof_received (asyncio's
#: streams.py returns False over TLS precisely to avoid this warning). Harmless: the
#: connection is closed either way, and nats-py reconnects.
SSL_EOF_WARNING = "returning true from eof_received() has no effect when using ssl"


class _SslEofWarningFilter(logging.Filter):
    """Drops exactly asyncio's SSL_EOF_WARNING; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != SSL_EOF_WARNING


_SSL_EOF_FILTER = _SslEofWarningFilter("nrm.ssl-eof")


def quiet_asyncio_ssl_eof_warning() -> None:
    """Keep asyncio's SSL_EOF_WARNING (nats-py 2.16's, see above) off the "asyncio" logger,
    and so off stderr; installed once, however often called (every TLS bus connection
    asks for it: BusEndpoint.connect_options)."""
    logger = logging.getLogger("asyncio")
    if _SSL_EOF_FILTER not in logger.filters:
        logger.addFilter(_SSL_EOF_FILTER)
