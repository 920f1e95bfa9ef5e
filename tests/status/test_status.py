"""Sync status, freshness, the failing/stale overview, auto-pause and the quarantine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from erp_sync.errors import RetryableError
from erp_sync.jobs.names import SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.scheduler import reconcile
from erp_sync.jobs.service import trigger_sync
from erp_sync.jobs.worker import JobContext
from erp_sync.kit.time import utcnow
from erp_sync.models import ErpConnection, JobRun, QuarantinedRecord, SyncState, Tenant
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from tests.conftest import run_cli
from tests.jobs.helpers import add_tenant, handlers_with, wait_until


async def _connection_id(rt: Runtime, tenant: str) -> str:
    async with rt.unit_of_work() as s:
        return (
            await s.execute(select(ErpConnection.id).where(ErpConnection.tenantId == tenant))
        ).scalar_one()


async def _state(
    rt: Runtime, tenant: str, stream: str, minutes_ago: float, error: str | None = None
) -> None:
    conn = await _connection_id(rt, tenant)
    async with rt.unit_of_work() as s:
        s.add(
            SyncState(
                tenantId=tenant, stream=stream, connectionId=conn, cursor={"since": "2026-01-01"},
                lastSuccessAt=utcnow() - timedelta(minutes=minutes_ago),
                lastStats={"fetched": 10, "inserted": 3, "updated": 2, "unchanged": 5},
                lastError=error, lastErrorAt=utcnow() if error else None,
            )
        )  # fmt: skip


async def _run(
    rt: Runtime, tenant: str, status: str, minutes_ago: float, error: str | None = None
) -> None:
    async with rt.unit_of_work() as s:
        s.add(
            JobRun(
                tenantId=tenant, jobName="sync-tenant", jobId=f"j-{tenant}-{minutes_ago}",
                queue="sync",
                status=status, attempt=1, trigger="cron", error=error,
                startedAt=utcnow() - timedelta(minutes=minutes_ago),
                finishedAt=utcnow() - timedelta(minutes=minutes_ago) + timedelta(seconds=5),
            )
        )  # fmt: skip


async def test_status_of_a_healthy_tenant(api_client: httpx.AsyncClient, rt: Runtime) -> None:
    await add_tenant(rt, "acme")
    await _state(rt, "acme", "products", 3)
    await _state(rt, "acme", "customers", 5)
    await _run(rt, "acme", "COMPLETED", 3)
    r = await api_client.get("/api/v1/tenants/acme/status")
    assert r.status_code == 200, r.text
    st = r.json()
    assert st["health"] == "ok"
    assert st["connection"] == {"provider": "bling", "status": "ACTIVE", "reason": None}
    assert [s["stream"] for s in st["streams"]] == ["customers", "products"]
    assert 290 <= st["lagSeconds"] <= 330  # the least fresh stream: 5 minutes
    products = st["streams"][1]
    assert products["lastRun"]["inserted"] == 3 and products["cursor"] == {"since": "2026-01-01"}
    assert (await api_client.get("/api/v1/tenants/ghost/status")).status_code == 404
    assert (await api_client.get("/api/v1/status")).json() == {"tenants": 1, "problems": []}


async def test_overview_reports_failing_and_stale_tenants_worst_first(
    api_client: httpx.AsyncClient, rt: Runtime
) -> None:
    await add_tenant(rt, "fresh")
    await _state(rt, "fresh", "products", 2)
    await _run(rt, "fresh", "COMPLETED", 2)
    await add_tenant(rt, "stale")  # every 15 minutes, last success 3 hours ago
    await _state(rt, "stale", "products", 180)
    await _run(rt, "stale", "COMPLETED", 180)
    await add_tenant(rt, "broken")
    await _state(rt, "broken", "products", 20, error="bling answered 503")
    await _run(rt, "broken", "FAILED", 10, "bling answered 503")
    await _run(rt, "broken", "FAILED", 5, "bling answered 503")
    await add_tenant(rt, "locked")
    async with rt.unit_of_work() as s:
        await s.execute(
            update(ErpConnection)
            .where(ErpConnection.tenantId == "locked")
            .values(status="NEEDS_REAUTH", lastError="Bling refused the refresh token")
        )
    body = (await api_client.get("/api/v1/status")).json()
    assert body["tenants"] == 4
    assert [(p["tenantId"], p["health"]) for p in body["problems"]] == [
        ("locked", "needs_reauth"),
        ("broken", "failing"),
        ("stale", "stale"),
    ]
    assert "2 failed sync attempt(s) in a row" in body["problems"][1]["detail"]
    assert "Bling refused the refresh token" in body["problems"][0]["detail"]
    cli = run_cli(rt.settings, "status")
    assert cli.returncode == 0
    assert "NEEDS_REAUTH" in cli.stdout and "FAILING" in cli.stdout and "STALE" in cli.stdout
    assert "3 of 4 tenants need attention" in cli.stdout
    detail = run_cli(rt.settings, "status", "--tenant", "broken")
    assert "FAILING" in detail.stdout and "bling answered 503" in detail.stdout


def always_failing() -> Any:
    async def handler(ctx: JobContext) -> dict[str, Any]:
        raise RetryableError("Bling answered 503 again")

    return handler


async def test_auto_pause_after_n_failures_and_resume(
    rt: Runtime, queues: JobQueues, fast: Settings, start_worker: Callable[..., Any]
) -> None:
    await add_tenant(rt, "acme")
    await reconcile(rt, queues)
    assert "sync:acme" in {s["key"] for s in await queues.sync.getJobSchedulers(0, -1, True)}
    await start_worker(
        handlers_with(always_failing()), auto_pause_after_failures=3, job_backoff_ms=50
    )
    job = await trigger_sync(rt, queues, "acme")

    async def failed() -> bool:
        return await queues.job_state(SYNC_QUEUE, job.job_id) == "failed"

    await wait_until(failed, timeout=20, what="the job to fail for good")
    async with rt.unit_of_work() as s:
        tenant = await s.get(Tenant, "acme")
        rows = (await s.execute(select(JobRun).where(JobRun.jobId == job.job_id))).scalars().all()
    assert tenant is not None and tenant.pausedAt is not None
    assert "paused after 3 failed syncs in a row" in str(tenant.pausedReason)
    assert len(rows) == 3  # it stopped retrying once paused (5 attempts were allowed)
    await reconcile(rt, queues)
    assert "sync:acme" not in {s["key"] for s in await queues.sync.getJobSchedulers(0, -1, True)}
    st = run_cli(fast, "status", "--tenant", "acme")
    assert "PAUSED" in st.stdout and "erp-sync tenants resume acme" in st.stdout
    r = run_cli(fast, "tenants", "resume", "acme")
    assert r.returncode == 0, r.stderr
    await reconcile(rt, queues)
    assert "sync:acme" in {s["key"] for s in await queues.sync.getJobSchedulers(0, -1, True)}


async def test_quarantine_listing(api_client: httpx.AsyncClient, rt: Runtime) -> None:
    await add_tenant(rt, "acme")
    conn = await _connection_id(rt, "acme")
    async with rt.unit_of_work() as s:
        s.add(
            QuarantinedRecord(
                tenantId="acme", connectionId=conn, stream="products", recordKey="42",
                externalId="42", raw={"id": 42, "preco": "abc"},
                reason="listPrice: Input should be a valid decimal",
            )
        )  # fmt: skip
    body = (await api_client.get("/api/v1/tenants/acme/quarantine")).json()
    assert body["total"] == 1
    assert body["items"][0]["reason"] == "listPrice: Input should be a valid decimal"
    assert body["items"][0]["raw"] == {"id": 42, "preco": "abc"}
    assert (
        await api_client.get("/api/v1/tenants/acme/quarantine", params={"stream": "customers"})
    ).json()["total"] == 0
    cli = run_cli(rt.settings, "quarantine", "list", "--tenant", "acme")
    assert "listPrice: Input should be a valid decimal" in cli.stdout


async def test_the_overview_reads_healthy_tenants_in_bulk(rt: Runtime) -> None:
    """The overview's queries do not grow with the number of healthy tenants (it once
    ran several per tenant: seconds at a few hundred); only a tenant with a problem costs
    its full status."""
    from sqlalchemy import event

    from erp_sync.status import service

    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    async def queries() -> tuple[int, list[str]]:
        statements.clear()
        event.listen(rt.engine.sync_engine, "before_cursor_execute", count)
        try:
            async with rt.unit_of_work() as s:
                got = await service.overview(s, tz="America/Sao_Paulo", stale_factor=3)
        finally:
            event.remove(rt.engine.sync_engine, "before_cursor_execute", count)
        return len(statements), [p.tenantId for p in got.problems]

    async def healthy(tenant: str) -> None:
        await add_tenant(rt, tenant)
        await _state(rt, tenant, "products", 2)
        await _run(rt, tenant, "COMPLETED", 2)

    for i in range(3):
        await healthy(f"ok-{i}")
    few, problems = await queries()
    assert problems == []
    for i in range(3, 40):
        await healthy(f"ok-{i}")
    many, problems = await queries()
    assert problems == [] and many == few
    await add_tenant(rt, "broken")
    await _run(rt, "broken", "FAILED", 5, "bling answered 503")
    with_one_problem, problems = await queries()
    assert problems == ["broken"]
    assert with_one_problem - few <= 8  # that tenant's full status, once
