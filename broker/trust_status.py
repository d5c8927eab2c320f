"""What the bus authority and the ledger say about the directory they trust: `/healthz` and
`/metrics` (docs/RUNBOOK.md, "Watch it").

Both carry versions (the release's, `nrm_<part>_info{version}`, and the directory's and
root's) and expiry times only, nothing an agency sent, so they need no token;
bind them to loopback or to the monitoring network. `/healthz` answers 200 for `ok` and
`warning` (the directory or the newest root expires within the warning window) and 503 for
`degraded`: an expired or missing directory or root, or a background loop of the service
that died (`task-died:<name>`, runtime/supervisor.py). The bus authority, which has no other
HTTP, serves them with `serve_status` (`nrm bus up --status-bind`); the ledger adds the
routes to its own API.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from keys import DEFAULT_LIMITS
from runtime import clock, expiry
from runtime.http import app_runner, problems_middleware
from runtime.http_metrics import HealthGauges, add_process_collectors, request_metrics
from runtime.supervisor import Supervisor
from runtime.version import VERSION

from .follower import DirectoryFollower

log = structlog.get_logger("nrm.status")


class Service(Protocol):
    """What serves a status: the bus authority or the ledger."""

    follower: DirectoryFollower

    def health(self) -> dict[str, Any]: ...


ServiceOf = Callable[[web.Request], Service]


def service_health(
    follower: DirectoryFollower, supervisor: Supervisor, *, reasons: Sequence[str] = ()
) -> dict[str, Any]:
    """The follower's trust health with the supervisor's dead loops and `reasons` (each
    degrading) in front of the expiry reasons; `tasks` names the loops running."""
    trust = follower.health()
    tasks = supervisor.health()
    own = [*tasks["reasons"], *reasons]
    status = expiry.worst(trust["status"], "degraded" if own else "ok")
    return {
        **trust,
        "status": status,
        "reasons": [*own, *trust["reasons"]],
        "tasks": tasks["tasks"],
        "version": VERSION,
    }


class StatusMetrics:
    """The registry of one ledger or bus authority: `nrm_<part>_info{version}`, the
    directory's version and expiry, the root's expiry, `/healthz` as gauges
    (`nrm_health_status`, `nrm_health_reason`), request latency (`http`: the app's first
    middleware) and the process and platform collectors."""

    def __init__(self, *, part: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        add_process_collectors(self.registry)
        self.http = request_metrics(self.registry)
        self.health = HealthGauges(self.registry)
        info = Gauge(
            f"nrm_{part}_info",
            "Constant 1, labelled with the release",
            ["version"],
            registry=self.registry,
        )
        info.labels(version=VERSION).set(1)
        self.directory = Gauge(
            "nrm_directory_expiry_timestamp_seconds",
            "When the last verified directory expires (Unix seconds); 0 before there is one",
            registry=self.registry,
        )
        self.directory_version = Gauge(
            "nrm_directory_version",
            "Version of the last verified directory; 0 before there is one",
            registry=self.registry,
        )
        self.directory_expires_in = Gauge(
            "nrm_directory_expires_in_seconds",
            "Seconds until the last verified directory expires (negative once expired; "
            "0 before there is one)",
            registry=self.registry,
        )
        self.root = Gauge(
            "nrm_root_expiry_timestamp_seconds",
            "When the newest trusted root expires (Unix seconds)",
            registry=self.registry,
        )

    def render(self, service: Service) -> bytes:
        """The Prometheus text of everything above, as of now."""
        d = service.follower.store.directory
        self.directory.set(0 if d is None else d.expires)
        self.directory_version.set(0 if d is None else d.version)
        self.directory_expires_in.set(0 if d is None else d.expires - clock.now())
        self.root.set(service.follower.store.root.expires)
        self.health.set(service.health())
        out: bytes = generate_latest(self.registry)
        return out


def health_response(service: Service, **extra: object) -> web.Response:
    health = {**service.health(), **extra}
    status = 503 if health["status"] == "degraded" else 200
    return web.Response(
        status=status, body=json.dumps(health).encode(), content_type="application/json"
    )


def add_status_routes(
    app: web.Application, service_of: ServiceOf, *, part: str, metrics: StatusMetrics
) -> None:
    """GET /healthz and GET /metrics (from `metrics`) for the service `service_of(request)`
    returns."""

    async def healthz(request: web.Request) -> web.Response:
        return health_response(service_of(request), part=part)

    async def scrape(request: web.Request) -> web.Response:
        body = metrics.render(service_of(request))
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", scrape)


async def serve_status(service: Service, *, host: str, port: int) -> web.AppRunner:
    """Start the bus authority's status endpoint; the caller cleans the runner up (if the
    port cannot be bound, nothing is left open)."""
    problems = problems_middleware(
        log=log, event="status_request_failed", unanswerable="the status could not be answered"
    )
    metrics = StatusMetrics(part="bus")
    app = web.Application(middlewares=[metrics.http, problems])
    add_status_routes(app, lambda _: service, part="bus", metrics=metrics)
    runner = app_runner(app, DEFAULT_LIMITS)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
