"""The auditor web UI in a real headless Chromium against a real ledger over HTTP."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright

from broker.ledger_http import UI_DIR as UI
from keys.audit import KINDS, LABELS

from .conftest import fill_ledger
from .support import running_mechanism, unavailable

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path("/tmp/ledger-ui.png")  # noqa: S108  a fixed place for a human to look
SENT = re.compile(r"(^|[^a-z])sent$")
RECEIVED = re.compile(r"(^|[^a-z])received$")


#: One ledger and one browser for the whole module: every test only reads from the ledger,
#: and each has a browser context (so a page and session storage) of its own.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Browser]:
    """Debian's chromium driven by Playwright; skipped where it is not installed (not in CI)."""
    if not HAVE_CHROMIUM:
        unavailable("Debian chromium is not installed: apt-get install -y chromium")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest_asyncio.fixture(loop_scope="module")
async def browser(chromium: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser context for each test (its own pages and session storage)."""
    context = await chromium.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context
    finally:
        await context.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ledger_with_data(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    """A ledger holding a real exchange (`fill_ledger`), shared by this module's tests,
    which only read from it."""
    async with running_mechanism(tmp_path_factory.mktemp("ledger-ui")) as m:
        yield await fill_ledger(m)


def ui_url(ledger: Any) -> str:
    return str(getattr(ledger, "ui_url", None) or ledger.url.rstrip("/") + "/ui/")


async def open_ui(
    browser: BrowserContext, ledger: Any, token: str | None = None
) -> tuple[Page, list[str]]:
    """A page on the UI with the token entered, the checkpoint and first page of events shown;
    also the list that collects console errors (CSP violations land there)."""
    page = await browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(ui_url(ledger))
    await page.fill("#token", token or ledger.token)
    await page.click("#token-submit")
    if token is None:
        await page.wait_for_function(
            "() => document.getElementById('checkpoint-size').textContent !== '—'"
            " && document.querySelectorAll('#events-table tbody tr[data-index]').length > 0"
        )
    return page, errors


async def rows(page: Page) -> list[dict[str, str]]:
    result: list[dict[str, str]] = await page.eval_on_selector_all(
        "#events-table tbody tr[data-index]",
        """trs => trs.map(tr => ({
            agency: tr.dataset.agency || '', kind: tr.dataset.kind || '',
            referral: tr.querySelector('.referral-link')?.dataset.referralId || '',
            reason: tr.querySelector('td.reason').textContent }))""",
    )
    return result


def no_csp_or_script_errors(errors: list[str]) -> None:
    assert not [e for e in errors if "Content Security Policy" in e or "Uncaught" in e], errors


async def test_page_loads_and_shows_a_checkpoint(
    browser: BrowserContext, ledger_with_data: Any
) -> None:
    """The page loads, takes the token and shows the latest checkpoint with a size above zero."""
    page, errors = await open_ui(browser, ledger_with_data)
    assert int(await page.text_content("#checkpoint-size") or "0") > 0
    root = await page.text_content("#checkpoint-root") or ""
    assert re.fullmatch(r"[0-9a-f]{64}", root.lower())
    assert await page.is_visible("#checkpoint-status")
    match = await page.text_content("#checkpoint-note-match") or ""
    assert match.startswith("signed note text matches size, root and cosigned time"), match
    # The time shown is the one in the ledger's cosignature line (76 bytes, §9.3).
    note = await page.text_content("#checkpoint-note") or ""
    blobs = [base64.b64decode(line.rsplit(" ", 1)[1]) for line in note.split("\n")[4:] if line]
    [cosigned] = [int.from_bytes(b[4:12], "big") for b in blobs if len(b) == 76]
    shown = datetime.fromtimestamp(cosigned, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await page.text_content("#checkpoint-time") == shown
    stored = await page.evaluate("sessionStorage.getItem('nrm-ledger-token')")
    assert stored == ledger_with_data.token
    no_csp_or_script_errors(errors)


async def test_refetched_checkpoint_is_verified_in_the_browser(
    browser: BrowserContext, ledger_with_data: Any
) -> None:
    """Fetching the checkpoint again makes the browser check it against the first one it saw."""
    page, errors = await open_ui(browser, ledger_with_data)
    await page.click("#refresh-checkpoint")
    await page.wait_for_function(
        "() => ['verified', 'FAILED']"
        ".includes(document.getElementById('checkpoint-status').textContent)"
    )
    assert await page.text_content("#checkpoint-status") == "verified", await page.text_content(
        "#checkpoint-basis"
    )
    assert "browser" in (await page.text_content("#checkpoint-status-label") or "")
    no_csp_or_script_errors(errors)


async def test_a_wrong_token_is_refused(browser: BrowserContext, ledger_with_data: Any) -> None:
    """A wrong token shows the ledger's refusal and asks for the token again."""
    page, _ = await open_ui(browser, ledger_with_data, token="not-the-auditor-token")
    await page.wait_for_selector("#error", state="visible")
    assert await page.is_visible("#token-form")
    assert await page.is_hidden("#content")
    assert await page.evaluate("sessionStorage.getItem('nrm-ledger-token')") is None


async def test_search_narrows_the_table(browser: BrowserContext, ledger_with_data: Any) -> None:
    """Typing an agency or kind in the search box leaves fewer rows, all of them matching it."""
    page, errors = await open_ui(browser, ledger_with_data)
    before = await rows(page)
    headers = {"Authorization": f"Bearer {ledger_with_data.token}"}
    candidates = sorted({r["agency"] for r in before} | {r["kind"] for r in before} - {""})
    counts: dict[str, int] = {}
    for term in candidates:
        resp = await page.request.get(
            f"{ledger_with_data.url.rstrip('/')}/v1/events",
            params={"q": term, "limit": "200"},
            headers=headers,
        )
        assert resp.ok, await resp.text()
        counts[term] = len((await resp.json())["items"])
    term = min(candidates, key=lambda t: counts[t])
    assert counts[term] < len(before), f"no agency or kind narrows the table: {counts}"

    await page.fill("#search", term)
    await page.wait_for_function(
        "t => document.getElementById('events-info').textContent.includes(t)", arg=term
    )
    after = await rows(page)
    assert 0 < len(after) < len(before)
    t = term.lower()
    for r in after:
        assert any(t in v.lower() for v in r.values()), r
    no_csp_or_script_errors(errors)


async def test_clicking_a_referral_opens_its_timeline(
    browser: BrowserContext, ledger_with_data: Any
) -> None:
    """Clicking a referral id opens its timeline, in time order, with sent and received in it."""
    page, errors = await open_ui(browser, ledger_with_data)
    sent_rows = [r for r in await rows(page) if SENT.search(r["kind"]) and r["referral"]]
    assert sent_rows, "no 'sent' event on the first page"
    referral = sent_rows[0]["referral"]
    await page.click(f"#events-table .referral-link[data-referral-id='{referral}']")
    await page.wait_for_selector("#timeline .timeline-item")
    assert await page.is_visible("#timeline")
    assert await page.text_content("#timeline-referral") == referral
    items = await page.eval_on_selector_all(
        "#timeline .timeline-item",
        "lis => lis.map(li => [li.dataset.kind, li.querySelector('time').dateTime])",
    )
    kinds = [k for k, _ in items]
    assert any(SENT.search(k) for k in kinds), kinds
    assert any(RECEIVED.search(k) for k in kinds), kinds
    times = [t for _, t in items]
    assert times == sorted(times)
    no_csp_or_script_errors(errors)


async def test_each_chart_renders_bars(browser: BrowserContext, ledger_with_data: Any) -> None:
    """Each statistics chart renders an svg with at least one bar; suppressed cells show "<5"."""
    page, errors = await open_ui(browser, ledger_with_data)
    charts = [
        "#chart-referrals",
        "#chart-rejections",
        "#chart-withdrawals",
        "#median-times",
        "#chart-overdue",
        "#chart-decisions",
        "#median-identification",
        "#chart-break-glass",
    ]
    await page.wait_for_selector("#chart-withdrawals svg")
    for chart in charts:
        assert await page.locator(f"{chart} svg").count() == 1, chart
    # Referrals and rejections have data in the fixture; withdrawals, acceptance times and
    # overdue referrals and identification decisions come from consent, lifecycle, clock
    # and decision events, which the fixture's exchange does not make.
    for chart in ["#chart-referrals", "#chart-rejections"]:
        assert await page.locator(f"{chart} svg rect.bar").count() >= 1, chart
    threshold = await page.text_content("#stats-threshold")
    labels = await page.eval_on_selector_all(
        "#stats .suppressed-label", "ts => ts.map(t => t.textContent)"
    )
    assert set(labels) <= {f"<{threshold}"}
    suppressed_bars = await page.locator("#stats rect.bar.suppressed").count()
    assert suppressed_bars == len(labels)
    await page.locator("#events").scroll_into_view_if_needed()
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    no_csp_or_script_errors(errors)


# --- the auditor's view of failures, words, directions, suppression, labels, 404, framing ---

#: What each event kind reads as in the table and the timeline (written apart from app.js).
KIND_WORDS = {
    "referral.sent": "Referral sent",
    "referral.received": "Referral received",
    "message.rejected": "Message refused",
    "receipt.sent": "Receipt sent",
    "receipt.received": "Receipt received",
    "directory.accepted": "Directory accepted",
    "directory.refused": "Directory refused",
    "key.rotated": "Keys rotated",
    "transition.sent": "Status change sent",
    "transition.received": "Status change received",
    "consent.recorded": "Consent recorded",
    "consent.withdrawn": "Consent withdrawn",
    "consent.unverifiable": "Consent not verifiable",
    "erasure.confirmed": "Erasure confirmed",
    "escalation.sent": "Escalated to co-ordinator",
    "resend.requested": "Resend requested",
    "resend.honoured": "Resend honoured",
    "delivery.failed": "Delivery failed",
    "standing.changed": "Standing changed",
    "alert.acknowledged": "Alert acknowledged",
    "retention.purged": "Retention purge",
    "record.accessed": "Record accessed",
    "clock.overdue": "Overdue, told co-ordinator",
    "identification.decided": "Identification decided",
    "identification.sent": "Identification decision sent",
    "identification.received": "Identification decision received",
    "catalogue.published": "Service catalogue published",
    "break-glass.requested": "Break-glass referral requested",
    "break-glass.confirmed": "Break-glass referral confirmed, sent",
    "break-glass.refused": "Break-glass referral refused",
    "break-glass.lapsed": "Break-glass referral lapsed unconfirmed",
    "protection.notified": "Protection notice sent",
    "protection.received": "Protection notice received",
    "reconsideration.requested": "Reconsideration requested",
    "reconsideration.received": "Reconsideration request received",
    "case.left": "Case ended: the person left the process",
    "case.closed": "Case closed: reconsideration window ran out",
    "transfer-request.sent": "Transfer of the case requested",
    "transfer-request.received": "Transfer request received",
    "transfer-step.sent": "Transfer step sent",
    "transfer-step.received": "Transfer step received",
    "statistics.contributed": "Statistics sent to the rapporteur",
    "statistics.received": "Statistics received from an authority",
    "transfer.sent": "Case transfer proposed",
    "transfer.received": "Case transfer received",
    "case-owner-changed.sent": "Authority told of the new case owner",
}
#: What each statistics label value reads as.
LABEL_WORDS = {
    ("referral_type", "nrm_full"): "Full NRM referral",
    ("referral_type", "anonymous_notification"): "Anonymous notification",
    ("referral_type", "transnational"): "Transnational referral",
    ("referral_type", "service_request"): "Service request",
    ("urgency", "routine"): "Routine",
    ("urgency", "urgent"): "Urgent",
    ("urgency", "emergency"): "Emergency",
    ("break_glass", "yes"): "Break-glass",
    **{
        ("state", code): f"New state: {words}"
        for code, words in {
            "submitted": "Submitted",
            "delivered": "Delivered",
            "acknowledged": "Acknowledged",
            "accepted": "Accepted",
            "declined": "Declined",
            "more_info_requested": "More information requested",
            "in_progress": "In progress",
            "closed": "Closed",
            "withdrawn": "Withdrawn",
            "cancelled": "Cancelled",
            "expired": "Expired",
        }.items()
    },
}
#: Kinds whose counterpart sent to the recording agency (§9.0): drawn with ←.
INCOMING = {
    "referral.received",
    "receipt.received",
    "transition.received",
    "message.rejected",
    "erasure.confirmed",
    "record.accessed",  # the reader <- the owner that sent it the referral
    "identification.received",
    "protection.received",
    "reconsideration.received",
    "transfer-request.received",
    "transfer-step.received",
    "statistics.received",
}
STATUS_SETTLED = (
    "() => ['verified', 'FAILED'].includes(document.getElementById('checkpoint-status')"
    ".textContent) && document.getElementById('checkpoint-basis').textContent !== ''"
)


async def api_json(page: Page, ledger: Any, path: str) -> Any:
    resp = await page.request.get(
        ledger.url.rstrip("/") + path, headers={"Authorization": f"Bearer {ledger.token}"}
    )
    assert resp.ok, await resp.text()
    return await resp.json()


def forged(cp: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint `cp` with another root of the same size, its note's root line changed
    to match (the browser checks consistency, not the note's signatures)."""
    root = hashlib.sha256(b"forged " + bytes.fromhex(cp["root"])).digest()
    lines = cp["note"].split("\n")
    lines[2] = base64.b64encode(root).decode()
    return {**cp, "root": root.hex(), "note": "\n".join(lines)}


async def check_now(page: Page) -> str:
    """Fetch and check the checkpoint again; the status it settles on."""
    await page.evaluate(
        "() => { document.getElementById('checkpoint-status').textContent = '';"
        " document.getElementById('checkpoint-basis').textContent = ''; }"
    )
    await page.click("#refresh-checkpoint")
    await page.wait_for_function(STATUS_SETTLED)
    return await page.text_content("#checkpoint-status") or ""


async def test_a_failed_check_stays_visible_until_acknowledged(
    browser: BrowserContext, ledger_with_data: Any
) -> None:
    """A ledger that answers one fetch with a forked checkpoint and the next with the honest
    one: the failure stays in the alarm after the honest check (and a page reload) until the
    auditor acknowledges it; then it is listed as acknowledged, with both notes."""
    page, errors = await open_ui(browser, ledger_with_data)
    honest = await api_json(page, ledger_with_data, "/v1/checkpoint")
    fork = forged(honest)

    async def lie(route: Route) -> None:
        await route.fulfill(json=fork, headers={"Content-Type": "application/json"})

    # The ledger's answer is replaced on the way (as a man in the middle or a forked ledger
    # would answer): the ledger itself cannot be made to sign two views.
    await page.route("**/v1/checkpoint", lie)
    assert await check_now(page) == "FAILED"
    await page.unroute("**/v1/checkpoint", lie)
    alarm = page.locator("#failures")
    assert await alarm.is_visible()
    assert await alarm.get_attribute("role") == "alert"
    text = await page.text_content("#failures-list") or ""
    assert f"size {honest['size']}" in text and "same size, different root" in text, text

    assert await check_now(page) == "verified"
    assert await alarm.is_visible(), "the honest checkpoint hid the earlier failure"
    assert "FAILED" in (await page.text_content("#checkpoint-basis") or "")
    assert await page.text_content("#failures-count") == "1"
    await page.screenshot(path=str(SCREENSHOT.with_name("ledger-ui-failure.png")))

    await page.reload()
    await page.wait_for_selector("#failures", state="visible")
    evidence = await page.eval_on_selector_all(
        "#failures-list .evidence pre", "ps => ps.map(p => p.textContent)"
    )
    assert evidence == [honest["note"], fork["note"]]

    await page.click("#failures-list button.acknowledge")
    await page.wait_for_selector("#failures", state="hidden")
    past = page.locator("#failures-acknowledged li")
    assert await past.count() == 1
    assert "Acknowledged at" in (await past.text_content() or "")
    # The baseline had moved on by itself: acknowledging keeps it, so checks still hold.
    assert await check_now(page) == "verified"
    assert await alarm.is_hidden()
    no_csp_or_script_errors(errors)


async def test_acknowledging_a_lasting_failure_checks_on_from_the_latest(
    browser: BrowserContext, ledger_with_data: Any
) -> None:
    """Checks that keep failing against the same earlier checkpoint are one failure seen
    again; acknowledging it makes the latest checkpoint the baseline, so checks hold again."""
    page, errors = await open_ui(browser, ledger_with_data)
    honest = await api_json(page, ledger_with_data, "/v1/checkpoint")
    await page.evaluate(
        "cp => sessionStorage.setItem('nrm-ledger-checkpoint', JSON.stringify(cp))",
        forged(honest),
    )
    assert await check_now(page) == "FAILED"
    assert await check_now(page) == "FAILED"
    assert await page.locator("#failures-list li").count() == 1
    assert "seen 2 times" in (await page.text_content("#failures-list") or "")
    await page.click("#failures-list button.acknowledge")
    await page.wait_for_selector("#failures", state="hidden")
    assert await check_now(page) == "verified"
    base = await page.evaluate("JSON.parse(sessionStorage.getItem('nrm-ledger-checkpoint'))")
    assert base["root"] == honest["root"]
    no_csp_or_script_errors(errors)


async def test_table_and_timeline_show_words_for_codes(
    browser: BrowserContext, ledger_with_data: Any
) -> None:
    """Every kind and label value has its words in app.js; the table and a timeline show
    those words (the code in the tooltip), never the raw code."""
    app_js = (UI / "app.js").read_text()
    assert set(KIND_WORDS) == KINDS
    for kind, text in KIND_WORDS.items():
        assert f'"{kind}": "{text}"' in app_js, kind
    assert {name for name, _ in LABEL_WORDS} == set(LABELS)
    assert {(n, v) for n, values in LABELS.items() for v in values} == set(LABEL_WORDS)

    page, errors = await open_ui(browser, ledger_with_data)
    shown = await page.eval_on_selector_all(
        "#events-table tbody tr[data-index]",
        """trs => trs.map(tr => ({
            index: Number(tr.dataset.index),
            kind: tr.querySelector('.kind').textContent,
            code: tr.querySelector('.kind').title,
            labels: [...tr.querySelectorAll('.label')].map(l => l.textContent) }))""",
    )
    page_items = (await api_json(page, ledger_with_data, "/v1/events?limit=50"))["items"]
    assert [r["index"] for r in shown] == [e["index"] for e in page_items]
    labelled = 0
    for row, e in zip(shown, page_items, strict=True):
        assert row["kind"] == KIND_WORDS[e["kind"]] and row["code"] == e["kind"], row
        assert row["labels"] == [LABEL_WORDS[(n, e["labels"][n])] for n in sorted(e["labels"])]
        labelled += bool(e["labels"])
    assert labelled, "no event with labels on the first page"

    rid = next(e["referral_id"] for e in page_items if e["labels"].get("urgency") == "urgent")
    await page.click(f"#events-table .referral-link[data-referral-id='{rid}']")
    await page.wait_for_selector("#timeline .timeline-item")
    items = await page.eval_on_selector_all(
        "#timeline .timeline-item",
        """lis => lis.map(li => [li.dataset.kind, li.querySelector('.kind').textContent,
            [...li.querySelectorAll('.label')].map(l => l.textContent)])""",
    )
    assert {(k, w) for k, w, _ in items} == {(k, KIND_WORDS[k]) for k, _, _ in items}
    assert any("Urgent" in labels and "Full NRM referral" in labels for _, _, labels in items)
    legend = await page.eval_on_selector_all(
        "#chart-referrals .legend li[data-series]", "lis => lis.map(li => li.textContent)"
    )
    assert "Full NRM referral · Urgent" in legend, legend
    no_csp_or_script_errors(errors)


async def test_arrows_point_from_sender_to_receiver(
    browser: BrowserContext, ledger_with_data: Any
) -> None:
    """A received event reads "receiver ← sender" in the timeline and "← sender" in the
    table; a sent one "sender → recipient" and "→ recipient"."""
    page, errors = await open_ui(browser, ledger_with_data)
    page_items = (await api_json(page, ledger_with_data, "/v1/events?limit=50"))["items"]
    cells = await page.eval_on_selector_all(
        "#events-table tbody tr[data-index]",
        "trs => trs.map(tr => tr.querySelector('td.counterpart').textContent)",
    )
    for e, cell in zip(page_items, cells, strict=True):
        if e["counterpart"] is None:
            assert cell == "—"
        else:
            arrow = "←" if e["kind"] in INCOMING else "→"
            assert cell == f"{arrow} {e['counterpart']}", (e, cell)
    kinds = {e["kind"] for e in page_items if e["counterpart"]}
    assert {"referral.received", "referral.sent", "receipt.received"} <= kinds, kinds

    rid = next(e["referral_id"] for e in page_items if e["kind"] == "referral.received")
    await page.click(f"#events-table .referral-link[data-referral-id='{rid}']")
    await page.wait_for_selector("#timeline .timeline-item")
    routes = await page.eval_on_selector_all(
        "#timeline .timeline-item",
        "lis => lis.map(li => [Number(li.dataset.index), li.querySelector('.route').textContent])",
    )
    timeline = (await api_json(page, ledger_with_data, f"/v1/referrals/{rid}/timeline"))["items"]
    by_index = {e["index"]: e for e in timeline}
    seen = set()
    for index, text in routes:
        e = by_index[index]
        if e["kind"].endswith(".received"):
            assert text == f"{e['agency']} ← {e['counterpart']}", text
            seen.add("received")
        elif e["kind"].endswith(".sent"):
            assert text == f"{e['agency']} → {e['counterpart']}", text
            seen.add("sent")
    assert seen == {"sent", "received"}
    no_csp_or_script_errors(errors)


async def test_suppressed_cells_stay_apart_per_series_and_off_the_value_scale(
    browser: BrowserContext, ledger_with_data: Any
) -> None:
    """Each suppressed cell is a marker below the zero line (so no height on the scale),
    all of one size, hatched in its own series' colour; the fixture's referral chart has
    three series, every cell suppressed, and they come out in three colours."""
    page, errors = await open_ui(browser, ledger_with_data)
    await page.wait_for_selector("#chart-referrals svg")
    markers = await page.eval_on_selector_all(
        "#stats svg",
        """svgs => svgs.flatMap(svg => {
            const zero = Number(svg.querySelector('line.axis').getAttribute('y1'));
            return [...svg.querySelectorAll('rect.bar.suppressed')].map(r => {
                const id = r.getAttribute('fill').match(/^url\\(#(.+)\\)$/)[1];
                const line = svg.querySelector(`pattern[id="${id}"] line`);
                const swatch = svg.closest('figure').querySelector(
                    `.legend li[data-series="${r.dataset.series}"] .swatch`);
                return { chart: svg.closest('.chart').id, series: r.dataset.series, zero,
                         y: Number(r.getAttribute('y')), h: Number(r.getAttribute('height')),
                         hatch: getComputedStyle(line).stroke,
                         swatch: getComputedStyle(swatch).backgroundColor };
            });
        })""",
    )
    referrals = [m for m in markers if m["chart"] == "chart-referrals"]
    assert len({m["series"] for m in referrals}) == 3, referrals
    assert len({m["hatch"] for m in referrals}) == 3, referrals
    for m in markers:
        assert m["y"] > m["zero"], m
        assert m["hatch"] == m["swatch"], m
    assert len({m["h"] for m in markers}) == 1, markers
    # No suppressed cell has a bar on the scale: the only bars above the line have values.
    threshold = await page.text_content("#stats-threshold")
    labels = await page.eval_on_selector_all(
        "#chart-referrals .suppressed-label", "ts => ts.map(t => t.textContent)"
    )
    assert labels == [f"<{threshold}"] * len(referrals)
    assert await page.locator("#chart-referrals rect.bar:not(.suppressed)").count() == 0
    no_csp_or_script_errors(errors)


async def test_every_button_says_what_it_does_on_hover(
    browser: BrowserContext, ledger_with_data: Any
) -> None:
    """Every button, also those made later (referral links, the timeline's close), has a
    tooltip (title) and an accessible name."""
    page, errors = await open_ui(browser, ledger_with_data)
    await page.click("#events-table .referral-link >> nth=0")
    await page.wait_for_selector("#timeline .timeline-item")
    buttons = await page.eval_on_selector_all(
        "button",
        "bs => bs.map(b => [b.id || b.className, b.title, b.getAttribute('aria-label') ||"
        " b.textContent.trim()])",
    )
    assert len(buttons) >= 7
    for name, title, accessible in buttons:
        assert title.strip() and accessible.strip(), name
    # The hover shows the title: the button under the pointer is the one with it.
    await page.hover("#refresh-checkpoint")
    hovered = await page.evaluate("document.querySelector('button:hover')?.title || ''")
    assert hovered.startswith("Fetch the latest checkpoint"), hovered
    no_csp_or_script_errors(errors)


async def test_an_unknown_page_is_a_page_for_browsers_and_a_problem_for_clients(
    browser: BrowserContext, ledger_with_data: Any
) -> None:
    """A browser sent to an address the ledger does not have gets an HTML 404 page (styled,
    within the CSP, with a way back to the UI); an API client gets problem+json."""
    page = await browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    base = ledger_with_data.url.rstrip("/")
    for path in ("/no-such-page", "/ui/no-such-file.js"):
        resp = await page.goto(base + path)
        assert resp is not None and resp.status == 404, path
        assert (resp.headers.get("content-type") or "").startswith("text/html")
        assert await page.text_content("h2") == "Page not found (404)"
        # The stylesheet applied: the header bar has its colour.
        colour = await page.eval_on_selector(".top", "e => getComputedStyle(e).backgroundColor")
        assert colour == "rgb(23, 50, 79)", colour
        await page.click("#to-ui")
        await page.wait_for_selector("#token-form")
        assert page.url == base + "/ui/"
    errors = [e for e in errors if "404" not in e]  # the page's own status is logged
    no_csp_or_script_errors(errors)
    for accept in ("application/json", "*/*", ""):
        resp = await page.request.get(base + "/no-such-page", headers={"Accept": accept})
        assert resp.status == 404
        assert resp.headers["content-type"].startswith("application/problem+json"), accept
        assert (await resp.json())["status"] == 404


async def test_no_page_can_frame_the_ledger(browser: BrowserContext, ledger_with_data: Any) -> None:
    """Every answer (the UI, its files, the API, errors, the 404 page, the redirect) says
    frame-ancestors 'none' and X-Frame-Options DENY, and Chromium refuses to show the UI in
    another page's frame."""
    page = await browser.new_page()
    base = ledger_with_data.url.rstrip("/")
    html = {"Accept": "text/html"}
    answers = [
        ("/ui/", {}),
        ("/ui/app.js", {}),
        ("/openapi.json", {}),
        ("/v1/checkpoint", {}),  # 401: no token
        ("/v1/checkpoint", {"Authorization": f"Bearer {ledger_with_data.token}"}),
        ("/no-such-page", html),
        ("/no-such-page", {}),
        ("/", {}),  # the redirect to /ui/
    ]
    for path, headers in answers:
        resp = await page.request.get(base + path, headers=headers, max_redirects=0)
        csp = resp.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, (path, csp)
        assert resp.headers.get("x-frame-options") == "DENY", path

    frames: list[str] = []
    page.on("console", lambda m: frames.append(m.text))
    async with page.expect_console_message(lambda m: "frame-ancestors" in m.text):
        await page.set_content(f'<iframe id="f" src="{base}/ui/"></iframe>')
    [child] = page.main_frame.child_frames
    assert await child.query_selector("#token-form") is None, frames
