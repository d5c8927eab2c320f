"""Every log line is one JSON object: structlog's events and the standard library's records
(nats-py, aiohttp, asyncio), exceptions as their type only; `nrm agent run` and `nrm ledger
run` say `serving` as an event too, and log a SIGHUP's reload without stopping (docs/RUNBOOK.md,
"Watch it")."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from broker import NatsServer
from nrm import logs

from .support import AGENCIES, free_port, prepared_mechanism

#: How long a service may take to start and log (a cold interpreter on a busy machine).
START_SECONDS = 60.0


def test_stdlib_records_are_json_with_the_exception_type_only() -> None:
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        try:
            raise ValueError("a name someone typed")
        except ValueError as e:
            logging.getLogger("nats.aio.client").error("nats: encountered error", exc_info=e)
        logging.getLogger("asyncio").error(
            "Task exception was never retrieved\nfuture: <Task exception=KeyError('a name')>"
        )
        logging.getLogger("aiohttp.access").info("below the level: not logged")
    finally:
        logs.configure()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert json.loads(lines[1])["event"] == "Task exception was never retrieved"
    assert "a name" not in lines[1]
    event = json.loads(lines[0])
    assert event["event"] == "nats: encountered error"
    assert event["logger"] == "nats.aio.client"
    assert event["level"] == "error"
    assert event["exception_type"] == "ValueError"
    assert "a name someone typed" not in lines[0] and "Traceback" not in lines[0]
    assert len([h for h in logging.getLogger().handlers if isinstance(h, logs._Handler)]) == 1


class Service:
    """`nrm <part> run` in a subprocess, its stderr read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, part: str, config: Path) -> Service:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nrm", part, "run", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        return cls(process)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]  # each line must be JSON

    async def until(self, *wanted: str) -> None:
        """Read stderr until an event named each of `wanted` has been logged."""
        assert self.process.stderr is not None

        async def read() -> None:
            assert self.process.stderr is not None
            while not set(wanted) <= {e["event"] for e in self.events()}:
                line = await self.process.stderr.readline()
                assert line, f"stderr ended before {wanted}: {self.lines}"
                self.lines.append(line.decode().rstrip("\n"))

        await asyncio.wait_for(read(), START_SECONDS)

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(self.process.communicate(), START_SECONDS)
        self.lines += err.decode().splitlines()
        assert out == b"", out
        return self.process.returncode if self.process.returncode is not None else -1


@pytest.fixture
def unreachable_bus_configs(tmp_path: Path) -> tuple[Path, Path]:
    """An agent.toml and a ledger.toml naming a bus nothing listens on."""
    sandbox = prepared_mechanism(tmp_path, admins=1, threshold=1)
    sandbox.bus = NatsServer(store_dir=tmp_path / "bus", port=free_port())
    ledger = sandbox.write_ledger_config()
    sandbox.write_agent_configs()
    return sandbox.agencies[AGENCIES[0][0]].config_path, ledger


async def test_services_log_only_json_lines_and_survive_sighup(
    unreachable_bus_configs: tuple[Path, Path],
) -> None:
    agent_config, ledger_config = unreachable_bus_configs
    agent = await Service.start("agent", agent_config)
    ledger = await Service.start("ledger", ledger_config)
    try:
        await agent.until("serving", "bus_state")
        await ledger.until("serving", "ledger_bus_unreachable")
        for service in (agent, ledger):  # a reload, logged, never terminating
            service.process.send_signal(signal.SIGHUP)
            await service.until("reloaded")
            assert service.process.returncode is None
        # A file that does not load: refused, logged with the file and setting, still running.
        good = ledger_config.read_text()
        ledger_config.write_text(good + 'tokens = "x"\n')
        ledger.process.send_signal(signal.SIGHUP)
        await ledger.until("reload_refused")
        assert ledger.process.returncode is None
        ledger_config.write_text(good)
    finally:
        codes = [await agent.stop(), await ledger.stop()]
    assert codes == [0, 0], (agent.lines, ledger.lines)
    for service, part in ((agent, "agent"), (ledger, "ledger")):
        events = service.events()
        serving = [e for e in events if e["event"] == "serving"]
        assert len(serving) == 1 and serving[0]["part"] == part, events
        assert serving[0]["url"].startswith("http"), serving
        assert all("Traceback" not in line for line in service.lines)
        sighup = [e for e in events if e["event"] == "reloaded"]
        assert [e["part"] for e in sighup] == [part], events
        assert sighup[0]["changed"] == [], sighup  # the same file: nothing changed
    refused = [e for e in ledger.events() if e["event"] == "reload_refused"]
    assert len(refused) == 1 and str(ledger_config) in refused[0]["reason"], refused
    assert "tokens" in refused[0]["reason"], refused
