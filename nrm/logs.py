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
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if tap is not None:
        processors.append(tap)
    processors += [_drop_exception_text, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=cache,
    )
    # nats-py and aiohttp log through the standard library; keep them quiet and off stdout.
    logging.basicConfig(level=logging.WARNING, stream=stream, format="%(name)s %(message)s")


def _drop_exception_text(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Exception messages can quote input; keep only their type."""
    exc: Any = event.pop("exc_info", None)
    if exc:
        info = sys.exc_info() if exc is True else exc
        if isinstance(info, tuple) and info[0] is not None:
            event["exception_type"] = info[0].__name__
    return event
