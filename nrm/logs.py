"""structlog set-up: JSON events with ids and reasons, never payloads."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger


def configure(
    *,
    stream: TextIO = sys.stderr,
    level: int = logging.INFO,
    tap: Processor | None = None,
    cache: bool = False,
) -> None:
    """Render every event as one JSON line on `stream`.

    `tap`, if given, sees each event dict before rendering (the demo builds its timeline
    from it). `cache` lets each module logger build itself once (long-running services, which
    never reconfigure logging; tests that capture logs need it off).
    """
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    processors: list[Processor] = [structlog.contextvars.merge_contextvars, *shared]
    if tap is not None:
        processors.append(tap)
    processors += [_drop_exception_text, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=cache,
    )
    _route_stdlib(stream, shared)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler `configure` installs (replaced, never stacked, on reconfiguring)."""


def _route_stdlib(stream: TextIO, shared: list[Processor]) -> None:
    """nats-py, aiohttp and asyncio log through the standard library: render their records as
    the same JSON lines (the logger's name as `logger`, the exception as its type only: a
    traceback's text can quote input), warnings and worse only, never on stdout."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, _first_line, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_exception_text,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = _Handler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def _first_line(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """A library's message up to its first line break: asyncio's "Task exception was never
    retrieved" goes on with the task's repr, which quotes the exception's message."""
    message = event.get("event")
    if isinstance(message, str):
        event["event"] = message.split("\n", 1)[0]
    return event


def _drop_exception_text(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Exception messages can quote input; keep only their type."""
    exc: Any = event.pop("exc_info", None)
    if exc:
        info = sys.exc_info() if exc is True else exc
        if isinstance(info, tuple) and info[0] is not None:
            event["exception_type"] = info[0].__name__
    return event
