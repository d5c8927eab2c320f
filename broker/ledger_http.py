"""The ledger's HTTP API for auditors and agents, its OpenAPI document, and the web UI.

Every /v1 route needs a bearer token (compared by SHA-256 digest in constant time) whose
scope reads it (PROTOCOL.md §9.0): `auditor` reads every route; `agency:<id>` reads only what
an agent's ledger check needs (AGENCY_ROUTES: checkpoints, proofs, directories, roots,
restores, its own events, and the `record.accessed` events of its referrals); `metrics`
reads no /v1 route, only /metrics (which `auditor` reads too); `rapporteur` only posts
reports (`POST /v1/reports`, which no other scope may). Errors are problem+json (401
no or a wrong token, 403 a token whose scope does not read it). Everything served is
metadata: ids, kinds, hashes, times. /healthz (versions and expiry times only) needs no
token.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from keys import DEFAULT_LIMITS
from keys import report as signed_report
from keys.audit import (
    ACCESS_RECORDS,
    CATEGORIES,
    CLIENT_NAME,
    COUNT_LABELS,
    DECISION_LABELS,
    KINDS,
    LABELS,
    OVERDUE_CLOCKS,
    PROTECTION_LABELS,
)
from keys.checkpoint import MAX_CHECKPOINT_BYTES
from keys.errors import UntrustedInputError
from keys.merkle import MerkleTree, leaf_hash
from keys.subjects import AGENCY_ID_PATTERN
from runtime import clock
from runtime.bus_link import STATES as BUS_STATES
from runtime.http import (
    MAX_JSON_INT,
    ProblemError,
    bearer_match,
    json_object_body,
    parse_json_body,
    problem,
    problems_middleware,
    unauthorized,
)

from . import ledger_stats
from .ledger import AUDITOR_SCOPE, METRICS_SCOPE, RAPPORTEUR_SCOPE, Ledger
from .ledger_store import ArchivedNodes, EntryRow, ReportRow
from .trust_status import StatusMetrics, add_status_routes

LEDGER = web.AppKey("ledger", Ledger)
log = structlog.get_logger("nrm.ledger")
UI_DIR = Path(__file__).parent / "ledger_ui"
#: The files the UI serves at /ui/<name>: those shipped, nothing else (no directory walk).
UI_FILES = (
    frozenset(p.name for p in UI_DIR.iterdir() if p.is_file()) if UI_DIR.is_dir() else frozenset()
)
MAX_RANGE = 1000
MAX_PROOF_BATCH = DEFAULT_LIMITS.ledger_proof_batch
_EVENT_ID = re.compile(r"[0-9a-f]{32}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_problems = problems_middleware(
    log=log,
    event="ledger_api_internal_error",
    unanswerable="the ledger could not answer the request",
)


#: The routes an `agency:<id>` token reads: what reveals only hashes, signed public documents
#: and sizes, and (checked in the handler) that agency's own events. Not /v1/entries,
#: /v1/events, timelines or /v1/stats, which show every agency's events.
AGENCY_ROUTES = frozenset(
    {
        "/v1/checkpoint",
        "/v1/checkpoints",
        "/v1/entries/{index}/proof",
        "/v1/events/{event_id}",
        "/v1/proof/consistency",
        "/v1/proofs",
        "/v1/directories",
        "/v1/restores",
        "/v1/restores/{seq}/proof",
        "/v1/roots",
        "/v1/accesses",
    }
)
#: The one route a `rapporteur` token may use, and only to POST (PROTOCOL.md §8.12).
REPORTS_ROUTE = "/v1/reports"
#: The agency an `agency:<id>` token reads for (None: an auditor's token).
READER = web.RequestKey[str | None]("reader")


def _forbidden(scope: str, what: str) -> web.Response:
    return problem(403, "Forbidden", f"a token of scope {scope!r} does not read {what}")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The token check (its scope too). `_security_headers` runs outside it, so its 401 and
    403 answers carry the headers too."""
    if request.path.startswith("/v1/") or request.path == "/metrics":
        # One snapshot of the tokens and their digests (a SIGHUP reload swaps both at once).
        tokens, digests = request.app[LEDGER].tokens
        found = bearer_match(request.headers.get("Authorization", ""), digests)
        if found is None:
            return unauthorized("a bearer token is required", realm="nrm-ledger")
        token = tokens[found]
        if request.path == "/metrics":
            if token.scope not in (METRICS_SCOPE, AUDITOR_SCOPE):
                return _forbidden(token.scope, "/metrics")
        else:
            resource = request.match_info.route.resource
            route = None if resource is None else resource.canonical
            posts_report = (route, request.method) == (REPORTS_ROUTE, "POST")
            if posts_report != (token.scope == RAPPORTEUR_SCOPE):
                return _forbidden(token.scope, "this route")
            if token.scope == METRICS_SCOPE or (
                token.agency is not None and route is not None and route not in AGENCY_ROUTES
            ):
                return _forbidden(token.scope, "this route")
            request[READER] = token.agency
    return await handler(request)


#: Sent with every answer: UI, API, redirects and errors alike. Scripts, styles and images
#: only from the ledger itself; no other page may frame the UI (clickjacking: CSP
#: `frame-ancestors` for current browsers, `X-Frame-Options` for older ones); nothing kept.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """SECURITY_HEADERS on every answer, also on one raised as an exception (the redirect
    from `/` to `/ui/`)."""
    try:
        response = await handler(request)
    except web.HTTPException as e:
        e.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


#: The 404 page a browser gets (static text: nothing of the request is quoted in it; no
#: inline script or style, so it stays within SECURITY_HEADERS' policy).
NOT_FOUND_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <meta name="referrer" content="no-referrer">
  <title>Not found — NRM Exchange audit ledger</title>
  <link rel="stylesheet" href="/ui/style.css">
</head>
<body>
  <header class="top"><h1>NRM Exchange <span class="sub">audit ledger</span></h1></header>
  <main class="not-found">
    <section>
      <h2 id="not-found">Page not found (404)</h2>
      <p>The audit ledger has no page at this address.</p>
      <p><a id="to-ui" href="/ui/">Open the auditor view</a></p>
    </section>
  </main>
</body>
</html>
"""


