"""/admin/queues in a real browser: Debian's Chromium driven by Playwright against the
service on a loopback port (uvicorn in a thread, the real app), with real Redis,
PostgreSQL and an in-process worker.

Needs `apt-get install chromium` and the `playwright` package (no browser download:
Playwright drives /usr/bin/chromium). The overview's screenshot lands in test-output/.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from playwright.async_api import Error as PlaywrightError

from erp_sync.api.app import create_app
from erp_sync.jobs.names import SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.service import trigger_sync
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from tests.admin.test_admin_http import BASE, PASSWORD, USER, admin_settings
from tests.conftest import ROOT, free_port
from tests.jobs.helpers import add_tenant, flaky_handler, handlers_with, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
OUTPUT = ROOT / "test-output"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("the browser tests need Debian's Chromium: apt-get install -y chromium")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[str]:
    """The real app under uvicorn on a free loopback port, in a thread of this process."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 15)


@contextlib.contextmanager
def static_site(html: str) -> Iterator[str]:
    """Another origin on loopback serving one page: the cross-site attacker."""
    body = html.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.asynccontextmanager
async def signed_in(
    browser: Browser, origin: str, password: str = PASSWORD
) -> AsyncIterator[tuple[BrowserContext, Page]]:
    context = await browser.new_context(
        http_credentials={"username": USER, "password": password, "origin": origin},
        viewport={"width": 1366, "height": 800},  # a laptop screen
    )
    context.set_default_timeout(10_000)
    try:
        yield context, await context.new_page()
    finally:
        await context.close()


async def status_of(page: Page, url: str) -> int:
    """The HTTP status the browser got, also when it then gives up on the page (Chromium
    ends a navigation answered 401 with ERR_INVALID_AUTH_CREDENTIALS)."""
    async with page.expect_response(url) as info:
        with contextlib.suppress(PlaywrightError):
            await page.goto(url)
    return (await info.value).status


def cell(page: Page, queue: str, state: str) -> Any:
    return page.locator(f'tr[data-queue="{queue}"] td[data-state="{state}"]')


@pytest.fixture
def admin(fast: Settings) -> Settings:
    return admin_settings(fast)


OK = handlers_with(flaky_handler(0))


async def test_off_by_default_then_basic_auth(browser: Browser, fast: Settings) -> None:
    async with serve(fast) as off:  # ENABLE_BULLBOARD unset
        page = await browser.new_page()
        response = await page.goto(f"{off}{BASE}")
        assert response is not None and response.status == 404
        await page.close()
    async with serve(admin_settings(fast)) as url:
        page = await browser.new_page()  # no credentials
        assert await status_of(page, f"{url}{BASE}") == 401
        await page.close()
        async with signed_in(browser, url, password="not-the-password") as (_, page):
            assert await status_of(page, f"{url}{BASE}") == 401
        async with signed_in(browser, url) as (_, page):
            response = await page.goto(f"{url}{BASE}")
            assert response is not None and response.status == 200
            await expect(page.locator("header .who")).to_contain_text(f"signed in as {USER}")


async def test_pause_keeps_new_jobs_waiting_until_resume(
    browser: Browser,
    admin: Settings,
    rt: Runtime,
    queues: JobQueues,
    start_worker: Callable[..., Any],
) -> None:
    await add_tenant(rt, "acme")
    worker = await start_worker(OK)
    async with serve(admin) as url, signed_in(browser, url) as (_, page):
        await page.goto(f"{url}{BASE}")
        await expect(page.locator("table.workers")).to_contain_text(worker.worker_id)
        await page.get_by_role("button", name="Pause sync").click()
        await expect(page.locator(".flash.ok")).to_have_text(
            "queue sync paused: workers take no new jobs"
        )
        await expect(page.locator('tr[data-queue="sync"] .badge')).to_have_text("paused")

        job = await trigger_sync(rt, queues, "acme")
        await asyncio.sleep(1.5)  # the worker polls, and must not take it
        assert await queues.job_state(SYNC_QUEUE, job.job_id) == "waiting"
        # The overview refreshes its numbers by itself, without a reload.
        await expect(cell(page, "sync", "waiting")).to_have_text("1", timeout=12_000)
        OUTPUT.mkdir(exist_ok=True)
        await page.screenshot(path=str(OUTPUT / "admin-overview.png"), full_page=True)

        await page.get_by_role("button", name="Resume sync").click()
        await expect(page.locator(".flash.ok")).to_have_text("queue sync resumed")

        async def completed() -> bool:
            return await queues.job_state(SYNC_QUEUE, job.job_id) == "completed"

        await wait_until(completed, timeout=15, what="the job to run once the queue resumed")
        await page.reload()
        await expect(cell(page, "sync", "completed")).to_have_text("1")
        await expect(cell(page, "sync", "waiting")).to_have_text("0")


