"""One owner for a service's background loops, and what their deaths mean for its health.

Every service (an agent, the ledger, the bus authority) holds one `Supervisor` and starts
each of its background loops with `spawn(name, ...)`: the task is kept, never
fire-and-forget. A loop that ends by an exception other than cancellation has died: that is
a bug or a fault the loop did not expect (each loop retries what it does expect itself), so
it is logged with the exception's type only (never its text, which could quote input) and
the service's health turns `degraded` with the reason `task-died:<name>` until the loop is
spawned again. Given `restart=Backoff(...)`, the supervisor spawns it again itself after a
capped, jittered delay (runtime/backoff.py); the reason stays while it waits.

`stop(...)` tells nothing to the loops (their owner sets its own flags first), gives them
`grace_seconds` to finish their step, cancels the late ones and awaits all of them; it always
finishes, and never swallows the caller's own cancellation. So that the grace is only ever
spent on a step that has begun, a loop's idle waits (for messages, an update, a wake-up, a
pause) go through `unless_stopping` / `pause` with the owner's stop event: stopping ends
them at once instead of when they run out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import structlog

from .backoff import Backoff

log = structlog.get_logger("nrm.supervisor")

#: The health reason of a loop that died: `task-died:<name>`.
TASK_DIED: Final = "task-died"

Loop = Callable[[], Coroutine[Any, Any, None]]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Death:
    """How a loop ended: its name, the exception's type, and how often it was restarted."""

    name: str
    error: str
    restarts: int


class Supervisor:
    """Starts named background tasks, records their deaths, stops them."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._died: dict[str, Death] = {}
        self._stopping = False
        self.log = log.bind(service=service)

    def spawn(self, name: str, loop: Loop, *, restart: Backoff | None = None) -> asyncio.Task[None]:
        """Run `loop()` as the task `name` (unique among the running ones). Spawning a name
        again after it died clears its death: its owner started it anew."""
        running = self._tasks.get(name)
        if running is not None and not running.done():
            raise RuntimeError(f"task {name} is already running")
        self._stopping = False
        self._died.pop(name, None)
        task = asyncio.create_task(self._guard(name, loop, restart), name=name)
        self._tasks[name] = task
        return task

    async def _guard(self, name: str, loop: Loop, restart: Backoff | None) -> None:
        restarts = 0
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = _type_of(e)
                self._died[name] = Death(name, error, restarts)
                self.log.error("task_died", task=name, error=error, restarts=restarts)
                if restart is None or self._stopping:
                    return
            await asyncio.sleep(restart.delay(restarts))
            restarts += 1
            self.log.info("task_restarted", task=name, restarts=restarts)
            self._died.pop(name, None)

    @property
    def deaths(self) -> tuple[Death, ...]:
        """The loops that died and were not spawned again, by name."""
        return tuple(self._died[name] for name in sorted(self._died))

    def running(self) -> tuple[str, ...]:
        """The names of the tasks that have not ended."""
        return tuple(sorted(n for n, t in self._tasks.items() if not t.done()))

    def reasons(self) -> list[str]:
        """`task-died:<name>` for each loop that died: each makes the service degraded."""
        return [f"{TASK_DIED}:{d.name}" for d in self.deaths]

    def health(self) -> dict[str, Any]:
        """`status` ok or degraded, its `reasons`, and the names of the running tasks."""
        reasons = self.reasons()
        status: Literal["ok", "degraded"] = "degraded" if reasons else "ok"
        return {"status": status, "reasons": reasons, "tasks": list(self.running())}

    async def stop(
        self, tasks: Iterable[asyncio.Task[None]] | None = None, *, grace_seconds: float = 0.0
    ) -> None:
        """Stop `tasks` (all of this supervisor's if None): give them `grace_seconds` to
        finish their current step, cancel the late ones, await them all. A task that had
        died was logged when it died; stopping always finishes."""
        if tasks is None:
            self._stopping = True
            chosen = list(self._tasks.values())
        else:
            chosen = list(tasks)
        for name in [n for n, t in self._tasks.items() if t in chosen]:
            del self._tasks[name]
        await stop_tasks(chosen, grace_seconds=grace_seconds)


async def stop_tasks(tasks: Iterable[asyncio.Task[None]], *, grace_seconds: float) -> None:
    """Give `tasks` `grace_seconds` to finish (their owner has already told them to stop),
    cancel the late ones, and await all of them. A task that had failed is logged, not
    re-raised. The caller's own cancellation is never swallowed (gather re-raises it)."""
    chosen = list(tasks)
    if not chosen:
        return
    if grace_seconds > 0:
        _, late = await asyncio.wait(chosen, timeout=grace_seconds)
    else:
        late = set(chosen)
    for task in late:
        task.cancel()
    results = await asyncio.gather(*chosen, return_exceptions=True)
    for task, result in zip(chosen, results, strict=True):
        if isinstance(result, Exception):
            log.error("task_failed", task=task.get_name(), error=_type_of(result))


async def unless_stopping(aw: Awaitable[T], stopping: asyncio.Event) -> T:
    """`aw`'s result, unless `stopping` is set first: then `aw` is cancelled (it must be an
    idle wait, with nothing begun that cancelling would cut short) and TimeoutError is raised,
    as when such a wait runs out, so the loop goes round and sees that it is to stop. The
    caller's own cancellation cancels `aw` too and is re-raised."""
    work = asyncio.ensure_future(aw)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((work, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait((work,))
    if work.cancelled():
        raise TimeoutError("stopping")
    return work.result()


#: Work given up on past its hard deadline (finish_within): kept until it ends, so that it is
#: never garbage collected while it runs.
_ABANDONED: set[asyncio.Future[Any]] = set()


async def finish_within(aw: Awaitable[T], seconds: float, *, what: str) -> T:
    """`aw`'s result if it ends within `seconds`. Past that it is cancelled and given
    `seconds` more; work that ignores even that (a library that swallows cancellation) is
    abandoned, logged as `what`, and kept until it ends. TimeoutError is raised in both
    cases, so a stop is never held up for longer than twice `seconds`. The caller's own
    cancellation cancels `aw` too and is re-raised."""
    work = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait((work,), timeout=seconds)
        if not done:
            work.cancel()
            done, _ = await asyncio.wait((work,), timeout=seconds)
    except asyncio.CancelledError:
        work.cancel()
        raise
    if not done:
        log.warning("abandoned_past_deadline", what=what)
        _ABANDONED.add(work)
        work.add_done_callback(_forget)
        raise TimeoutError(what)
    if work.cancelled():
        raise TimeoutError(what)
    return work.result()


def _forget(work: asyncio.Future[Any]) -> None:
    _ABANDONED.discard(work)
    if not work.cancelled():
        work.exception()  # retrieved: it was given up on, its outcome no longer matters


async def pause(seconds: float, stopping: asyncio.Event) -> None:
    """Sleep `seconds`, or less if `stopping` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)


def _type_of(e: BaseException) -> str:
    """The exception's type name; a group names the types inside it too."""
    if isinstance(e, BaseExceptionGroup):
        inner = ",".join(sorted({_type_of(x) for x in e.exceptions}))
        return f"{type(e).__name__}({inner})"
    return type(e).__name__
