"""The /admin/queues pages over HTTP (httpx against the real app, real Redis, PostgreSQL,
BullMQ): who gets in, what refuses cross-site posts, and what each view and action does."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from pydantic import SecretStr

from erp_sync.admin import auth
from erp_sync.admin.auth import LOCK_SECONDS, MAX_FAILURES, Admin, signing_key
from erp_sync.api.app import create_app
from erp_sync.errors import RetryableError
from erp_sync.jobs import runs
from erp_sync.jobs.names import SYNC_JOB, SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.service import trigger_sync
from erp_sync.jobs.worker import JobContext
from erp_sync.kit.logging import register_secret
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from tests.conftest import erp_sync_cmd, free_port, service_env
from tests.interop.test_node_bullmq import node, node_ready  # noqa: F401 - fixture
from tests.jobs.helpers import add_tenant, flaky_handler, handlers_with, wait_until

USER = "ops-admin"
PASSWORD = "correct-horse-battery-9"
BASE = "/admin/queues"


def admin_settings(settings: Settings, **extra: Any) -> Settings:
    return settings.model_copy(
        update={
            "enable_bullboard": True,
            "bullboard_user": USER,
            "bullboard_pass": SecretStr(PASSWORD),
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def client_for(
    settings: Settings,
    auth: tuple[str, str] | None = (USER, PASSWORD),
    client: tuple[str, int] = ("127.0.0.1", 50000),
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=client),
            base_url="http://testserver",
            auth=auth,
        ) as c,
    ):
        yield c


@pytest.fixture
def admin(fast: Settings) -> Settings:
    return admin_settings(fast)


@pytest.fixture
async def web(admin: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(admin) as c:
        yield c


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


async def token(web: httpx.AsyncClient) -> str:
    r = await web.get(BASE)
    assert r.status_code == 200, r.text
    return csrf_of(r.text)


def queue_row(html: str, queue: str) -> dict[str, Any]:
    """The overview's row of one queue: counts per state and paused or not."""
    row = re.search(rf'<tr data-queue="{queue}">(.*?)</tr>', html, re.S)
    assert row, f"no row for queue {queue}"
    counts = {
        state: int(n)
        for state, n in re.findall(r'data-state="(\w+)"><a [^>]*>(\d+)</a>', row.group(1))
    }
    return {"paused": 'class="badge paused"' in row.group(1), "counts": counts}


def flash_of(html: str) -> str | None:
    match = re.search(r'<p class="flash (\w+)" role="status">(.*?)</p>', html, re.S)
    return f"{match.group(1)}: {match.group(2)}" if match else None


async def post(
    web: httpx.AsyncClient, path: str, data: dict[str, str] | None = None, **kw: Any
) -> httpx.Response:
    """A POST as our own page makes it: with the page's CSRF token, following the 303."""
    fields = {"csrf": await token(web), **(data or {})}
    r = await web.post(path, data=fields, **kw)
    assert r.status_code == 303, r.text
    return await web.get(r.headers["location"])


# -- off by default ---------------------------------------------------------------------


async def test_disabled_every_admin_path_answers_like_an_unknown_path(settings: Settings) -> None:
    async with client_for(settings) as c:  # ENABLE_BULLBOARD unset
        unknown = await c.get("/no-such-page")
        probes = [
            ("GET", BASE),
            ("GET", BASE + "/"),
            ("HEAD", BASE),
            ("POST", BASE),  # a GET-only route: 404, not 405
            ("PUT", BASE + "/live"),
            ("GET", BASE + "/failures"),
            ("GET", BASE + "/queue/sync"),
            ("GET", BASE + "/queue/sync/jobs/1"),
            ("POST", BASE + "/queue/sync/pause"),
            ("GET", BASE + "/queue/sync/pause"),  # a POST-only route: 404, not 405
            ("DELETE", BASE + "/anything/else"),
            ("POST", BASE + "/reprocess"),
        ]
        for method, path in probes:
            r = await c.request(method, path)
            assert r.status_code == unknown.status_code, (method, path)
            if method != "HEAD":
                assert r.text == unknown.text, (method, path)
            assert "www-authenticate" not in r.headers
        spec = (await c.get("/openapi.json")).json()
    assert unknown.status_code == 404
    assert not [p for p in spec["paths"] if p.startswith("/admin")]


