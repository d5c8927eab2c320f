"""Shared fixtures: real servers, started and stopped around each test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from broker import NatsServer, provision

from .support import AGENCIES, Mechanism


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


@pytest.fixture
async def mechanism(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Mechanism]:
    """Three agencies (police, shelter, coordinator) with agents running on `nats_server`."""
    async with aiohttp.ClientSession() as http:
        m = Mechanism.prepare(tmp_path, nats_server, http)
        try:
            for agency, _ in AGENCIES:
                await m.start(agency)
            yield m
        finally:
            await m.stop_all()
