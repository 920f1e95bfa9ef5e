"""GET /metrics while jobs run: a real `erp-sync api` process and `erp-sync worker`
processes sharing PROMETHEUS_MULTIPROC_DIR, a real sync against the Bling sandbox, and
what the scrape says about it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import select, update

from erp_sync.connectors.base import RateLimits
from erp_sync.connectors.governor import Governor
from erp_sync.connectors.http import ErpHttp
from erp_sync.errors import RetryableError, UpstreamUnavailable
from erp_sync.jobs.names import SYNC_JOB, SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.service import trigger_sync
from erp_sync.jobs.worker import JobContext
from erp_sync.models import ErpConnection
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from erp_sync.sync.engine import sync_tenant
from tests.bling_support import sandbox_credentials, start_sandbox
from tests.conftest import erp_sync_cmd, free_port, make_settings, run_cli, service_env
from tests.jobs.helpers import add_tenant, handlers_with, wait_until
from tests.jobs.test_processes import worker_env
from tests.observability.support import Scrape, scrape

# Stream -> canonical table, to compare what the counters say with what landed.
TABLES = {
    "products": "Product",
    "stock_levels": "StockLevel",
    "customers": "Customer",
    "sales_orders": "SalesOrder",
}
SYNC = {"queue": SYNC_QUEUE, "job": SYNC_JOB}


def rows(database_url: str, table: str, tenant: str) -> int:
    with psycopg.connect(database_url) as c:
        row = c.execute(
            f'SELECT count(*) FROM "{table}" WHERE "tenantId" = %s', (tenant,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def no_multiproc(env: dict[str, str]) -> dict[str, str]:
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("METRICS_PORT", None)
    return env


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts `erp-sync` commands; each one's output goes to a file shown on failure."""
    started: list[tuple[subprocess.Popen[str], Path]] = []

    def start(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
        cwd.mkdir(parents=True, exist_ok=True)
        log = tmp_path / f"{args[0]}-{len(started)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*erp_sync_cmd(), *args], cwd=cwd, env=env, stdout=out,
                stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        started.append((proc, log))
        return proc

    yield start
    for proc, log in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        print(f"--- {log.name} (exit {proc.returncode})\n{log.read_text()[-4000:]}")


async def wait_healthy(base_url: str, proc: subprocess.Popen[str]) -> None:
    async def up() -> bool:
        assert proc.poll() is None, "the API process exited"
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{base_url}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_until(up, timeout=30, interval=0.2, what="the API to answer /health")


async def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)


async def test_metrics_move_as_a_worker_process_syncs_a_tenant(
    rt: Runtime,
    fast: Settings,
    queues: JobQueues,
    clean_db: str,
    tmp_path: Path,
    processes: Callable[..., subprocess.Popen[str]],
) -> None:
    tenant = f"tnt-{uuid.uuid4().hex[:12]}"  # must appear in no label value
    await add_tenant(rt, tenant)
    shared = tmp_path / "prometheus"  # created by the processes themselves
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = processes(
        "api", "--host", "127.0.0.1", "--port", str(port),
        env={**no_multiproc(service_env(fast)), "PROMETHEUS_MULTIPROC_DIR": str(shared)},
        cwd=tmp_path / "api",
    )  # fmt: skip
    await wait_healthy(base, api)

    job = await trigger_sync(rt, queues, tenant)
    before = await scrape(base)
    assert before.value("erp_sync_queue_jobs", queue="sync", state="waiting") == 1
    assert before.value("erp_sync_workers_live") == 0
    assert before.value("erp_sync_jobs_completed_total") == 0
    assert before.value("erp_sync_tenants") == 1
    assert before.value("erp_sync_metrics_source_up", source="queues") == 1
    assert before.value("erp_sync_metrics_source_up", source="database") == 1

    # The worker learns the shared directory from a .env file only: the CLI must put it
    # in the environment before prometheus_client is imported, or its counts go missing.
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    (worker_dir / ".env").write_text(f"PROMETHEUS_MULTIPROC_DIR={shared}\n")
    worker = processes("worker", env=no_multiproc(worker_env(fast)), cwd=worker_dir)

    async def completed() -> bool:
        return await queues.job_state(SYNC_QUEUE, job.job_id) == "completed"

    await wait_until(completed, timeout=90, interval=0.25, what="the sync job to complete")
    after = await scrape(base)

    assert after.value("erp_sync_jobs_started_total", **SYNC) == 1
    assert after.value("erp_sync_jobs_completed_total", **SYNC) == 1
    assert after.value("erp_sync_jobs_failed_total", **SYNC) == 0
    assert after.value("erp_sync_job_duration_seconds_count", **SYNC) == 1
    assert after.value("erp_sync_queue_jobs", queue="sync", state="waiting") == 0
    assert after.value("erp_sync_queue_jobs", queue="sync", state="completed") == 1
    assert after.value("erp_sync_workers_live") == 1
    for stream, table in TABLES.items():
        landed = rows(clean_db, table, tenant)
        assert landed > 0, stream
        labels = {"provider": "bling", "stream": stream}
        assert after.value("erp_sync_records_inserted_total", **labels) == landed, stream
        assert after.value("erp_sync_records_fetched_total", **labels) >= landed, stream
    assert after.value("erp_sync_records_inserted_total", provider="bling", stream="products") == 60
    assert after.value("erp_sync_erp_requests_total", provider="bling", status_class="2xx") > 0
    assert after.value("erp_sync_governor_wait_seconds_count", provider="bling") > 0
    assert after.value("erp_sync_tenants", health="ok") == 1
    assert 0 <= after.value("erp_sync_sync_lag_max_seconds") < 90
    assert tenant not in set(after.label_values())
    assert tenant not in after.text

    # A clean exit: the heartbeat goes at once, the counts stay (they are cumulative).
    assert await stop(worker) == 0
    gone = await scrape(base)
    assert gone.value("erp_sync_workers_live") == 0
    assert gone.value("erp_sync_jobs_completed_total", **SYNC) == 1
    assert gone.value("erp_sync_records_inserted_total", provider="bling", stream="products") == 60