async def test_enabled_needs_the_right_user_and_password(admin: Settings) -> None:
    async with client_for(admin, auth=None) as c:
        r = await c.get(BASE)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Basic ")
        assert (await c.get(BASE + "/no-such-view")).status_code == 401  # nothing to discover
        assert (await c.post(BASE + "/queue/sync/pause")).status_code == 401
        for user, password in [
            (USER, "wrong"),
            ("admin", PASSWORD),
            (USER, PASSWORD + "x"),
            ("", ""),
        ]:
            r = await c.get(BASE, auth=(user, password))
            assert r.status_code == 401, (user, password)
        r = await c.get(BASE, headers={"Authorization": "Basic !!!not-base64"})
        assert r.status_code == 401
        r = await c.get(BASE, auth=(USER, PASSWORD))
        assert r.status_code == 200
        assert f"signed in as <strong>{USER}</strong>" in r.text
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
        assert (await c.get(BASE + "/no-such-view", auth=(USER, PASSWORD))).status_code == 404
        assert (await c.get(BASE + "/queue/nope", auth=(USER, PASSWORD))).status_code == 404


async def test_wrong_passwords_lock_the_client_out_across_api_processes(admin: Settings) -> None:
    attacker = ("10.1.2.3", 40000)
    async with (
        client_for(admin, auth=None, client=attacker) as one,
        client_for(admin, auth=None, client=attacker) as two,  # another API process
        client_for(admin, auth=None, client=("10.9.9.9", 40000)) as bystander,
    ):
        for i in range(MAX_FAILURES - 1):
            process = one if i % 2 else two
            r = await process.get(BASE, auth=(USER, f"guess-{i}"))
            assert r.status_code == 401, i
        r = await one.get(BASE, auth=(USER, "last-guess"))
        assert r.status_code == 429
        # Locked on every process, even with the right password: guessing cannot go on.
        for process in (one, two):
            r = await process.get(BASE, auth=(USER, PASSWORD))
            assert r.status_code == 429
            assert 0 < int(r.headers["retry-after"]) <= LOCK_SECONDS
        # Another client is not affected.
        assert (await bystander.get(BASE, auth=(USER, PASSWORD))).status_code == 200
        # The lock is a Redis key that expires LOCK_SECONDS after the last wrong try.
        rt: Runtime = bystander._transport.app.state.runtime  # type: ignore[attr-defined]
        key = f"{admin.queue_prefix}:erp-sync:admin:auth-failures:10.1.2.3"
        assert 0 < await rt.redis.ttl(key) <= LOCK_SECONDS
        await rt.redis.delete(key)  # as if the lock had run out
        assert (await two.get(BASE, auth=(USER, PASSWORD))).status_code == 200


async def test_a_right_password_clears_earlier_wrong_ones(admin: Settings) -> None:
    async with client_for(admin, auth=None) as c:
        for _ in range(MAX_FAILURES - 2):
            assert (await c.get(BASE, auth=(USER, "nope"))).status_code == 401
        assert (await c.get(BASE, auth=(USER, PASSWORD))).status_code == 200
        for _ in range(MAX_FAILURES - 2):
            assert (await c.get(BASE, auth=(USER, "nope"))).status_code == 401
        assert (await c.get(BASE, auth=(USER, PASSWORD))).status_code == 200


# -- cross-site requests ----------------------------------------------------------------


