"""Background loops under one supervisor (runtime/supervisor.py): a loop that dies degrades
/healthz with its reason in the agent, the ledger and the bus authority; a failed start
leaves nothing running."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from agents import Agent
from agents.config import AgentConfig
from agents.trust import TrustState
from broker.ledger import Ledger, LedgerConfig
from broker.trust_status import serve_status
from runtime.backoff import Backoff
from runtime.keydir import load_key_dir, read_passphrase
from runtime.supervisor import Supervisor, finish_within

from .support import Mechanism, eventually


class LoopFailed(Exception):
    """What the loops below die of (a message that must not reach the log)."""


async def _dies() -> None:
    raise LoopFailed("secret detail")


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Mechanism]:
    """A secured bus with its authority, and the ledger; no agent runs yet."""
    async with aiohttp.ClientSession() as http:
        m = await Mechanism.create(tmp_path, http)
        try:
            yield m
        finally:
            await m.close()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# --- the supervisor alone -----------------------------------------------------------------------


async def test_a_loop_that_raises_is_recorded_by_name_and_type_only() -> None:
    """The death is kept as `task-died:<name>` and logged with the exception's type, never its
    text; the other loops keep running."""
    supervisor = Supervisor("test")
    blocked = asyncio.Event()
    with capture_logs() as logs:
        dead = supervisor.spawn("dies", _dies)
        supervisor.spawn("waits", blocked.wait)  # type: ignore[arg-type]
        await asyncio.wait([dead])
    assert supervisor.reasons() == ["task-died:dies"]
    assert supervisor.health() == {
        "status": "degraded",
        "reasons": ["task-died:dies"],
        "tasks": ["waits"],
    }
    died = [e for e in logs if e["event"] == "task_died"]
    assert [(e["task"], e["error"]) for e in died] == [("dies", "LoopFailed")]
    assert "secret detail" not in repr(logs)
    await supervisor.stop()
    assert supervisor.running() == ()


async def test_spawning_a_dead_loop_again_clears_its_death() -> None:
    """Its owner started it anew: the service is healthy again."""
    supervisor = Supervisor("test")
    await asyncio.wait([supervisor.spawn("loop", _dies)])
    assert supervisor.health()["status"] == "degraded"
    ran = asyncio.Event()

    async def works() -> None:
        ran.set()

    await asyncio.wait([supervisor.spawn("loop", works)])
    assert ran.is_set() and supervisor.health()["status"] == "ok"


async def test_a_restarted_loop_runs_again_after_its_back_off() -> None:
    """With `restart`, the loop is run again; the death is cleared once it is."""
    supervisor = Supervisor("test")
    runs: list[int] = []
    again = asyncio.Event()

    async def fails_once() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise LoopFailed
        again.set()
        await asyncio.Event().wait()  # runs until stopped

    supervisor.spawn("loop", fails_once, restart=Backoff(0.01, 0.01, uniform=lambda: 0.0))
    await asyncio.wait_for(again.wait(), timeout=10)
    assert runs == [0, 1]
    assert supervisor.health() == {"status": "ok", "reasons": [], "tasks": ["loop"]}
    await supervisor.stop()
    assert supervisor.running() == ()


async def test_stop_cancels_and_awaits_every_task() -> None:
    """Nothing keeps running after stop, and a loop that had died does not make it raise."""
    supervisor = Supervisor("test")
    tasks = [supervisor.spawn(f"t{n}", asyncio.Event().wait) for n in range(3)]  # type: ignore[arg-type]
    await asyncio.wait([supervisor.spawn("dies", _dies)])
    await supervisor.stop(grace_seconds=0.01)
    assert all(t.done() for t in tasks) and supervisor.running() == ()


async def test_work_that_ignores_cancellation_is_abandoned_past_its_deadline() -> None:
    """finish_within gives up on work that swallows its cancel: TimeoutError, logged, and
    the work is kept until it ends; work that ends in time gives its result."""
    release = asyncio.Event()

    async def stubborn() -> str:
        while True:
            try:
                await release.wait()
                return "late"
            except asyncio.CancelledError:
                continue  # as a library that turns a cancel into a retry

    assert await finish_within(asyncio.sleep(0, "prompt"), 1.0, what="prompt") == "prompt"
    with capture_logs() as logs, pytest.raises(TimeoutError):
        await finish_within(stubborn(), 0.05, what="stubborn")
    assert [e["what"] for e in logs if e["event"] == "abandoned_past_deadline"] == ["stubborn"]
    release.set()  # the abandoned work can still end, and is not lost meanwhile
    await eventually(_nothing_abandoned, what="the abandoned work to end")


async def _nothing_abandoned() -> bool:
    from runtime import supervisor

    return not supervisor._ABANDONED


async def test_a_name_runs_once_at_a_time() -> None:
    """Spawning a name that is still running is a programming error."""
    supervisor = Supervisor("test")
    supervisor.spawn("loop", asyncio.Event().wait)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        supervisor.spawn("loop", asyncio.Event().wait)  # type: ignore[arg-type]
    await supervisor.stop()


# --- the services -------------------------------------------------------------------------------


async def _health(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    async with http.get(url + "/healthz") as r:
        return r.status, await r.json()


async def test_a_dead_loop_turns_every_healthz_degraded_with_its_reason(
    services: Mechanism, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agent (its timers loop dies by the test-only failpoint), ledger (its database is
    closed under it) and bus authority: 503 with `task-died:<name>` while the rest runs (and
    the authority's status server answers its errors problem+json, as the others do)."""
    m = services
    monkeypatch.setenv("NRM_FAILPOINT", "timers-raise")
    agent = await m.start("police", wait=False)

    async def agent_degraded() -> bool:
        status, body = await _health(m.http, agent.api_url)
        return status == 503 and "task-died:timers-police" in body["reasons"]  # type: ignore[operator]

    await eventually(agent_degraded, what="the agent's /healthz to name the dead timers loop")
    assert "transport-police" in agent.health()["tasks"]

    ledger = m.sandbox.ledger
    assert ledger is not None
    ledger.store.close()

    async def ledger_degraded() -> bool:
        status, body = await _health(m.http, ledger.url)
        return status == 503 and "task-died:ledger-checkpoints" in body["reasons"]  # type: ignore[operator]

    await eventually(ledger_degraded, what="the ledger's /healthz to name the dead checkpointer")

    authority = m.sandbox.authority
    assert authority is not None
    await asyncio.wait([authority.supervisor.spawn("probe", _dies)])
    status_runner = await serve_status(authority, host="127.0.0.1", port=0)
    try:
        host, port = status_runner.addresses[0][:2]
        status, body = await _health(m.http, f"http://{host}:{port}")
        # Its errors are problem+json too: no such route, a request line it cannot parse.
        for path, refused in (("/nope", 404), ("/healthz?" + "9" * 9000, 400)):
            async with m.http.get(f"http://{host}:{port}{path}") as r:
                assert (r.status, r.content_type) == (refused, "application/problem+json")
    finally:
        await status_runner.cleanup()
    assert status == 503 and body["reasons"] == ["task-died:probe"], body
    assert "directory-authority" in body["tasks"]  # type: ignore[operator]


