"""Shared fixtures: real servers, started and stopped around each test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import NatsServer, provision


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A running nats-server with its own store under `tmp_path` and the streams provisioned."""
    server = NatsServer(store_dir=tmp_path / "nats")
    server.start()
    try:
        await provision(server.url)
        yield server
    finally:
        server.stop()