async def test_actions_refuse_requests_without_our_token_or_from_another_origin(
    web: httpx.AsyncClient, admin: Settings, queues: JobQueues
) -> None:
    good = await token(web)
    pause = BASE + "/queue/sync/pause"
    old = Admin(USER, "x", signing_key(admin)).csrf_token(now=time.time() - 13 * 3600)
    other_password = admin_settings(admin, bullboard_pass=SecretStr("another-password-123"))
    foreign = Admin(USER, "x", signing_key(other_password)).csrf_token()
    refused = [
        ({}, {}),  # no token at all
        ({"csrf": "123.abc"}, {}),
        ({"csrf": good + "0"}, {}),
        ({"csrf": old}, {}),  # expired
        ({"csrf": foreign}, {}),  # signed with another password
        ({"csrf": good}, {"Origin": "http://evil.example"}),
        ({"csrf": good}, {"Origin": "null"}),
        ({"csrf": good}, {"Origin": "http://testserver.evil.example"}),
        ({"csrf": good}, {"Sec-Fetch-Site": "cross-site"}),
        ({"csrf": good}, {"Sec-Fetch-Site": "same-site"}),  # another port of the same host
    ]
    for data, headers in refused:
        r = await web.post(pause, data=data, headers=headers)
        assert r.status_code == 403, (data, headers)
        assert "cross-site request refused" in r.text
    assert await queues.sync.isPaused() is False
    r = await web.post(
        pause,
        data={"csrf": good},
        headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    )
    assert r.status_code == 303
    assert await queues.sync.isPaused() is True


async def test_flash_messages_cannot_be_forged(web: httpx.AsyncClient) -> None:
    r = await web.get(BASE, params={"flash": "ok:all your base", "sig": "0" * 64})
    assert "all your base" not in r.text


# -- overview and actions ---------------------------------------------------------------


async def test_overview_shows_counts_pause_state_and_live_workers(
    web: httpx.AsyncClient,
    rt: Runtime,
    queues: JobQueues,
    start_worker: Callable[..., Any],
) -> None:
    await add_tenant(rt, "acme")
    await add_tenant(rt, "beta")
    await queues.pause(SYNC_QUEUE)
    await trigger_sync(rt, queues, "acme")
    await trigger_sync(rt, queues, "beta")
    worker = await start_worker(handlers_with(flaky_handler(0)))

    async def beating() -> str:
        r = await web.get(BASE)
        return r.text if worker.worker_id in r.text else ""

    html = await wait_until(beating, timeout=10, what="the worker's heartbeat on the page")
    sync = queue_row(html, "sync")
    assert sync["paused"] is True
    assert sync["counts"] == {
        "waiting": 2,
        "active": 0,
        "delayed": 0,
        "prioritized": 0,
        "completed": 0,
        "failed": 0,
    }
    assert queue_row(html, "maintenance")["paused"] is False
    assert "Resume sync" in html and "Pause maintenance" in html
    # The refresh script's fragment carries the same numbers.
    live = (await web.get(BASE + "/live")).text
    assert queue_row(live, "sync")["counts"]["waiting"] == 2 and "<html" not in live
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d -03:00", html)  # São Paulo time


async def test_pause_and_resume_from_the_page_are_logged_with_the_user(
    web: httpx.AsyncClient,
    rt: Runtime,
    queues: JobQueues,
    start_worker: Callable[..., Any],
) -> None:
    await add_tenant(rt, "acme")
    await start_worker(handlers_with(flaky_handler(0)))
    with structlog.testing.capture_logs() as logs:
        page = await post(web, BASE + "/queue/sync/pause")
    assert flash_of(page.text) == "ok: queue sync paused: workers take no new jobs"
    assert queue_row(page.text, "sync")["paused"] is True
    assert {
        "event": "admin.action",
        "action": "queue.pause",
        "user": USER,
        "queue": "sync",
    }.items() <= next(e for e in logs if e.get("event") == "admin.action").items()
    job = await trigger_sync(rt, queues, "acme")
    await asyncio.sleep(1.5)
    assert await queues.job_state(SYNC_QUEUE, job.job_id) == "waiting"
    page = await post(web, BASE + "/queue/sync/resume")
    assert queue_row(page.text, "sync")["paused"] is False

    async def completed() -> bool:
        return await queues.job_state(SYNC_QUEUE, job.job_id) == "completed"

    await wait_until(completed, timeout=15, what="the job to run after resume")