async def test_an_agent_that_cannot_bind_its_port_leaves_nothing_running(
    services: Mechanism, taken_port: int
) -> None:
    """The API opens last: its failure stops the transport and every loop, closes the bus
    connection and the database, and is raised."""
    m = services
    config = AgentConfig.load(m.setups["shelter"].config_path)
    config = dataclasses.replace(config, api_port=taken_port)
    keys = load_key_dir(config.key_dir, passphrase=read_passphrase(file=config.passphrase_file))
    trust = TrustState(
        pinned_root=config.trust_root, cache_dir=config.trust_cache, agency="shelter"
    )
    agent = Agent(config, keys=keys, trust=trust)
    with pytest.raises(OSError):
        await agent.start()
    assert agent.supervisor.running() == ()
    assert [t for t in asyncio.all_tasks() if t.get_name().endswith("-shelter")] == []
    assert agent.transport._nc is None
    with pytest.raises(Exception, match="closed"):
        agent.store.pending_count()

    async def no_bus_connection() -> bool:
        names = [c.get("name") for c in await asyncio.to_thread(m.bus.connections)]
        return "nrm-agent-shelter" not in names

    await eventually(no_bus_connection, what="the bus to see no shelter connection")


async def test_a_ledger_that_cannot_bind_its_port_leaves_nothing_running(
    services: Mechanism, taken_port: int, tmp_path: Path
) -> None:
    """The directory follower it started is stopped and its database closed."""
    m = services
    config = LedgerConfig.load(m.sandbox.ledger_home / "ledger.toml")
    config = dataclasses.replace(config, port=taken_port, database=tmp_path / "second.db")
    passphrase = read_passphrase(file=config.passphrase_file)
    ledger = Ledger(config, signer=load_key_dir(config.key_dir, passphrase=passphrase))
    with pytest.raises(OSError):
        await ledger.start()
    assert ledger.supervisor.running() == ()
    assert ledger._runner is None
    with pytest.raises(Exception, match="closed"):
        ledger.store.size()