async def test_a_worker_serves_its_own_metrics_on_metrics_port(
    rt: Runtime,
    fast: Settings,
    queues: JobQueues,
    clean_db: str,
    tmp_path: Path,
    processes: Callable[..., subprocess.Popen[str]],
) -> None:
    """Workers on other hosts cannot share a directory: each serves its own counts."""
    await add_tenant(rt, "acme")
    port = free_port()
    env = {**no_multiproc(worker_env(fast)), "METRICS_PORT": str(port), "HOST": "127.0.0.1"}
    worker = processes("worker", env=env, cwd=tmp_path / "w1")
    job = await trigger_sync(rt, queues, "acme")

    async def completed() -> bool:
        assert worker.poll() is None, "the worker exited"
        return await queues.job_state(SYNC_QUEUE, job.job_id) == "completed"

    await wait_until(completed, timeout=90, interval=0.25, what="the sync job to complete")
    own = await scrape(f"http://127.0.0.1:{port}")
    assert own.value("erp_sync_jobs_completed_total", **SYNC) == 1
    assert own.value("erp_sync_records_inserted_total", provider="bling", stream="products") == (
        rows(clean_db, "Product", "acme")
    )
    assert own.has("process_cpu_seconds_total")  # the process's own registry
    assert not own.has("erp_sync_queue_jobs")  # sampled by the API only, never per worker

    # A second worker on the same port says what is wrong, in one line.
    clash = processes("worker", env=env, cwd=tmp_path / "w2")
    code = await asyncio.get_running_loop().run_in_executor(None, clash.wait, 30)
    assert code == 2
    assert await stop(worker) == 0


# -- in this process: ERP trouble, failed attempts, a source down ----------------------


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    from erp_sync.api.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c


async def no_progress(_: dict[str, Any]) -> None:
    return None


async def in_process(client: httpx.AsyncClient) -> Scrape:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    return Scrape.parse(r.text)


async def test_429s_refreshes_and_quarantine_show_in_the_counters(
    rt: Runtime, clean_db: str, client: httpx.AsyncClient
) -> None:
    """A sandbox enforcing 8 req/s that we believe allows 1000, breaking some records, with
    every access token expired."""
    with start_sandbox(
        products=4, customers=2, orders=2, history_days=2, rate_limit=8, malformed_rate=0.3,
    ) as sb:  # fmt: skip
        await add_tenant(rt, "acme", sandbox=sb)
        async with rt.unit_of_work() as s:
            await s.execute(
                update(ErpConnection)
                .where(ErpConnection.tenantId == "acme")
                .values(settings={"base_url": sb.base_url, "rate_limit_per_second": 1000})
            )
        faults = {"expire_tokens": True}
        httpx.post(f"{sb.root_url}/__sandbox/faults", json=faults).raise_for_status()
        before = await in_process(client)
        await sync_tenant(rt, "acme", streams=None, mode="full", progress=no_progress)
        after = await in_process(client)
        sandbox_429s = httpx.get(f"{sb.root_url}/__sandbox/stats").json()["rate_limited"]

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    bling = {"provider": "bling"}
    assert sandbox_429s > 0
    assert delta("erp_sync_erp_rate_limited_total", **bling) == sandbox_429s
    # the 429s, and the 401 that refused the expired access token before its refresh
    assert delta("erp_sync_erp_requests_total", status_class="4xx", **bling) == sandbox_429s + 1
    assert delta("erp_sync_erp_requests_total", status_class="2xx", **bling) > 0
    assert delta("erp_sync_token_refreshes_total", **bling) == 1
    assert delta("erp_sync_token_refresh_failures_total", **bling) == 0
    with psycopg.connect(clean_db) as c:
        by_stream = dict(
            c.execute('SELECT stream, count(*) FROM "QuarantinedRecord" GROUP BY stream').fetchall()
        )
    assert sum(by_stream.values()) > 0
    for stream in TABLES:
        assert delta("erp_sync_records_quarantined_total", stream=stream, **bling) == (
            by_stream.get(stream, 0)
        ), stream


