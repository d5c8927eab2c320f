"""Waiting for a condition (runtime/poll.py)."""

from __future__ import annotations

from runtime.poll import poll


async def test_a_condition_is_asked_again_until_it_holds() -> None:
    """Each round asks the check anew; the first True ends the wait with True."""
    answers = iter([False, False, True])
    asked = 0

    async def check() -> bool:
        nonlocal asked
        asked += 1
        return next(answers)

    assert await poll(check, timeout=60, interval=0) is True
    assert asked == 3


async def test_a_condition_that_never_holds_ends_in_false() -> None:
    """At the deadline the answer is False, not an exception."""

    async def never() -> bool:
        return False

    assert await poll(never, timeout=0.05, interval=0.01) is False