async def test_retry_a_failed_job_and_find_it_in_the_failures_view(
    browser: Browser,
    admin: Settings,
    rt: Runtime,
    queues: JobQueues,
    start_worker: Callable[..., Any],
) -> None:
    await add_tenant(rt, "acme")
    await start_worker(handlers_with(flaky_handler(1)))  # each job fails its first attempt
    async with (
        serve(admin_settings(admin, job_attempts=1)) as url,
        signed_in(browser, url) as (
            _,
            page,
        ),
    ):
        await page.goto(f"{url}{BASE}")
        await page.get_by_label("Tenant id").fill("acme")
        await page.get_by_role("button", name="Reprocess").click()
        flash = page.locator(".flash.ok")
        await expect(flash).to_contain_text("queued sync of tenant acme as job ")
        job_id = re.sub(r".* as job ", "", await flash.inner_text()).strip()

        async def failed() -> bool:
            return await queues.job_state(SYNC_QUEUE, job_id) == "failed"

        await wait_until(failed, timeout=15, what="the job to fail")

        # Failures view: the runbook's section-5 columns, filtered by tenant.
        await page.get_by_role("link", name="Failures").click()
        await page.get_by_label("Tenant").fill("acme")
        await page.get_by_role("button", name="Filter").click()
        row = page.locator("table.failures tbody tr").first
        for text in ("acme", "FAILED", "sync-tenant", "ERP answered 503 (attempt 1)"):
            await expect(row).to_contain_text(text)
        OUTPUT.mkdir(exist_ok=True)
        await page.screenshot(path=str(OUTPUT / "admin-failures.png"), full_page=True)
        await page.get_by_label("Tenant").fill("someone-else")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("table.failures")).to_contain_text("No failed job runs")
        await page.go_back()

        # From the failed run to its job, and retry it there.
        await page.locator("table.failures tbody tr").first.get_by_role("link", name=job_id).click()
        await expect(page.locator("h1 .badge")).to_have_text("failed")
        await expect(page.locator("dl.facts")).to_contain_text("ERP answered 503 (attempt 1)")
        await page.get_by_role("button", name="Retry this job").click()
        await expect(page.locator(".flash.ok")).to_have_text(f"job {job_id} sent back to waiting")

        async def completed() -> bool:
            return await queues.job_state(SYNC_QUEUE, job_id) == "completed"

        await wait_until(completed, timeout=15, what="the retried job to complete")
        await page.reload()
        await expect(page.locator("h1 .badge")).to_have_text("completed")
        statuses = await page.locator("table.runs tbody tr .badge").all_inner_texts()
        assert sorted(statuses) == ["COMPLETED", "FAILED"]
        await page.screenshot(path=str(OUTPUT / "admin-job.png"), full_page=True)
        await page.get_by_role("link", name="sync").first.click()
        await page.get_by_role("link", name="completed (1)").click()
        await expect(page.locator(f'tr[data-job="{job_id}"]')).to_contain_text("2 / 1")
        await page.screenshot(path=str(OUTPUT / "admin-queue.png"), full_page=True)


async def test_cross_site_posts_are_refused(
    browser: Browser, admin: Settings, queues: JobQueues
) -> None:
    async with serve(admin) as url, signed_in(browser, url) as (_, page):
        await page.goto(f"{url}{BASE}")  # the operator is signed in
        target = f"{url}{BASE}/queue/sync/pause"
        attack = f"""<!doctype html><title>cats</title>
<form id="f" method="post" action="{target}">
<input type="hidden" name="csrf" value="1700000000.{"0" * 64}">
</form>
<script>document.getElementById("f").submit();</script>"""
        with static_site(attack) as evil:
            async with page.expect_response(lambda r: r.url == target and r.status != 401) as info:
                await page.goto(evil)
            refused = await info.value
            assert refused.status == 403
            # A script on the other site cannot do it either, credentials or not.
            await page.goto(evil)
            await page.evaluate(
                """t => fetch(t, {method: "POST", mode: "no-cors", credentials: "include",
                                  body: new URLSearchParams({csrf: "x"})}).catch(() => null)""",
                target,
            )
        assert await queues.sync.isPaused() is False

        # On our own origin, a request without the page's token is refused too ...
        await page.goto(f"{url}{BASE}")
        status = await page.evaluate(
            "t => fetch(t, {method: 'POST', body: new URLSearchParams({})}).then(r => r.status)",
            target,
        )
        assert status == 403
        assert await queues.sync.isPaused() is False
        # ... and the page's own form works.
        await page.get_by_role("button", name="Pause sync").click()
        await expect(page.locator(".flash.ok")).to_contain_text("queue sync paused")
        assert await queues.sync.isPaused() is True