async def test_erp_requests_without_an_answer_are_counted_too(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    """5xx answers, and requests that got no answer at all (the ERP down)."""

    def http(base_url: str) -> ErpHttp:
        governor = Governor(
            rt.redis, prefix=rt.settings.queue_prefix, provider="bling", account="metrics",
            limits=RateLimits(),
        )  # fmt: skip
        return ErpHttp(base_url, governor, provider="Bling", attempts=1)

    before = await in_process(client)
    with start_sandbox(products=1, customers=1, orders=1, error_rate=1.0) as sb:
        token = sandbox_credentials(sb)["access_token"]
        failing = http(sb.base_url)
        with pytest.raises(UpstreamUnavailable):
            await failing.request("GET", "/produtos", headers={"Authorization": f"Bearer {token}"})
        await failing.aclose()
    down = http(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamUnavailable):
        await down.request("GET", "/produtos")
    await down.aclose()
    after = await in_process(client)
    for status_class in ("5xx", "unreachable"):
        name, labels = "erp_sync_erp_requests_total", {"status_class": status_class}
        assert after.value(name, **labels) - before.value(name, **labels) == 1, status_class


async def test_a_refused_token_refresh_is_counted(rt: Runtime, client: httpx.AsyncClient) -> None:
    with start_sandbox(products=5, customers=2, orders=2) as sb:
        await add_tenant(rt, "acme", sandbox=sb)
        faults = {"reject_refresh": True, "expire_tokens": True}
        httpx.post(f"{sb.root_url}/__sandbox/faults", json=faults).raise_for_status()
        before = await in_process(client)
        with pytest.raises(Exception, match="re-authoris"):
            await sync_tenant(rt, "acme", streams=None, mode="incremental", progress=no_progress)
        after = await in_process(client)
    name = "erp_sync_token_refresh_failures_total"
    assert after.value(name, provider="bling") - before.value(name, provider="bling") == 1
    # the tenant now needs re-authorisation, and the gauge says so without naming it
    assert after.value("erp_sync_tenants", health="needs_reauth") == 1


async def test_failed_attempts_are_counted(
    rt: Runtime, fast: Settings, client: httpx.AsyncClient, start_worker: Any
) -> None:
    async def failing(ctx: JobContext) -> dict[str, Any]:
        raise RetryableError("Bling answered 503")

    await add_tenant(rt, "acme")
    before = await in_process(client)
    await start_worker(handlers_with(failing))
    queues = JobQueues(fast.model_copy(update={"job_attempts": 2}))
    try:
        job = await trigger_sync(rt, queues, "acme")

        async def failed() -> bool:
            return await queues.job_state(SYNC_QUEUE, job.job_id) == "failed"

        await wait_until(failed, timeout=30, what="both attempts to fail")
    finally:
        await queues.close()
    after = await in_process(client)

    def delta(name: str) -> float:
        return after.value(name, **SYNC) - before.value(name, **SYNC)

    assert delta("erp_sync_jobs_started_total") == 2
    assert delta("erp_sync_jobs_failed_total") == 2
    assert delta("erp_sync_jobs_completed_total") == 0
    assert delta("erp_sync_job_duration_seconds_count") == 2
    assert after.value("erp_sync_queue_jobs", queue="sync", state="failed") == 1
    assert after.value("erp_sync_tenants", health="failing") == 1


async def test_the_scrape_answers_when_redis_is_down(clean_db: str) -> None:
    """Metrics matter most during an outage: the queue gauges go, the rest stays."""
    from erp_sync.api.app import create_app

    port = free_port()  # nobody listens there
    settings = make_settings(clean_db, redis_url=f"redis://127.0.0.1:{port}/0")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            got = await in_process(c)
    assert got.value("erp_sync_metrics_source_up", source="queues") == 0
    assert got.value("erp_sync_metrics_source_up", source="database") == 1
    assert not got.has("erp_sync_queue_jobs") and not got.has("erp_sync_workers_live")
    assert got.has("erp_sync_tenants")


async def test_tenant_health_in_the_scrape_agrees_with_the_status_api(
    rt: Runtime, clean_db: str, client: httpx.AsyncClient
) -> None:
    """/metrics reads every tenant's health in bulk; /api/v1/status one tenant at a time.
    Both must say the same of tenants in every state."""
    from datetime import timedelta

    from erp_sync.kit.time import utcnow
    from erp_sync.models import JobRun, SyncState, Tenant
    from erp_sync.status import service

    ago = {  # tenant -> (minutes since its last success, runs newest last)
        "fresh": (5, ["COMPLETED"]),
        "stale": (180, ["COMPLETED"]),
        "failing": (20, ["COMPLETED", "FAILED", "FAILED"]),
        "recovered": (2, ["FAILED", "COMPLETED"]),
        "retrying": (20, ["FAILED", "RUNNING"]),
        "paused": (300, ["FAILED"]),
        "reauth": (60, ["FAILED"]),
        "new": (None, []),
        "forgotten": (None, []),
        "inactive": (900, ["COMPLETED"]),
    }
    for tenant, (minutes, statuses) in ago.items():
        await add_tenant(rt, tenant)
        async with rt.unit_of_work() as s:
            conn = (
                await s.execute(select(ErpConnection).where(ErpConnection.tenantId == tenant))
            ).scalar_one()
            if minutes is not None:
                for stream, extra in (("products", 0), ("customers", 7)):
                    s.add(
                        SyncState(
                            tenantId=tenant, stream=stream, connectionId=conn.id,
                            lastSuccessAt=utcnow() - timedelta(minutes=minutes + extra),
                        )
                    )  # fmt: skip
            for i, status in enumerate(statuses):
                started = utcnow() - timedelta(minutes=10 * (len(statuses) - i))
                s.add(
                    JobRun(
                        tenantId=tenant, jobName=SYNC_JOB, jobId=f"{tenant}-{i}", queue="sync",
                        status=status, attempt=1, trigger="cron", startedAt=started,
                    )
                )  # fmt: skip
            t = await s.get(Tenant, tenant)
            assert t is not None
            if tenant == "paused":
                t.pausedAt = utcnow()
            if tenant == "reauth":
                conn.status = "NEEDS_REAUTH"
            if tenant == "inactive":
                t.active = False
            if tenant == "forgotten":
                t.createdAt = utcnow() - timedelta(days=1)

    s = rt.settings
    async with rt.unit_of_work() as session:
        bulk = await service.all_tenant_health(
            session, tz=s.schedule_tz, stale_factor=s.stale_factor
        )
        one_by_one = [
            await service.tenant_status(
                session, tenant, tz=s.schedule_tz, stale_factor=s.stale_factor
            )
            for tenant in sorted(ago)
        ]
    got_pairs = sorted((t.health, t.lag or -1.0) for t in bulk)
    want_pairs = sorted((st.health, st.lagSeconds or -1.0) for st in one_by_one)
    assert [h for h, _ in got_pairs] == [h for h, _ in want_pairs]
    for (health, lag), (_, want) in zip(got_pairs, want_pairs, strict=True):
        assert abs(lag - want) < 5, health
    assert {st.health for st in one_by_one} == {
        "ok", "stale", "failing", "paused", "needs_reauth", "never_synced", "inactive",
    }  # fmt: skip
    got = await in_process(client)
    for health in ("ok", "stale", "failing", "paused", "needs_reauth", "never_synced"):
        want = sum(1 for st in one_by_one if st.health == health)
        assert got.value("erp_sync_tenants", health=health) == want, health
    # the largest lag of active, unpaused tenants: "stale", 180 + 7 minutes
    assert abs(got.value("erp_sync_sync_lag_max_seconds") - 187 * 60) < 30


def test_a_metrics_directory_that_cannot_be_created_is_a_one_line_error(
    settings: Settings, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**service_env(settings), "PROMETHEUS_MULTIPROC_DIR": str(blocker / "metrics")}
    r = run_cli(settings, "health", env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == (
        f"error: PROMETHEUS_MULTIPROC_DIR points to {blocker / 'metrics'}, which cannot be "
        "created (Not a directory); create it writable for this user or unset the variable."
    )
