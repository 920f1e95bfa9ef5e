"""Retention of the JobRun ledger: runbook section 7, by hand and as the daily job."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from erp_sync.jobs.names import MAINTENANCE_QUEUE
from erp_sync.jobs.prune import prune_job_runs
from erp_sync.jobs.queues import JobQueues
from erp_sync.kit.time import utcnow
from erp_sync.models import JobRun
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from tests.conftest import run_cli
from tests.jobs.helpers import add_tenant, wait_until

AGES_DAYS = [0.5, 5, 14.9, 15.1, 29, 31, 89, 91, 400]


async def seed(rt: Runtime, ages: list[float] = AGES_DAYS) -> None:
    await add_tenant(rt, "acme")
    now = utcnow()
    async with rt.unit_of_work() as session:
        for i, age in enumerate(ages):
            session.add(
                JobRun(
                    tenantId="acme",
                    jobName="sync-tenant",
                    jobId=f"j{i}",
                    queue="sync",
                    status="COMPLETED",
                    attempt=1,
                    trigger="cron",
                    startedAt=now - timedelta(days=age),
                )
            )


async def remaining_ages(rt: Runtime) -> list[float]:
    async with rt.unit_of_work() as session:
        rows = (
            await session.execute(select(JobRun.startedAt).order_by(JobRun.startedAt.desc()))
        ).scalars()
        now = utcnow()
        return [round((now - r).total_seconds() / 86400, 1) for r in rows]


async def test_prune_removes_exactly_the_rows_past_retention(rt: Runtime) -> None:
    await seed(rt)
    assert await prune_job_runs(rt, 30, dry_run=True) == 4
    assert await remaining_ages(rt) == AGES_DAYS
    assert await prune_job_runs(rt, 30) == 4
    assert await remaining_ages(rt) == [0.5, 5.0, 14.9, 15.1, 29.0]


async def test_default_retention_is_retention_days_jobrun(rt: Runtime) -> None:
    await seed(rt)
    assert await prune_job_runs(rt) == 2  # 90 days by default: 91 and 400 go


async def test_prune_works_in_batches(rt: Runtime) -> None:
    await seed(rt, [100 + i / 100 for i in range(23)] + [1])
    assert await prune_job_runs(rt, 30, batch_size=5) == 23
    async with rt.unit_of_work() as session:
        assert (await session.execute(select(func.count()).select_from(JobRun))).scalar_one() == 1


async def test_prune_cli(rt: Runtime, fast: Settings) -> None:
    await seed(rt)
    r = run_cli(fast, "prune", "--days", "15", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "6 job runs are older than 15 days and would be removed"
    r = run_cli(fast, "prune", "--days", "15")
    assert r.stdout.strip() == "removed 6 job runs older than 15 days"
    assert await remaining_ages(rt) == [0.5, 5.0, 14.9]
    r = run_cli(fast, "prune", "--days", "0")
    assert r.returncode != 0 and "Traceback" not in r.stderr


async def test_the_prune_job_runs_on_the_maintenance_queue(
    rt: Runtime, queues: JobQueues, start_worker: Callable[..., Any]
) -> None:
    await seed(rt)
    await start_worker(retention_days_jobrun=30)
    job_id = await queues.enqueue_prune()

    async def done() -> bool:
        return await queues.job_state(MAINTENANCE_QUEUE, job_id) == "completed"

    await wait_until(done, timeout=15, what="prune job completed")
    job = await queues.get_job(MAINTENANCE_QUEUE, job_id)
    assert job is not None and job.returnvalue == {"removed": 4}
    # the prune run itself is in the ledger, and it survived its own prune
    async with rt.unit_of_work() as session:
        (run,) = (
            await session.execute(select(JobRun).where(JobRun.jobName == "jobrun-prune"))
        ).scalars()
    assert (run.status, run.queue, run.tenantId, run.stats) == (
        "COMPLETED",
        "maintenance",
        None,
        {"removed": 4},
    )
