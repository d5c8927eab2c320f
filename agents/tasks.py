"""Stopping the agent's background tasks the same way everywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

log = structlog.get_logger("nrm.tasks")


async def stop_tasks(tasks: Sequence[asyncio.Task[None]], *, grace_seconds: float) -> None:
    """Give `tasks` `grace_seconds` to finish their current step (their owner has already
    told them to stop), cancel the late ones, and await all of them. A task that had failed
    is logged, not re-raised: stopping always finishes. The caller's own cancellation is
    never swallowed (gather re-raises it)."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=grace_seconds)
    for task in late:
        task.cancel()
    await cancel_and_wait(tasks)


async def cancel_and_wait(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and await them all; log any that had failed."""
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            log.error("task_failed", task=task.get_name(), error=type(result).__name__)
