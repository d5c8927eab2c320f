"""The auditor web UI in a real headless Chromium against a real ledger over HTTP."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

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
            reason: tr.cells[6].textContent }))""",
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
    charts = ["#chart-referrals", "#chart-rejections", "#chart-withdrawals", "#median-times"]
    await page.wait_for_selector("#chart-withdrawals svg")
    for chart in charts:
        assert await page.locator(f"{chart} svg").count() == 1, chart
    # Referrals and rejections have data in the fixture; withdrawals and acceptance times
    # come from consent and lifecycle events, which the fixture's exchange does not make.
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
