"""The bus link's states and pace (agents/bus_link.py), fed real nats-py errors."""

from __future__ import annotations

import ssl

import nats.errors
import pytest
from structlog.testing import capture_logs

from agents.bus_link import BusLink, is_refusal, is_tls_failure
from runtime.backoff import Backoff

REFUSED = nats.errors.Error("nats: 'Authorization Violation'")


def link(draw: float = 0.0) -> BusLink:
    return BusLink(agency="police", backoff=Backoff(0.5, 4.0, uniform=lambda: draw))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (REFUSED, True),
        (nats.errors.AuthorizationError(), True),
        (nats.errors.NoServersError(), False),
        (TimeoutError(), False),
        (ConnectionRefusedError(), False),
        (nats.errors.UnexpectedEOF(), False),
    ],
)
def test_refusals_are_told_from_outages(error: Exception, expected: bool) -> None:
    """Only the server refusing the credentials counts as a refusal."""
    assert is_refusal(error) is expected


async def test_one_log_line_per_state_change_not_per_attempt() -> None:
    """Twenty refused attempts after a drop log two state changes, and count twenty."""
    failures: list[str] = []
    bus = link()
    bus.on_failure = failures.append
    with capture_logs() as logs:
        bus.on_connected()
        bus.on_disconnected()
        for _ in range(20):
            await bus.on_error(REFUSED, attempting=True)
    states = [(e["previous"], e["state"]) for e in logs if e["event"] == "bus_state"]
    assert states == [
        ("connecting", "connected"),
        ("connected", "reconnecting"),
        ("reconnecting", "refused"),
    ]
    assert [e for e in logs if e["event"] == "bus_error"] == []
    assert (bus.state, bus.attempts, failures) == ("refused", 20, ["refused"] * 20)
    assert not bus.up.is_set()


async def test_delays_grow_to_the_cap_and_reset_on_connection() -> None:
    """Each attempt waits the jittered delay of its number, capped; a connection starts the
    count again."""
    bus = link(draw=0.001)  # near-zero waits keep the test fast; the ratios are what count
    for _ in range(6):
        await bus.on_error(nats.errors.NoServersError(), attempting=True)
    assert bus.state == "unreachable"
    assert bus.delays == pytest.approx([0.001 * c for c in (0.5, 1.0, 2.0, 4.0, 4.0, 4.0)])
    bus.on_connected()
    assert (bus.attempts, bus.delays, bus.up.is_set()) == (0, [], True)
    await bus.on_error(REFUSED, attempting=True)
    assert bus.delays == pytest.approx([0.0005])


async def test_errors_while_connected_do_not_wait() -> None:
    """A permissions error on a live connection is logged, not counted or waited for; a drop
    is left to the state change that follows."""
    bus = link(draw=1.0)
    bus.on_connected()
    with capture_logs() as logs:
        await bus.on_error(nats.errors.Error("nats: permissions violation"), attempting=False)
        await bus.on_error(nats.errors.UnexpectedEOF(), attempting=False)
    assert [e["event"] for e in logs] == ["bus_error"]
    assert (bus.state, bus.attempts) == ("connected", 0)


async def test_a_failed_tls_handshake_is_its_own_state_and_a_reset_after_it_no_change() -> None:
    """A certificate the agent does not trust, or a server refusing the agent's (which then
    resets the next attempt), shows `tls-failed` once, not a flap to `unreachable` per
    attempt; a refused connection afterwards is an outage again."""
    failures: list[str] = []
    bus = link()
    bus.on_failure = failures.append
    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    required = ssl.SSLError(1, "tlsv13 alert certificate required")
    with capture_logs() as logs:
        for error in (untrusted, ConnectionResetError(), required, ConnectionResetError()):
            await bus.on_error(error, attempting=True)
        await bus.on_error(ConnectionRefusedError(), attempting=True)
    states = [e["state"] for e in logs if e["event"] == "bus_state"]
    assert states == ["tls-failed", "unreachable"]
    assert failures == ["tls-failed"] * 4 + ["unreachable"]
    assert is_tls_failure(required) and not is_tls_failure(ConnectionResetError())