async def test_reprocess_retry_remove_and_clean(
    web: httpx.AsyncClient,
    rt: Runtime,
    fast: Settings,
    start_worker: Callable[..., Any],
) -> None:
    # One attempt per job, and a handler that fails each job's first attempt.
    one_try = admin_settings(fast, job_attempts=1)
    await add_tenant(rt, "acme")
    await add_tenant(rt, "beta")
    await start_worker(handlers_with(flaky_handler(1)))
    async with client_for(one_try) as c:
        page = await post(c, BASE + "/reprocess", {"tenant": "ghost"})
        assert flash_of(page.text) is not None and flash_of(page.text).startswith("error:")  # type: ignore[union-attr]
        assert "ghost" in page.text
        with structlog.testing.capture_logs() as logs:
            await post(c, BASE + "/reprocess", {"tenant": "acme", "full": "1"})
            await post(c, BASE + "/reprocess", {"tenant": "beta"})
        reprocessed = [e for e in logs if e.get("action") == "tenant.reprocess"]
        assert [(e["tenant_id"], e["full"], e["user"]) for e in reprocessed] == [
            ("acme", True, USER),
            ("beta", False, USER),
        ]
        queues: JobQueues = c._transport.app.state.queues  # type: ignore[attr-defined]

        async def both_failed() -> bool:
            return int(await queues.sync.getFailedCount()) == 2

        await wait_until(both_failed, timeout=15, what="both jobs to fail once")
        jobs = await queues.sync.getJobs(["failed"], 0, -1, True)
        acme = next(j for j in jobs if j.data["tenantId"] == "acme")
        assert acme.data["mode"] == "full" and acme.data["trigger"] == "manual"

        # Retry one job from its page: it completes on its second attempt.
        job_page = f"{BASE}/queue/sync/jobs/{acme.id}"
        page = await post(c, job_page + "/retry", {"back": job_page})
        assert flash_of(page.text) == f"ok: job {acme.id} sent back to waiting"

        async def acme_completed() -> bool:
            return await queues.job_state(SYNC_QUEUE, str(acme.id)) == "completed"

        await wait_until(acme_completed, timeout=15, what="the retried job to complete")
        page = await post(c, job_page + "/retry", {"back": job_page})  # completed: retry again
        await wait_until(acme_completed, timeout=15, what="the job to complete again")

        # Retry all failed: beta completes too.
        page = await post(c, BASE + "/queue/sync/retry-failed", {"back": BASE})
        assert flash_of(page.text) == "ok: 1 failed job(s) of sync sent back to waiting"

        async def all_completed() -> bool:
            return int(await queues.sync.getCompletedCount()) == 2

        await wait_until(all_completed, timeout=15, what="every job to complete")

        # Clean: nothing is a day old; everything is older than 0 minutes.
        page = await post(
            c, BASE + "/queue/sync/clean", {"state": "completed", "age": "1", "unit": "days"}
        )
        assert flash_of(page.text) == "ok: removed 0 completed job(s) of sync older than 1 days"
        page = await post(
            c, BASE + "/queue/sync/clean", {"state": "completed", "age": "0", "unit": "minutes"}
        )
        assert flash_of(page.text) == "ok: removed 2 completed job(s) of sync older than 0 minutes"
        assert int(await queues.sync.getCompletedCount()) == 0
        page = await post(
            c, BASE + "/queue/sync/clean", {"state": "waiting", "age": "0", "unit": "days"}
        )
        assert flash_of(page.text).startswith("error:")  # type: ignore[union-attr]

        # Remove a waiting job (the queue is paused so it stays).
        await queues.pause(SYNC_QUEUE)
        await post(c, BASE + "/reprocess", {"tenant": "beta"})
        (waiting,) = await queues.sync.getJobs(["waiting"], 0, -1, True)
        page = await post(
            c,
            f"{BASE}/queue/sync/jobs/{waiting.id}/remove",
            {"back": f"{BASE}/queue/sync/jobs/{waiting.id}"},
        )
        assert flash_of(page.text) == f"ok: job {waiting.id} removed"
        assert page.url.path == f"{BASE}/queue/sync"
        assert await queues.sync.getJob(str(waiting.id)) is None
        # Retrying a job that is not failed or completed says why instead of failing.
        await post(c, BASE + "/reprocess", {"tenant": "beta"})
        (waiting,) = await queues.sync.getJobs(["waiting"], 0, -1, True)
        page = await post(c, f"{BASE}/queue/sync/jobs/{waiting.id}/retry")
        assert flash_of(page.text) == (
            f"error: job {waiting.id} is waiting; only failed or completed jobs can be retried"
        )


