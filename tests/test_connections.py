"""The bus authority's count of each agency's connections (broker/connections.py) against a
real nats-server with NKey authorization."""

from __future__ import annotations

import os
from pathlib import Path

import nats
import nkeys
from structlog.testing import capture_logs

from broker import NatsServer
from broker.authz import authorization_block
from broker.connections import ConnectionWatch, duplicate_agencies
from keys.subjects import reply_prefix

from .support import eventually


def _seed() -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def _public(seed: bytes) -> str:
    key: str = nkeys.from_seed(bytearray(seed)).public_key.decode()
    return key


def test_duplicate_agencies_counts_by_nkey() -> None:
    """Only agencies with two or more connections are reported; unknown keys are ignored."""
    agencies = {"UPOLICE": "police", "USHELTER": "shelter"}
    connections = [
        {"authorized_user": "UPOLICE"},
        {"authorized_user": "USHELTER"},
        {"authorized_user": "UPOLICE"},
        {"authorized_user": "UOPERATOR"},
        {"authorized_user": "UOPERATOR"},
        {},
    ]
    assert duplicate_agencies(connections, agencies) == {"police": 2}
    assert duplicate_agencies(connections[:2], agencies) == {}


async def test_watch_reports_an_agency_logged_in_twice(tmp_path: Path) -> None:
    """Two connections with one agency's NKey are reported (and logged) until one closes."""
    police, operator = _seed(), _seed()
    block = authorization_block(
        agencies=[("police", _public(police))], auditors=[], operators=[_public(operator)]
    )
    with NatsServer(store_dir=tmp_path / "nats", extra_config=block) as server:
        watch = ConnectionWatch(server, agencies=lambda: {_public(police): "police"})
        first, second = [
            await nats.connect(
                server.url, nkeys_seed_str=police.decode(), inbox_prefix=reply_prefix("police")
            )
            for _ in range(2)
        ]
        try:
            with capture_logs() as logs:
                assert watch.check() == {"police": 2}
                await second.close()

                async def once() -> bool:  # the server notices the close asynchronously
                    return watch.check() == {}

                await eventually(once, what="the second connection to be gone")
        finally:
            await first.close()
        events = [(e["event"], e.get("agency")) for e in logs]
        assert events == [("agency_connected_twice", "police"), ("agency_connected_once", "police")]
