"""RFC 9457 problem details: every error the API returns is `application/problem+json`."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

PROBLEM_TYPE_BASE = "https://nrm-exchange.org/problems/"


def problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    """A problem+json response. `detail` must never carry personal data."""
    slug = title.lower().replace(" ", "-")
    body = {"type": PROBLEM_TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    body.update(extra)
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/problem+json",
    )


class ProblemError(Exception):
    """Raised by handlers; the middleware turns it into a problem+json response."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra

    def response(self) -> web.Response:
        return problem(self.status, self.title, self.detail, **self.extra)
