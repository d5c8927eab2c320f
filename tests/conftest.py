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
async def mechanism(tmp_path: Path) -> AsyncIterator[Mechanism]:
    """Three agencies (police, shelter, coordinator) admitted to a signed directory, a bus
    secured from it, and their agents running and trusting the directory."""
    async with aiohttp.ClientSession() as http:
        m = await Mechanism.create(tmp_path, http)
        try:
            for agency, _, _ in AGENCIES:
                await m.start(agency)
            yield m
        finally:
            await m.close()