async def test_job_page_masks_secrets_and_shows_failure_logs_and_job_runs(
    web: httpx.AsyncClient,
    rt: Runtime,
    queues: JobQueues,
    start_worker: Callable[..., Any],
) -> None:
    secret = "Erp-Password-Of-Acme-77"
    register_secret(secret)  # as the worker does with decrypted ERP credentials

    async def handler(ctx: JobContext) -> dict[str, Any]:
        await ctx.job.log(f"logging in with {secret}")
        await ctx.job.log("ERP said 503")
        raise RetryableError("ERP answered 503 (maintenance)")

    await add_tenant(rt, "acme")
    job = await queues.sync.add(
        SYNC_JOB,
        {"tenantId": "acme", "erp": {"password": "hunter2-hunter2", "login": "u1"}},
        {"attempts": 1},
    )
    await start_worker(handlers_with(handler))

    async def failed() -> bool:
        return await queues.job_state(SYNC_QUEUE, str(job.id)) == "failed"

    await wait_until(failed, timeout=15, what="the job to fail")
    r = await web.get(f"{BASE}/queue/sync/jobs/{job.id}")
    assert r.status_code == 200
    html = r.text
    assert "hunter2-hunter2" not in html and secret not in html
    assert "&#34;login&#34;: &#34;u1&#34;" in html  # the rest of the data stays readable
    assert "&#34;password&#34;: &#34;***&#34;" in html
    assert "ERP answered 503 (maintenance)" in html  # failure reason
    assert "Traceback" in html and "RetryableError" in html  # stack trace
    assert "logging in with ***" in html and "ERP said 503" in html  # job logs, masked
    assert re.search(r'<span class="badge failed">FAILED</span>', html)  # its JobRun row
    assert "Retry this job" in html
    listing = await web.get(f"{BASE}/queue/sync", params={"state": "failed"})
    assert f'data-job="{job.id}"' in listing.text and "ERP answered 503" in listing.text
    missing = await web.get(f"{BASE}/queue/sync/jobs/no-such-job")
    assert missing.status_code == 404 and "has no job no-such-job" in missing.text


