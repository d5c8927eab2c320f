"""The multi-host harness itself (tests/multihost/netns.py): hosts reach each other over the
bridge and nothing else, a cut link cuts, and nothing of a run is left behind."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from .netns import PREFIX, Network, _ip, remove_stale

pytestmark = pytest.mark.multihost


async def reachable(address: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


def test_hosts_talk_over_the_bridge_until_a_link_is_cut(
    netns_available: None, tmp_path: Path
) -> None:
    """A listener on one host is reached from another; not while its link is cut; again once
    it is restored; and every namespace and process is gone after the run."""
    with Network(tmp_path / "logs") as net:
        a, b = net.add_host("a", 2), net.add_host("b", 3)
        server = b.spawn(
            "echo",
            [sys.executable, "-c", ECHO_SERVER, b.address],
        )

        async def until(state: bool) -> bool:
            for _ in range(100):
                if await reachable(b.address, 7000) == state:
                    return True
                await asyncio.sleep(0.05)
            return False

        assert asyncio.run(a.run(until(True))), server.tail()
        # A host has no route but the bridge's: nothing it sends leaves the machine.
        assert not asyncio.run(a.run(reachable("192.0.2.1", 80)))
        assert _ip("-n", a.namespace, "route").stdout.split()[0] == f"{net.subnet}.0/24"
        net.cut(b)
        assert asyncio.run(a.run(until(False)))
        net.restore(b)
        assert asyncio.run(a.run(until(True)))
        assert len(net.leftovers()) == 3  # the bridge's and the two hosts'
    assert net.leftovers() == []
    assert not server.running


def test_a_crashed_runs_namespaces_are_removed(netns_available: None) -> None:
    """Namespaces named for a process that is gone (a run killed with SIGKILL) and what runs
    in them are removed by the next run."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    name = f"{PREFIX}{gone.pid}x1-stale"
    _ip("netns", "add", name)
    sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"])
    try:
        assert name in remove_stale()
        assert sleeper.wait(timeout=10) != 0  # killed
        assert name not in _ip("netns", "list").stdout
    finally:
        sleeper.kill()
        _ip("netns", "del", name, check=False)


ECHO_SERVER = """
import socket, sys
s = socket.create_server((sys.argv[1], 7000))
while True:
    c, _ = s.accept()
    c.close()
"""
