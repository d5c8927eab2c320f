"""Waiting for a condition that another task or process makes true: ask again until it
holds or a deadline passes.

Every round asks the whole question again (no condition is latched once and trusted after);
the deadline is monotonic time, not the wall clock (runtime/clock.py). The caller says what
a timeout means: a failed test, a failed demo step, or a plain False.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

#: How long to wait between two rounds.
INTERVAL_SECONDS = 0.05


async def poll(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float,  # noqa: ASYNC109 - a deadline answered with False; a check is never cancelled
    interval: float = INTERVAL_SECONDS,
) -> bool:
    """True as soon as `check()` holds; False once `timeout` seconds passed without."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return False
