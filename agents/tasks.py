"""Stopping the agent's background tasks the same way everywhere."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence


async def stop_tasks(tasks: Sequence[asyncio.Task[None]], *, grace_seconds: float) -> None:
    """Give `tasks` `grace_seconds` to finish their current step (their owner has already
    told them to stop), cancel the late ones, and await all of them."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=grace_seconds)
    for task in late:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