async def test_failures_view_lists_failed_runs_with_filters(
    web: httpx.AsyncClient, rt: Runtime
) -> None:
    await add_tenant(rt, "acme")
    await add_tenant(rt, "beta")
    async with rt.unit_of_work() as session:
        for tenant, name, status, error in [
            ("acme", SYNC_JOB, "FAILED", "ERP answered 503 for acme"),
            ("beta", SYNC_JOB, "FAILED", "bad credentials for beta"),
            ("acme", SYNC_JOB, "COMPLETED", None),
            (None, "jobrun-prune", "FAILED", "prune failed"),
        ]:
            run = await runs.start_run(
                session,
                tenant_id=tenant,
                job_name=name,
                job_id=f"job-{tenant}-{status}",
                queue=SYNC_QUEUE if name == SYNC_JOB else "maintenance",
                attempt=1,
                trigger="manual",
                worker_id="w1",
            )
            await runs.finish_run(session, run.id, status=status, error=error)
    html = (await web.get(BASE + "/failures")).text
    for text in ("ERP answered 503 for acme", "bad credentials for beta", "prune failed"):
        assert text in html
    assert html.count('<span class="badge failed">FAILED</span>') == 3
    html = (await web.get(BASE + "/failures", params={"tenant": "acme"})).text
    assert "ERP answered 503 for acme" in html and "beta" not in html.split("<tbody>")[1]
    html = (await web.get(BASE + "/failures", params={"job_name": "jobrun-prune"})).text
    assert "prune failed" in html and "acme" not in html.split("<tbody>")[1]
    assert (
        f'href="{BASE}/queue/sync/jobs/job-acme-FAILED"' in (await web.get(BASE + "/failures")).text
    )


# -- Node BullMQ (and so Bull Board) sees the same queues -----------------------------


async def test_node_sees_a_pause_from_our_page_and_we_see_its_pause(
    node_ready: Path,  # noqa: F811 - the fixture imported above
    web: httpx.AsyncClient,
    fast: Settings,
) -> None:
    await post(web, BASE + "/queue/sync/pause")
    assert (await node(fast, "counts", "sync"))["paused"] is True
    await post(web, BASE + "/queue/sync/resume")
    assert (await node(fast, "counts", "sync"))["paused"] is False

    assert (await node(fast, "pause", "maintenance"))["paused"] is True
    assert queue_row((await web.get(BASE)).text, "maintenance")["paused"] is True
    await post(web, BASE + "/queue/maintenance/resume")
    assert (await node(fast, "counts", "maintenance"))["paused"] is False


async def test_a_real_api_process_takes_its_admin_settings_from_the_environment(
    settings: Settings, tmp_path: Path
) -> None:
    secret_file = tmp_path / "bullboard_pass"
    secret_file.write_text(PASSWORD + "\n")
    port = free_port()
    env = service_env(
        settings, ENABLE_BULLBOARD="true", BULLBOARD_USER=USER, BULLBOARD_PASS_FILE=str(secret_file)
    )
    log_path = tmp_path / "api.log"
    with log_path.open("w") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *erp_sync_cmd(),
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            env=env,
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:

            async def up() -> bool:
                try:
                    return (await c.get("/health")).status_code == 200
                except httpx.TransportError:
                    assert proc.returncode is None, log_path.read_text()
                    return False

            await wait_until(up, timeout=30, what="erp-sync api to answer")
            assert (await c.get(BASE)).status_code == 401
            assert (await c.get(BASE, auth=(USER, "wrong-password"))).status_code == 401
            page = await c.get(BASE, auth=(USER, PASSWORD))
            assert page.status_code == 200
            r = await c.post(
                BASE + "/queue/maintenance/pause",
                data={"csrf": csrf_of(page.text)},
                auth=(USER, PASSWORD),
            )
            assert r.status_code == 303
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
    output = log_path.read_text()
    assert "admin.login_failed" in output and "admin.action" in output
    action_line = next(line for line in output.splitlines() if "admin.action" in line)
    assert f"user={USER}" in action_line and "queue.pause" in action_line
    assert PASSWORD not in output and "wrong-password" not in output


def test_signing_key_depends_on_the_password(settings: Settings) -> None:
    a = signing_key(admin_settings(settings))
    b = signing_key(admin_settings(settings, bullboard_pass=SecretStr("other-password-1")))
    assert a != b and len(a) == 32
    assert auth.CSRF_MAX_AGE_S >= 3600