def _prefers_html(accept: str) -> bool:
    """Whether an Accept header ranks `text/html` above JSON, as a browser's navigation does
    (`text/html,...,*/*;q=0.8`). `*/*` alone, no header, or JSON first: an API client."""
    best = {"html": 0.0, "json": 0.0}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media in ("text/html", "application/xhtml+xml"):
            best["html"] = max(best["html"], q)
        elif media in ("application/json", "application/problem+json", "*/*"):
            best["json"] = max(best["json"], q)
    return best["html"] > best["json"]


@web.middleware
async def _not_found_page(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A 404 (no such route, UI file, or id) as an HTML page for a browser; API clients keep
    the problem+json `_problems` made."""
    response = await handler(request)
    if response.status == 404 and _prefers_html(request.headers.get("Accept", "")):
        return web.Response(status=404, text=NOT_FOUND_PAGE, content_type="text/html")
    return response


def make_app(ledger: Ledger) -> web.Application:
    metrics = ledger_metrics(ledger)
    app = web.Application(
        middlewares=[metrics.http, _security_headers, _not_found_page, _guard, _problems],
        client_max_size=16384,
    )
    app[LEDGER] = ledger
    r = app.router
    r.add_get("/", to_ui)
    r.add_get("/ui/", index)
    r.add_get("/openapi.json", openapi)
    r.add_get("/v1/checkpoint", checkpoint)
    r.add_get("/v1/checkpoints", checkpoints)
    r.add_get("/v1/entries", entries)
    r.add_get("/v1/entries/{index}/proof", inclusion_proof)
    r.add_get("/v1/events", events)
    r.add_get("/v1/accesses", accesses)
    r.add_get("/v1/events/{event_id}", event)
    r.add_get("/v1/proof/consistency", consistency_proof)
    r.add_post("/v1/proofs", proofs)
    r.add_get("/v1/referrals/{referral_id}/timeline", timeline)
    r.add_get("/v1/directories", directories)
    r.add_get("/v1/restores", restores)
    r.add_get("/v1/restores/{seq}/proof", restore_proof)
    r.add_get("/v1/roots", roots)
    r.add_get("/v1/stats", stats)
    r.add_post(REPORTS_ROUTE, post_report)
    r.add_get(REPORTS_ROUTE, reports)
    r.add_get("/v1/reports/{report_id:[0-9a-f]{64}}.csv", report_csv)
    r.add_get("/v1/reports/{report_id:[0-9a-f]{64}}", report)
    add_status_routes(app, lambda request: request.app[LEDGER], part="ledger", metrics=metrics)
    r.add_get("/ui/{name}", ui_file)
    return app


def ledger_metrics(ledger: Ledger) -> StatusMetrics:
    """The status metrics with the ledger's own: `nrm_ledger_tree_size` (entries) and
    `nrm_ledger_checkpoint_age_seconds` (since the newest signed checkpoint) and
    `nrm_ledger_checkpoint_size` (the entries it covers), read at scrape; and
    `nrm_ledger_bus_state{state}`, 1 for the state of its bus link (`bus` in /healthz), 0
    for the others."""
    metrics = StatusMetrics(part="ledger")
    size = Gauge("nrm_ledger_tree_size", "Entries in the ledger's Merkle tree",
                 registry=metrics.registry)  # fmt: skip
    size.set_function(lambda: ledger.tree.size)
    bus = Gauge(
        "nrm_ledger_bus_state",
        "1 for the state of the ledger's bus link (connected, refused, unreachable...), "
        "0 for the others",
        ["state"],
        registry=metrics.registry,
    )
    for state in BUS_STATES:
        bus.labels(state).set_function(_is_bus_state(ledger, state))
    metrics.registry.register(_CheckpointGauges(ledger))
    return metrics


def _is_bus_state(ledger: Ledger, state: str) -> Callable[[], float]:
    return lambda: float(ledger.bus_state()[0] == state)


class _CheckpointGauges(Collector):
    """`nrm_ledger_checkpoint_age_seconds` and `nrm_ledger_checkpoint_size`, both from the
    one newest checkpoint read once per scrape."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self.ledger.store.latest_checkpoint())

    def _families(self, latest: tuple[int, bytes, int, str] | None) -> list[Metric]:
        age = GaugeMetricFamily(
            "nrm_ledger_checkpoint_age_seconds",
            "Seconds since the newest signed checkpoint (its timestamp); -1 before there is one",
            value=-1 if latest is None else max(0, clock.now() - latest[2]),
        )
        size = GaugeMetricFamily(
            "nrm_ledger_checkpoint_size",
            "Entries the newest signed checkpoint covers (below nrm_ledger_tree_size while "
            "entries wait for the next checkpoint); 0 before there is one",
            value=0 if latest is None else latest[0],
        )
        return [age, size]


def _ledger(request: web.Request) -> Ledger:
    ledger: Ledger = request.app[LEDGER]
    return ledger


#: The largest integer any query parameter takes (the OpenAPI document's `maximum`).
MAX_QUERY_INT = 2**62


def _int(
    request: web.Request,
    name: str,
    *,
    default: int | None = None,
    low: int = 0,
    high: int = MAX_QUERY_INT,
) -> int:
    """Query parameter `name`: 400 unless a decimal integer from `low` to `high`, the bounds
    the OpenAPI document states. Bounds that depend on the tree are checked by `_in_tree`."""
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise ProblemError(400, "Bad Request", f"query parameter {name} is required")
        return default
    if not _digits(raw) or not low <= int(raw) <= high:
        raise ProblemError(400, "Bad Request", f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _in_tree(name: str, value: int, *, low: int, high: int, what: str) -> int:
    """A valid number that must also fit the tree as it is: 404, the ledger has no `what`
    there (the request was well formed; the tree is not that big, or not yet)."""
    if not low <= value <= high:
        raise ProblemError(404, "Not Found", f"no {what}: {name} must be from {low} to {high}")
    return value


def _ordered(first: str, low: int, second: str, high: int) -> None:
    """Two valid numbers in the wrong order: 422 (the document cannot relate parameters)."""
    if low > high:
        raise ProblemError(
            422, "Unprocessable Content", f"{first} must not be larger than {second}"
        )


def _digits(raw: str) -> bool:
    """A plain decimal number short enough to convert (int() refuses over 4300 digits)."""
    return raw.isascii() and raw.isdigit() and len(raw) <= 20


async def to_ui(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


async def index(request: web.Request) -> web.StreamResponse:
    if not (UI_DIR / "index.html").exists():
        raise ProblemError(404, "Not Found", "the web UI is not installed")
    return web.FileResponse(UI_DIR / "index.html")


async def ui_file(request: web.Request) -> web.StreamResponse:
    """One of UI_FILES; any other name is a 404 before a file is looked for (a static route
    answers a missing file only once it prepares the answer, past every middleware)."""
    name = request.match_info["name"]
    if name not in UI_FILES:
        raise ProblemError(404, "Not Found", "the web UI has no such file")
    return web.FileResponse(UI_DIR / name)


async def checkpoint(request: web.Request) -> web.Response:
    latest = _ledger(request).store.latest_checkpoint()
    if latest is None:
        raise ProblemError(404, "Not Found", "no checkpoint has been signed yet")
    size, root, timestamp, note = latest
    return web.json_response(
        {
            "size": size,
            "root": root.hex(),
            "timestamp": timestamp,
            "note": note,
            "origin": _ledger(request).config.origin,
        }
    )


async def checkpoints(request: web.Request) -> web.Response:
    items = [{"size": s, "note": n} for s, n in _ledger(request).store.checkpoints()]
    return web.json_response({"items": items})


async def entries(request: web.Request) -> web.Response:
    size = _ledger(request).tree.size
    start = _in_tree("start", _int(request, "start"), low=0, high=size, what="entries there")
    end = _int(request, "end", default=start + MAX_RANGE)
    _ordered("start", start, "end", end)
    # At most MAX_RANGE entries, and none past the tree: the client goes on from the last.
    rows = _ledger(request).store.entries(start, min(end, size, start + MAX_RANGE))
    return web.json_response(
        {"items": [{**r.to_json(), "leaf": base64.b64encode(r.leaf).decode()} for r in rows]}
    )


async def inclusion_proof(request: web.Request) -> web.Response:
    ledger = _ledger(request)
    raw = request.match_info["index"]
    if not _digits(raw) or int(raw) >= ledger.tree.size:
        raise ProblemError(404, "Not Found", "no entry with this index in the ledger")
    index = int(raw)
    size = _int(request, "size", default=ledger.tree.size, low=1)
    _in_tree(
        "size",
        size,
        low=index + 1,
        high=ledger.tree.size,
        what="tree of this size holding the entry",
    )
    return web.json_response(
        {
            "index": index,
            "size": size,
            "proof": [h.hex() for h in ledger.tree.inclusion_proof(index, size)],
        }
    )


async def event(request: web.Request) -> web.Response:
    """One event's entry and, with ?size=, its inclusion proof in the tree of that size."""
    ledger = _ledger(request)
    row = ledger.store.entry_by_event(request.match_info["event_id"])
    if row is None:
        raise ProblemError(404, "Not Found", "no such event in the ledger")
    _own(request, [row])
    body: dict[str, Any] = {
        **row.to_json(),
        "leaf": base64.b64encode(row.leaf).decode(),
        "leaf_hash": leaf_hash(row.leaf).hex(),
    }
    if "size" in request.query:
        size = _int(request, "size", low=1)
        _in_tree(
            "size",
            size,
            low=row.index + 1,
            high=ledger.tree.size,
            what="tree of this size holding the event",
        )
        body["size"] = size
        body["proof"] = [h.hex() for h in ledger.tree.inclusion_proof(row.index, size)]
    return web.json_response(body)


async def proofs(request: web.Request) -> web.Response:
    """Many events' entries and inclusion proofs in the tree of one size, in one answer: what
    an agent needs to confirm its own events (a query, sent as POST only for its length).
    An event appended at or after `size` comes without a proof; unknown ids are `missing`."""
    ledger = _ledger(request)
    if request.content_type != "application/json":
        raise ProblemError(
            415, "Unsupported Media Type", "the request body must be application/json"
        )
    doc = parse_json_body(await request.read())
    if not isinstance(doc, dict) or set(doc) != {"size", "event_ids"}:
        raise ProblemError(400, "Bad Request", "the body must be an object with size and event_ids")
    size, ids = doc["size"], doc["event_ids"]
    if type(size) is not int or not 1 <= size <= MAX_QUERY_INT:
        raise ProblemError(400, "Bad Request", f"size must be an integer from 1 to {MAX_QUERY_INT}")
    _in_tree("size", size, low=1, high=ledger.tree.size, what="tree of this size")
    if (
        not isinstance(ids, list)
        or len(ids) > MAX_PROOF_BATCH
        or not all(isinstance(i, str) and _EVENT_ID.fullmatch(i) for i in ids)
    ):
        raise ProblemError(
            400,
            "Bad Request",
            f"event_ids must be a list of at most {MAX_PROOF_BATCH} event ids (32 hex digits)",
        )
    rows = {row.event_id: row for row in ledger.store.entries_by_events(ids)}
    _own(request, rows.values())
    items: list[dict[str, Any]] = []
    for row in rows.values():
        item: dict[str, Any] = {**row.to_json(), "leaf": base64.b64encode(row.leaf).decode()}
        if row.index < size:
            item["proof"] = [h.hex() for h in ledger.tree.inclusion_proof(row.index, size)]
        items.append(item)
    missing = sorted(set(ids) - set(rows))
    return web.json_response({"size": size, "items": items, "missing": missing})


def _own(request: web.Request, rows: Iterable[EntryRow]) -> None:
    """A 403 if an `agency:<id>` token asks for an event another agency wrote."""
    reader = request.get(READER)
    if reader is not None and any(row.agency != reader for row in rows):
        raise ProblemError(
            403, "Forbidden", f"a token of scope 'agency:{reader}' reads only its own events"
        )


async def consistency_proof(request: web.Request) -> web.Response:
    ledger = _ledger(request)
    second = _int(request, "second")
    first = _int(request, "first")
    _ordered("first", first, "second", second)
    _in_tree("second", second, low=0, high=ledger.tree.size, what="tree of this size")
    proof = ledger.tree.consistency_proof(first, second)
    return web.json_response({"first": first, "second": second, "proof": [h.hex() for h in proof]})


async def events(request: web.Request) -> web.Response:
    q = request.query.get("q", "").strip()
    if len(q) > 64:
        raise ProblemError(400, "Bad Request", "q must be at most 64 characters")
    limit = _int(request, "limit", default=50, low=1, high=500)
    after = _int(request, "cursor", low=0) if "cursor" in request.query else -1
    rows = _ledger(request).store.search(q=q, after=after, limit=limit)
    next_cursor = str(rows[-1].index) if len(rows) == limit else None
    return web.json_response({"items": [r.to_json() for r in rows], "next_cursor": next_cursor})


async def accesses(request: web.Request) -> web.Response:
    """The `record.accessed` entries of the reader's referrals (every one for an auditor),
    signed at `since` or later, by index; with `size`, each in that tree with its inclusion
    proof (nrm-process §11.2: the owner learns who read what it sent; the ledger never
    learns which referral or person the owner cares about)."""
    ledger = _ledger(request)
    since = _int(request, "since", default=0)
    size = _int(request, "size", low=1) if "size" in request.query else None
    # A page holds at most as many proofs as POST /v1/proofs answers.
    limit = _int(request, "limit", default=50, low=1, high=MAX_PROOF_BATCH)
    after = _int(request, "cursor", low=0) if "cursor" in request.query else -1
    if size is not None:
        _in_tree("size", size, low=1, high=ledger.tree.size, what="tree of this size")
    rows = ledger.store.accesses(owner=request.get(READER), since=since, after=after, limit=limit)
    items: list[dict[str, Any]] = []
    for row in rows:
        item: dict[str, Any] = {**row.to_json(), "leaf": base64.b64encode(row.leaf).decode()}
        if size is not None and row.index < size:
            item["proof"] = [h.hex() for h in ledger.tree.inclusion_proof(row.index, size)]
        items.append(item)
    body: dict[str, Any] = {
        "items": items,
        "next_cursor": str(rows[-1].index) if len(rows) == limit else None,
    }
    if size is not None:
        body["size"] = size
    return web.json_response(body)


async def timeline(request: web.Request) -> web.Response:
    referral_id = request.match_info["referral_id"]
    rows = _ledger(request).store.referral_events(referral_id)
    return web.json_response({"referral_id": referral_id, "items": [r.to_json() for r in rows]})


def _versions(rows: Iterable[tuple[int, bytes, int]]) -> web.Response:
    """Signed documents by version (directories, roots), each with when it was accepted."""
    items = [
        {"version": v, "accepted_at": t, "data": base64.b64encode(d).decode()} for v, d, t in rows
    ]
    return web.json_response({"items": items})


async def directories(request: web.Request) -> web.Response:
    return _versions(_ledger(request).store.directories())


async def restores(request: web.Request) -> web.Response:
    """Every signed restore declaration (PROTOCOL.md §9.4), oldest first, with its sizes and
    time beside it in clear (for display; the signed bytes are what counts)."""
    items = []
    store = _ledger(request).store
    for seq, data in store.restores():
        sizes = store.restore_sizes(seq)
        assert sizes is not None
        items.append(
            {
                "seq": seq,
                "restored_size": sizes[0],
                "previous_size": sizes[1],
                "declaration": base64.b64encode(data).decode(),
            }
        )
    return web.json_response({"items": items})


async def restore_proof(request: web.Request) -> web.Response:
    """A consistency proof, in the tree restore `seq` replaced, from the restored size to
    `size`, with that tree's root at `size`: what lets an agent check the last checkpoint it
    verified before the restore against the restored tree."""
    store = _ledger(request).store
    raw = request.match_info["seq"]
    sizes = store.restore_sizes(int(raw)) if _digits(raw) and int(raw) < 2**62 else None
    if sizes is None:
        raise ProblemError(404, "Not Found", "no restore with this number")
    restored, previous = sizes
    if previous is None or not store.has_restore_archive(int(raw)):
        raise ProblemError(404, "Not Found", "the tree this restore replaced was not kept")
    size = _in_tree(
        "size",
        _int(request, "size"),
        low=restored,
        high=previous,
        what="size in the tree this restore replaced",
    )
    tree = MerkleTree(ArchivedNodes(store, int(raw)), size=previous)
    return web.json_response(
        {
            "seq": int(raw),
            "first": restored,
            "second": size,
            "root": tree.root(size).hex(),
            "proof": [h.hex() for h in tree.consistency_proof(restored, size)],
        }
    )


async def roots(request: web.Request) -> web.Response:
    """The root chain the ledger verified, from its pinned root on (PROTOCOL.md §9.5)."""
    return _versions(_ledger(request).store.roots())


async def stats(request: web.Request) -> web.Response:
    ledger = _ledger(request)
    return web.json_response(
        ledger_stats.compute(
            ledger.store.all_rows_for_stats(ledger_stats.KINDS),
            threshold=ledger.config.suppress_below,
        )
    )


# --- rapporteur reports (PROTOCOL.md §8.12) ------------------------------------------------

MAX_REPORTS_LISTED = 100


async def post_report(request: web.Request) -> web.Response:
    """Take a signed rapporteur report: verified against the directory the ledger trusts now
    and stored, or refused (400 naming the check, nothing stored)."""
    ledger = _ledger(request)
    if request.content_type != "application/json":
        raise ProblemError(
            415, "Unsupported Media Type", "the request body must be application/json"
        )
    # Read here, bounded by the report's own limit (the app's client_max_size is for the
    # small bodies of every other route).
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(65_536):
        size += len(chunk)
        if size > signed_report.MAX_REPORT_BYTES:
            raise ProblemError(
                413,
                "Payload Too Large",
                f"a signed report is at most {signed_report.MAX_REPORT_BYTES} bytes",
            )
        chunks.append(chunk)
    data = b"".join(chunks)
    directory = ledger.directory
    if directory is None:
        raise ProblemError(503, "Service Unavailable", "the ledger trusts no directory yet")
    now = clock.now()
    try:
        verified = signed_report.verify_report(
            data, directory=directory, now=now, max_skew=DEFAULT_LIMITS.clock_skew_seconds
        )
    except UntrustedInputError as e:
        log.info("ledger_report_refused", reason=e.reason)
        raise ProblemError(
            400, "Bad Request", f"the report was refused: {e.reason}", reason=e.reason
        ) from e
    row = ReportRow(
        report_id=signed_report.report_id(data),
        rapporteur=verified.rapporteur,
        first=verified.first,
        last=verified.last,
        signed_at=verified.signed_at,
        received_at=now,
        data=data,
    )
    added = ledger.store.add_report(row)
    await ledger.store.durable()
    log.info("ledger_report_stored", report_id=row.report_id, new=added)
    return web.json_response({"report_id": row.report_id}, status=201 if added else 200)


def _listed(row: ReportRow) -> dict[str, Any]:
    return {
        "report_id": row.report_id,
        "rapporteur": row.rapporteur,
        "from": row.first,
        "to": row.last,
        "signed_at": row.signed_at,
        "received_at": row.received_at,
    }


async def reports(request: web.Request) -> web.Response:
    rows = _ledger(request).store.reports(limit=MAX_REPORTS_LISTED)
    return web.json_response({"items": [_listed(r) for r in rows]})


def _stored_report(request: web.Request) -> tuple[ReportRow, signed_report.Report]:
    row = _ledger(request).store.report(request.match_info["report_id"])
    if row is None:
        raise ProblemError(404, "Not Found", "no report has this id")
    parsed, _, _ = signed_report.decode(row.data)  # verified when it was stored
    return row, parsed


async def report(request: web.Request) -> web.Response:
    row, parsed = _stored_report(request)
    return web.json_response(
        {
            "report_id": row.report_id,
            "received_at": row.received_at,
            "report": signed_report.as_json(parsed),
            "signed": base64.b64encode(row.data).decode("ascii"),
        }
    )


async def report_csv(request: web.Request) -> web.Response:
    _, parsed = _stored_report(request)
    text = signed_report.cells_csv(signed_report.as_json(parsed)["cells"])
    return web.Response(text=text, content_type="text/csv", charset="utf-8")


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


#: A query integer as `_int` takes it; a tree size or index the tree does not have is 404.
_QUERY_INT: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": MAX_QUERY_INT}
_TREE_SIZE: dict[str, Any] = {**_QUERY_INT, "minimum": 1}
#: A path segment naming an entry, event, referral or restore: no id is longer (a bound
#: that keeps every request line the document allows within the server's limit).
_PATH_SEGMENT: dict[str, Any] = {"type": "string", "maxLength": 128}

# --- what the answers hold: every member, closed where the code writes a closed object ---

_UINT: dict[str, Any] = {"type": "integer", "minimum": 0}
_HEX32: dict[str, Any] = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_HASH: dict[str, Any] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
#: Standard base64 with padding (§1.3).
_B64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_BASE64: dict[str, Any] = {"type": "string", "pattern": _B64}
#: A Merkle proof (§9.2): at most 64 hashes.
_PROOF: dict[str, Any] = {"type": "array", "maxItems": 64, "items": _HASH}
_AGENCY = AGENCY_ID_PATTERN.pattern
_REASON = "^[a-z][a-z0-9-]{0,39}$"
_CATEGORY = "|".join(CATEGORIES)
#: `labels` of an entry (§9.0): the statistics labels with their values, the counts of a
#: `retention.purged` round, or the labels of its own of another kind.
_LABELS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **{name: {"enum": sorted(values)} for name, values in sorted(LABELS.items())},
        **{
            name: {"type": "string", "pattern": "^(0|[1-9][0-9]{0,8})$"}
            for name in sorted(COUNT_LABELS)
        },
        # a `record.accessed` read (§9.0)
        "client": {"type": "string", "pattern": CLIENT_NAME.pattern},
        "record": {"enum": sorted(ACCESS_RECORDS)},
        "categories": {"type": "string", "pattern": f"^({_CATEGORY})(,({_CATEGORY}))*$"},
        "reads": {"type": "string", "pattern": "^[1-9][0-9]{0,8}$"},
        # a `clock.overdue` event's clock (§9.0)
        "clock": {"enum": sorted(OVERDUE_CLOCKS)},
        # an identification decision's events (§9.0)
        **{name: {"enum": sorted(values)} for name, values in sorted(DECISION_LABELS.items())},
        # a protection notice's events (§9.0)
        **{name: {"enum": sorted(values)} for name, values in sorted(PROTECTION_LABELS.items())},
    },
}
#: An entry's decoded event (EntryRow.to_json), for display and search (§9.0).
_ENTRY_PROPERTIES: dict[str, Any] = {
    "index": _UINT,
    "event_id": _HEX32,
    "time": {"type": "integer", "minimum": 0, "maximum": 2**40 - 1},
    "agency": {"type": "string", "pattern": _AGENCY},
    "kind": {"enum": sorted(KINDS)},
    "referral_id": {"type": ["string", "null"], "pattern": "^[0-9a-f]{32}$"},
    "counterpart": {"type": ["string", "null"], "pattern": _AGENCY},
    "reason": {"type": ["string", "null"], "pattern": _REASON},
    "labels": _LABELS,
    "directory_version": _UINT,
}
#: The signed ledger entry (§9.0), at most 2 112 bytes: 2 816 base64 characters.
_LEAF: dict[str, Any] = {**_BASE64, "minLength": 4, "maxLength": 2816}


def _closed(
    properties: dict[str, Any], *, optional: tuple[str, ...] = (), **extra: Any
) -> dict[str, Any]:
    """An object with exactly `properties` (each required but the `optional` ones)."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
        "properties": properties,
        **extra,
    }


def _list(item: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": item, **extra}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _median(**properties: Any) -> dict[str, Any]:
    """A median duration in seconds, or null when it would stand on too few cases."""
    return {
        **_closed(
            {
                **properties,
                "seconds": {"type": ["number", "null"]},
                "suppressed": {"type": "boolean"},
            }
        ),
        "oneOf": [
            {"properties": {"seconds": {"type": "number"}, "suppressed": {"const": False}}},
            {"properties": {"seconds": {"type": "null"}, "suppressed": {"const": True}}},
        ],
    }


def _cell(**properties: Any) -> dict[str, Any]:
    """A statistics cell (broker/ledger_stats.py): a count, or null when suppressed."""
    return {
        **_closed(
            {
                **properties,
                "count": {"type": ["integer", "null"], "minimum": 0},
                "suppressed": {"type": "boolean"},
            }
        ),
        "oneOf": [
            {"properties": {"count": {"type": "integer"}, "suppressed": {"const": False}}},
            {"properties": {"count": {"type": "null"}, "suppressed": {"const": True}}},
        ],
    }


_MONTH: dict[str, Any] = {"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$"}
#: Every schema the answers use, by name.
SCHEMAS: dict[str, Any] = {
    "Problem": _closed(
        {
            "type": {
                "type": "string",
                "pattern": "^https://nrm-exchange\\.org/problems/[a-z0-9-]+$",
            },
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            # a refused report's check (POST /v1/reports, PROTOCOL.md §8.12)
            "reason": {"type": "string", "pattern": _REASON},
        },
        optional=("reason",),
    ),
    "ReportList": _closed(
        {
            "items": _list(
                _closed(
                    {
                        "report_id": _HASH,
                        "rapporteur": {"type": "string", "pattern": _AGENCY},
                        "from": _MONTH,
                        "to": _MONTH,
                        "signed_at": _UINT,
                        "received_at": _UINT,
                    }
                ),
                maxItems=MAX_REPORTS_LISTED,
            )
        }
    ),
    "ReportId": _closed({"report_id": _HASH}),
    "StoredReport": _closed(
        {
            "report_id": _HASH,
            "received_at": _UINT,
            "report": _closed(
                {
                    "type": {"const": "nrm-rapporteur-report"},
                    "spec_version": {"const": 1},
                    "rapporteur": {"type": "string", "pattern": _AGENCY},
                    "kid": {"type": "string"},
                    "from": _MONTH,
                    "to": _MONTH,
                    "k": {"type": "integer", "minimum": 2, "maximum": 1000},
                    "round_to": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "released": {"type": "boolean"},
                    "cells": _list(
                        _closed(
                            {
                                **{
                                    d: {"enum": [*codes, signed_report.TOTAL]}
                                    for d, codes in signed_report.DOMAINS.items()
                                },
                                "count": {"type": ["integer", "null"], "minimum": 0},
                                "suppressed": {"type": "boolean"},
                                "rounded": {"type": "boolean"},
                            }
                        ),
                        maxItems=signed_report.MAX_CELLS,
                    ),
                    "contributions": _list(_HASH, maxItems=signed_report.MAX_CONTRIBUTIONS),
                    "signed_at": _UINT,
                }
            ),
            "signed": _BASE64,
        }
    ),
    "Entry": _closed(_ENTRY_PROPERTIES),
    "LeafEntry": _closed({**_ENTRY_PROPERTIES, "leaf": _LEAF}),
    # POST /v1/proofs: a proof only for an entry inside the tree size asked about.
    "ProvedEntry": _closed(
        {**_ENTRY_PROPERTIES, "leaf": _LEAF, "proof": _PROOF}, optional=("proof",)
    ),
    # GET /v1/events/{event_id}: size and proof only with ?size=, then both.
    "Event": _closed(
        {
            **_ENTRY_PROPERTIES,
            "leaf": _LEAF,
            "leaf_hash": _HASH,
            "size": {**_UINT, "minimum": 1},
            "proof": _PROOF,
        },
        optional=("size", "proof"),
        dependentRequired={"size": ["proof"], "proof": ["size"]},
    ),
    "Checkpoint": _closed(
        {
            "size": _UINT,
            "root": _HASH,
            "timestamp": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
            "note": {"type": "string", "minLength": 1, "maxLength": MAX_CHECKPOINT_BYTES},
            "origin": {
                "type": "string",
                "maxLength": 200,
                "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}"
                "[a-z0-9])?)*/nrm-ledger$",
            },
        }
    ),
    "Checkpoints": _closed(
        {
            "items": _list(
                _closed(
                    {
                        "size": _UINT,
                        "note": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_CHECKPOINT_BYTES,
                        },
                    }
                )
            )
        }
    ),
    "Entries": _closed({"items": _list(_ref("LeafEntry"), maxItems=MAX_RANGE)}),
    "InclusionProof": _closed({"index": _UINT, "size": {**_UINT, "minimum": 1}, "proof": _PROOF}),
    "EventPage": _closed(
        {
            "items": _list(_ref("Entry"), maxItems=500),
            "next_cursor": {"type": ["string", "null"], "pattern": "^(0|[1-9][0-9]*)$"},
        }
    ),
    # GET /v1/accesses: size and the proofs only with ?size=.
    "AccessPage": _closed(
        {
            "items": _list(_ref("ProvedEntry"), maxItems=500),
            "next_cursor": {"type": ["string", "null"], "pattern": "^(0|[1-9][0-9]*)$"},
            "size": {**_UINT, "minimum": 1},
        },
        optional=("size",),
    ),
    "Proofs": _closed(
        {
            "size": {**_UINT, "minimum": 1},
            "items": _list(_ref("ProvedEntry"), maxItems=MAX_PROOF_BATCH),
            "missing": _list(_HEX32, maxItems=MAX_PROOF_BATCH, uniqueItems=True),
        }
    ),
    "ConsistencyProof": _closed({"first": _UINT, "second": _UINT, "proof": _PROOF}),
    "Timeline": _closed({"referral_id": {"type": "string"}, "items": _list(_ref("Entry"))}),
    # Directories and roots (§9.5): each signed file with when the ledger accepted it.
    "Versions": _closed(
        {"items": _list(_closed({"version": _UINT, "accepted_at": _UINT, "data": _BASE64}))}
    ),
    "Restores": _closed(
        {
            "items": _list(
                _closed(
                    {
                        "seq": _UINT,
                        "restored_size": _UINT,
                        "previous_size": {"type": ["integer", "null"], "minimum": 0},
                        "declaration": _BASE64,
                    }
                )
            )
        }
    ),
    "RestoreProof": _closed(
        {"seq": _UINT, "first": _UINT, "second": _UINT, "root": _HASH, "proof": _PROOF}
    ),
    "Stats": _closed(
        {
            "threshold": _UINT,
            "referrals_per_month": _list(
                _cell(
                    month=_MONTH,
                    referral_type={"enum": [*sorted(LABELS["referral_type"]), "unspecified"]},
                    urgency={"enum": [*sorted(LABELS["urgency"]), "unspecified"]},
                )
            ),
            "median_seconds": _list(
                _median(month=_MONTH, to={"enum": ["acknowledged", "accepted"]})
            ),
            "rejections_by_reason": _list(_cell(reason={"type": "string", "pattern": _REASON})),
            "withdrawals_per_month": _list(_cell(month=_MONTH)),
            "overdue_per_month": _list(
                _cell(
                    month=_MONTH,
                    clock={"enum": [*sorted(OVERDUE_CLOCKS), "unspecified"]},
                    urgency={"enum": [*sorted(LABELS["urgency"]), "unspecified"]},
                )
            ),
            "decisions_per_month": _list(
                _cell(
                    month=_MONTH,
                    stage={"enum": [*sorted(DECISION_LABELS["stage"]), "unspecified"]},
                    outcome={"enum": [*sorted(DECISION_LABELS["outcome"]), "unspecified"]},
                    reason={"type": ["string", "null"], "pattern": _REASON},
                )
            ),
            "break_glass_per_month": _list(
                _cell(
                    month=_MONTH,
                    outcome={"enum": sorted(ledger_stats.BREAK_GLASS_OUTCOMES.values())},
                    reason={"type": "string", "pattern": _REASON},
                )
            ),
            "identification_median_seconds": _list(
                _median(month=_MONTH, interval={"enum": list(ledger_stats.INTERVALS)})
            ),
        }
    ),
    "BusLink": _closed(
        {
            "state": {"enum": list(BUS_STATES)},
            "since": _UINT,
            "failed_attempts": _UINT,
        }
    ),
    # /healthz (broker/trust_status.py): versions and expiry times only; `version` is the
    # ledger's release.
    "Health": _closed(
        {
            "status": {"enum": ["ok", "warning", "degraded"]},
            "reasons": _list({"type": "string"}),
            "root_version": _UINT,
            "root_expires": _UINT,
            "directory_version": {"type": ["integer", "null"], "minimum": 0},
            "directory_expires": {"type": ["integer", "null"], "minimum": 0},
            "refused": {"type": "string", "pattern": _REASON},
            "tasks": _list({"type": "string"}),
            "version": {"type": "string"},
            "part": {"const": "ledger"},
            # runtime/bus_link.py: the audit consumer's link, else the directory follower's
            "bus": {"enum": list(BUS_STATES)},
            "bus_link": _closed({"audit": _ref("BusLink"), "directory": _ref("BusLink")}),
        },
        optional=("refused",),
    ),
}


def _op(
    summary: str,
    answer: str,
    params: list[tuple[str, dict[str, Any], bool]] | None = None,
    path_params: list[str] | None = None,
    *,
    errors: tuple[str, ...] = ("400", "401", "404"),
) -> dict[str, Any]:
    """A GET operation answering schema `answer` on 200. `params` are (name, schema,
    required) of query parameters; `errors` the problem statuses it answers: 400 for a
    parameter outside its schema, 404 for a size or index the tree does not have (or an
    unknown id), 422 for two in the wrong order."""
    parameters = [
        {"name": n, "in": "query", "required": req, "schema": schema}
        for n, schema, req in (params or [])
    ] + [
        {"name": n, "in": "path", "required": True, "schema": _PATH_SEGMENT}
        for n in (path_params or [])
    ]
    return {
        "get": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": parameters,
            "responses": _responses(answer, *errors),
        }
    }


def _responses(answer: str, *problems: str) -> dict[str, Any]:
    """Schema `answer` on 200; problem+json on 400 (every operation: a request the server
    cannot parse) and on each of `problems` (401 with its WWW-Authenticate, and with it 403:
    a token whose scope does not read this)."""
    ok = {"description": "OK", "content": {"application/json": {"schema": _ref(answer)}}}
    if "401" in problems:
        at = problems.index("401") + 1
        problems = (*problems[:at], "403", *problems[at:])
    return {
        "200": ok,
        **{
            code: {
                "$ref": f"#/components/responses/{'Unauthorized' if code == '401' else 'Problem'}"
            }
            for code in dict.fromkeys(("400", *problems))
        },
    }


_PROBLEM_CONTENT = {"application/problem+json": {"schema": _ref("Problem")}}
_PROBLEM = {"$ref": "#/components/responses/Problem"}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "NRM Exchange audit ledger",
        "version": "1",
        "description": "Errors are RFC 9457 problem details; every operation answers 400 to "
        "a request the server cannot parse (a request line over "
        f"{DEFAULT_LIMITS.http_max_request_line} bytes, a header field over "
        f"{DEFAULT_LIMITS.http_max_header_field}, over {DEFAULT_LIMITS.http_max_headers} "
        "header fields, not HTTP/1.1).",
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token of ledger.toml, with its scope (PROTOCOL.md §9.0): "
                "`auditor` reads every /v1 operation; `agency:<id>` reads "
                + ", ".join(sorted(AGENCY_ROUTES))
                + " (/v1/events/{event_id} and /v1/proofs only for events that agency "
                "wrote, /v1/accesses only the reads of its referrals); `metrics` reads no /v1 "
                "operation, only /metrics (which `auditor` reads too); `rapporteur` only "
                "posts to /v1/reports, which no other scope may. Anything else answers 403.",
            }
        },
        "schemas": SCHEMAS,
        "responses": {
            "Problem": {"description": "RFC 9457 problem details", "content": _PROBLEM_CONTENT},
            "Unauthorized": {
                "description": "No auditor bearer token, or a wrong one",
                "headers": {
                    "WWW-Authenticate": {
                        "required": True,
                        "schema": {"const": 'Bearer realm="nrm-ledger"'},
                    }
                },
                "content": _PROBLEM_CONTENT,
            },
        },
    },
    "paths": {
        "/v1/checkpoint": _op(
            "The latest signed checkpoint (404: none signed yet)",
            "Checkpoint",
            errors=("401", "404"),
        ),
        "/v1/checkpoints": _op("Every signed checkpoint, by size", "Checkpoints", errors=("401",)),
        "/v1/entries": _op(
            "Entries [start, end), at most 1000 and none past the tree (404: start is past "
            "it; 422: end < start)",
            "Entries",
            [("start", _QUERY_INT, True), ("end", _QUERY_INT, False)],
            errors=("400", "401", "404", "422"),
        ),
        "/v1/entries/{index}/proof": _op(
            "Inclusion proof of an entry (404: no such entry, or size not above its index "
            "or past the tree)",
            "InclusionProof",
            [("size", _TREE_SIZE, False)],
            ["index"],
        ),
        "/v1/events": _op(
            "Search events; next_cursor (a decimal string, or null on the last page) is the "
            "next page's cursor",
            "EventPage",
            [
                ("q", {"type": "string", "maxLength": 64}, False),
                ("cursor", _QUERY_INT, False),
                ("limit", {"type": "integer", "minimum": 1, "maximum": 500}, False),
            ],
            errors=("400", "401"),
        ),
        "/v1/accesses": _op(
            "record.accessed entries of the token's agency's referrals (an auditor: all) "
            "signed at since or later; with size, each inside that tree with its inclusion "
            "proof (404: size is past the tree); at most as many a page as POST /v1/proofs "
            "answers; next_cursor as /v1/events",
            "AccessPage",
            [
                ("since", _QUERY_INT, False),
                ("cursor", _QUERY_INT, False),
                ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PROOF_BATCH}, False),
                ("size", _TREE_SIZE, False),
            ],
            errors=("400", "401", "404"),
        ),
        "/v1/events/{event_id}": _op(
            "One event, with its inclusion proof given ?size=",
            "Event",
            [("size", _TREE_SIZE, False)],
            ["event_id"],
        ),
        "/v1/proof/consistency": _op(
            "Consistency proof between two tree sizes (404: second is past the tree; 422: "
            "first > second)",
            "ConsistencyProof",
            [("first", _QUERY_INT, True), ("second", _QUERY_INT, True)],
            errors=("400", "401", "404", "422"),
        ),
        "/v1/proofs": {
            "post": {
                "summary": "Entries and inclusion proofs of up to 256 events, in one tree size "
                "(404: size is past the tree)",
                "security": [{"bearer": []}],
                "requestBody": json_object_body(
                    ["size", "event_ids"],
                    {
                        "size": {"type": "integer", "minimum": 1, "maximum": MAX_JSON_INT},
                        "event_ids": {
                            "type": "array",
                            "maxItems": MAX_PROOF_BATCH,
                            "items": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                        },
                    },
                ),
                "responses": _responses("Proofs", "400", "401", "404", "413", "415"),
            }
        },
        "/v1/referrals/{referral_id}/timeline": _op(
            "A referral's events in time order (none: an empty list)",
            "Timeline",
            path_params=["referral_id"],
            errors=("401",),
        ),
        "/v1/directories": _op(
            "Every directory version events were verified against", "Versions", errors=("401",)
        ),
        "/v1/restores": _op(
            "Every signed restore declaration, oldest first", "Restores", errors=("401",)
        ),
        "/v1/restores/{seq}/proof": _op(
            "Consistency proof in the tree a restore replaced, from its restored size to size "
            "(404: no such restore, its tree not kept, or size outside that range)",
            "RestoreProof",
            [("size", _QUERY_INT, True)],
            ["seq"],
        ),
        "/v1/roots": _op(
            "The root chain the ledger verified, pinned root first, each a signed root file",
            "Versions",
            errors=("401",),
        ),
        "/healthz": {
            "get": {
                "summary": "ok, warning (directory or root expires soon) or degraded (503: "
                "e.g. `bus-refused`, the bus has not admitted the ledger's NKey for 10 s)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "ok or warning",
                        "content": {"application/json": {"schema": _ref("Health")}},
                    },
                    "503": {
                        "description": "degraded",
                        "content": {"application/json": {"schema": _ref("Health")}},
                    },
                    "400": _PROBLEM,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus: directory and root expiry gauges, nrm_ledger_info{version} "
                "(a token of scope `metrics` or `auditor`; 403 any other)",
                "security": [{"bearer": []}],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "400": _PROBLEM,
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "403": _PROBLEM,
                },
            }
        },
        "/v1/stats": _op(
            "Anonymous monitoring statistics, small cells suppressed", "Stats", errors=("401",)
        ),
        REPORTS_ROUTE: {
            **_op(
                f"The newest {MAX_REPORTS_LISTED} rapporteur reports (PROTOCOL.md §8.12), "
                "newest signed_at first",
                "ReportList",
                errors=("401",),
            ),
            "post": {
                "summary": "A signed rapporteur report (§8.12), from a token of scope "
                "`rapporteur` only: 201 stored, 200 the same bytes held already; 400 refused "
                "(`reason` names the check, nothing stored), 503 no trusted directory yet",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _closed(
                                {
                                    "signatures": {"type": "array"},
                                    "signed": {"type": "object"},
                                }
                            )
                        }
                    },
                },
                "responses": {
                    **_responses("ReportId", "400", "401", "413", "415", "503"),
                    "201": {
                        "description": "Stored",
                        "content": {"application/json": {"schema": _ref("ReportId")}},
                    },
                },
            },
        },
        "/v1/reports/{report_id}": _op(
            "One stored report: its signed members, and the signed file in base64 (404: none "
            "has this id)",
            "StoredReport",
            path_params=["report_id"],
            errors=("401", "404"),
        ),
        "/v1/reports/{report_id}.csv": {
            "get": {
                "summary": "A stored report's cells as CSV (404: none has this id)",
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": "report_id", "in": "path", "required": True, "schema": _PATH_SEGMENT}
                ],
                "responses": {
                    **_responses("ReportId", "401", "404"),
                    "200": {
                        "description": "OK",
                        "content": {"text/csv": {"schema": {"type": "string"}}},
                    },
                },
            }
        },
    },
}
