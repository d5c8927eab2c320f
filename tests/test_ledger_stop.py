"""Stopping the ledger while its TLS bus is down: within its bound, and nothing left for
asyncio to report ("exception was never retrieved"); and nats-py's harmless TLS eof_received
warning kept off asyncio's logger."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.js.errors
import pytest

from broker import NatsServer
from broker.authz import LEDGER_CONSUMER
from keys.subjects import AUDIT_STREAM
from runtime import supervisor
from runtime.bus_client import (
    _SSL_EOF_FILTER,
    CLOSE_SECONDS,
    SSL_EOF_WARNING,
    close_client,
    ignore_errors,
)
from runtime.endpoint import BusEndpoint
from runtime.keydir import load_key_dir

from .support import Mechanism, eventually, make_tls

#: The ledger's stop: the follower's and the consumer's close (drain or close, then
#: abandon: runtime/bus_client.py), the supervisor's grace.
LEDGER_STOP_SECONDS = 2 * (2 * CLOSE_SECONDS) + 3.0


async def test_the_ledger_stops_cleanly_while_its_tls_bus_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    caplog.set_level(logging.DEBUG, logger="asyncio")
    try:
        async with aiohttp.ClientSession() as http:
            m = await Mechanism.create(tmp_path / "m", http, tls=make_tls(tmp_path / "pki"))
            try:
                ledger = m.sandbox.ledger
                assert ledger is not None

                keys = load_key_dir(
                    m.sandbox.admin.path / "operator", passphrase=m.sandbox.admin_passphrase
                )
                assert keys.nats_seed is not None
                nc = await nats.connect(
                    **m.sandbox.bus_endpoint.connect_options(),
                    nkeys_seed_str=keys.nats_seed.decode(),
                    allow_reconnect=False,
                )
                try:
                    js = nc.jetstream()

                    async def fetching() -> bool:  # connected, its subscription to drain
                        with contextlib.suppress(nats.js.errors.NotFoundError):
                            info = await js.consumer_info(AUDIT_STREAM, LEDGER_CONSUMER)
                            return (info.num_waiting or 0) > 0
                        return False

                    await eventually(fetching, what="the ledger to fetch from the bus")
                finally:
                    await nc.close()
                pid = m.bus.pid
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)  # down without closing: the ledger still drains
                try:
                    async with asyncio.timeout(LEDGER_STOP_SECONDS):
                        await m.sandbox.stop_ledger()
                finally:
                    os.kill(pid, signal.SIGCONT)
                assert ledger.supervisor.reasons() == []

                async def closes_ended() -> bool:  # those given up on end with the bus back
                    return not supervisor._ABANDONED

                await eventually(closes_ended, what="the abandoned closes to end")
            finally:
                await m.close()
        for _ in range(3):  # what was left unretrieved is reported when it is collected
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    messages = [str(c.get("message")) for c in reported]
    assert not [x for x in messages if "never retrieved" in x], reported
    logged = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert not [x for x in logged if "never retrieved" in x], logged


async def test_the_tls_eof_warning_is_kept_off_and_other_asyncio_warnings_are_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """nats-py's TLS connections make asyncio warn when the server closes them; with the
    options of a TLS BusEndpoint that one message is dropped, other asyncio records pass."""
    tls = make_tls(tmp_path / "pki")
    endpoint = BusEndpoint.of("tls://127.0.0.1:1", tls.client())  # the port is replaced
    asyncio_log = logging.getLogger("asyncio")
    caplog.set_level(logging.WARNING, logger="asyncio")

    async def warned_when_the_server_closes(name: str) -> list[str]:
        caplog.clear()
        with NatsServer(store_dir=tmp_path / name, tls=tls.server()) as server:
            disconnected = asyncio.Event()

            async def on_disconnect() -> None:
                disconnected.set()

            nc = await nats.connect(
                **options | {"servers": [server.url]},
                disconnected_cb=on_disconnect,
                error_cb=ignore_errors,
            )
            try:
                await nc.flush()
                server.stop()  # it closes the TLS connection: asyncio's eof_received

                async def noticed() -> bool:
                    return disconnected.is_set()

                await eventually(noticed, what="the client to see the server close")
            finally:
                await close_client(nc)
        return [r.getMessage() for r in caplog.records if r.name == "asyncio"]

    options = endpoint.connect_options()
    asyncio_log.removeFilter(_SSL_EOF_FILTER)  # what nats-py does without it
    try:
        before = await warned_when_the_server_closes("without")
    finally:
        endpoint.connect_options()  # installed again
    assert SSL_EOF_WARNING in before

    after = await warned_when_the_server_closes("with")
    endpoint.connect_options()  # idempotent: one filter however often called
    assert asyncio_log.filters.count(_SSL_EOF_FILTER) == 1
    asyncio_log.warning("another asyncio warning")
    logged = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert SSL_EOF_WARNING not in after and SSL_EOF_WARNING not in logged
    assert "another asyncio warning" in logged
