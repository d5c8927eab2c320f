"""Prometheus metrics every NRM service registers the same way: request latency by route
template and status class (`nrm_http_request_duration_seconds{route, status}`; never a raw
path, which can carry a referral id) and the process and platform collectors."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

#: Seconds: from a cached page (milliseconds) to a fsync under load and a slow webhook.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The `route` of a request no route matched (404s of guessed paths: one series, not many).
UNMATCHED = "unmatched"


def add_process_collectors(registry: CollectorRegistry) -> None:
    """`process_*` (CPU, memory, open files, start time) and `python_info` on `registry`."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)


def request_metrics(registry: CollectorRegistry) -> Middleware:
    """A middleware observing each request's duration on `registry`, labelled with the
    route's template (`/v1/referrals/{id}`) and the status class (`2xx`...`5xx`). Put it
    first: it then sees the status the client gets, problem responses included."""
    histogram = Histogram(
        "nrm_http_request_duration_seconds",
        "HTTP request latency, by route template and status class",
        ["route", "status"],
        buckets=BUCKETS,
        registry=registry,
    )

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            info = request.match_info
            resource = None if info.http_exception is not None else info.route.resource
            route = UNMATCHED if resource is None else resource.canonical
            histogram.labels(route, f"{status // 100}xx").observe(time.perf_counter() - started)

    return observe


class HealthGauges:
    """`/healthz` as gauges, for alerting: `nrm_health_status{status}` is 1 for the current
    status (ok, warning, degraded) and 0 for the others; `nrm_health_reason{reason}` is 1
    for each reason `/healthz` gives now (e.g. `task-died:<loop>`,
    `authorization-reload-failed`, `directory-expires-soon`) and 0 for one it gave before."""

    STATUSES = ("ok", "warning", "degraded")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.status = Gauge(
            "nrm_health_status", "1 for the current /healthz status, 0 for the others", ["status"],
            registry=registry,
        )  # fmt: skip
        self.reason = Gauge(
            "nrm_health_reason", "1 for each reason /healthz gives now", ["reason"],
            registry=registry,
        )  # fmt: skip
        self._reasons: set[str] = set()

    def set(self, health: dict[str, Any]) -> None:
        for status in self.STATUSES:
            self.status.labels(status).set(1 if health["status"] == status else 0)
        now = {str(r) for r in health.get("reasons", ())}
        for reason in self._reasons | now:
            self.reason.labels(reason).set(1 if reason in now else 0)
        self._reasons |= now
