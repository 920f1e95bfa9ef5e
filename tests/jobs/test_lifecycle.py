"""Job attempts, retries, permanent failures and dedupe, on real BullMQ/Redis/PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from erp_sync.jobs.names import SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues, SyncJobData
from erp_sync.jobs.service import trigger_sync
from erp_sync.models import JobRun
from erp_sync.runtime import Runtime
from tests.jobs.helpers import add_tenant, flaky_handler, handlers_with, slow_handler, wait_until


async def job_runs(rt: Runtime, job_id: str | None = None) -> list[JobRun]:
    async with rt.unit_of_work() as session:
        stmt = select(JobRun).order_by(JobRun.id)
        if job_id:
            stmt = stmt.where(JobRun.jobId == job_id)
        return list((await session.execute(stmt)).scalars())


async def state(queues: JobQueues, job_id: str) -> str:
    return await queues.job_state(SYNC_QUEUE, job_id)


async def test_a_second_trigger_collapses_into_the_queued_one(
    rt: Runtime, queues: JobQueues
) -> None:
    await add_tenant(rt, "acme")
    await add_tenant(rt, "beta")
    first = await trigger_sync(rt, queues, "acme")
    second = await trigger_sync(rt, queues, "acme", full=True)
    other = await trigger_sync(rt, queues, "beta")
    assert first.created and other.created
    assert not second.created
    assert second.job_id == first.job_id
    assert "already queued or running" in second.describe("acme")
    counts = (await queues.status())[0]["counts"]
    assert counts["waiting"] == 2


async def test_collapse_holds_while_running_and_ends_with_the_job(
    rt: Runtime, queues: JobQueues, start_worker: Callable[..., Any]
) -> None:
    await add_tenant(rt, "acme")
    await start_worker(handlers_with(slow_handler(1.5)))
    first = await trigger_sync(rt, queues, "acme")
    await wait_until(lambda: _is(queues, first.job_id, "active"), what="job active")
    during = await trigger_sync(rt, queues, "acme")
    assert not during.created and during.job_id == first.job_id
    await wait_until(lambda: _is(queues, first.job_id, "completed"), what="job completed")
    after = await trigger_sync(rt, queues, "acme")
    assert after.created and after.job_id != first.job_id


async def _is(queues: JobQueues, job_id: str, wanted: str) -> bool:
    return await state(queues, job_id) == wanted


async def test_a_job_without_dedup_does_not_run_beside_a_running_sync(
    rt: Runtime, queues: JobQueues, start_worker: Callable[..., Any]
) -> None:
    """Cron jobs and jobs from other producers skip BullMQ's dedup check; the worker
    still never runs two syncs of one tenant at once."""
    await add_tenant(rt, "acme")
    await start_worker(handlers_with(slow_handler(1.5)))
    first = await trigger_sync(rt, queues, "acme")
    await wait_until(lambda: _is(queues, first.job_id, "active"), what="job active")
    raw = await queues.sync.add("sync-tenant", {"tenantId": "acme"}, {"jobId": "from-elsewhere"})
    await wait_until(lambda: _is(queues, str(raw.id), "completed"), what="raw job done")
    job = await queues.get_job(SYNC_QUEUE, str(raw.id))
    assert job is not None and job.returnvalue == {"collapsedInto": first.job_id}
    assert await state(queues, first.job_id) == "active"
    runs = await job_runs(rt)
    assert [r.jobId for r in runs] == [first.job_id]


async def test_retry_then_success_writes_one_row_per_attempt(
    rt: Runtime, queues: JobQueues, start_worker: Callable[..., Any]
) -> None:
    await add_tenant(rt, "acme")
    await start_worker(handlers_with(flaky_handler(2)))
    started = time.monotonic()
    job = await trigger_sync(rt, queues, "acme")
    await wait_until(lambda: _is(queues, job.job_id, "completed"), what="job completed")
    elapsed = time.monotonic() - started
    runs = await job_runs(rt, job.job_id)
    assert [(r.attempt, r.status) for r in runs] == [(1, "FAILED"), (2, "FAILED"), (3, "COMPLETED")]
    assert runs[0].error == "ERP answered 503 (attempt 1)"
    assert all(r.finishedAt is not None and r.durationMs is not None for r in runs)
    assert runs[2].stats == {"attempt": 3}
    assert all(r.trigger == "manual" and r.tenantId == "acme" for r in runs)
    # Exponential backoff: 300 ms then 600 ms (±20 %) between attempts.
    gap1 = (runs[1].startedAt - runs[0].finishedAt).total_seconds()
    gap2 = (runs[2].startedAt - runs[1].finishedAt).total_seconds()
    assert gap1 >= 0.2 and gap2 >= 0.45, (gap1, gap2)
    assert elapsed < 10


async def test_retry_after_from_the_erp_is_honoured(
    rt: Runtime, queues: JobQueues, start_worker: Callable[..., Any]
) -> None:
    await add_tenant(rt, "acme")
    await start_worker(handlers_with(flaky_handler(1, retry_after=2.0)))
    job = await trigger_sync(rt, queues, "acme")
    await wait_until(lambda: _is(queues, job.job_id, "completed"), what="job completed")
    runs = await job_runs(rt, job.job_id)
    assert [r.status for r in runs] == ["FAILED", "COMPLETED"]
    assert (runs[1].startedAt - runs[0].finishedAt).total_seconds() >= 1.9


async def test_a_permanent_failure_is_not_retried(
    rt: Runtime, queues: JobQueues, start_worker: Callable[..., Any]
) -> None:
    # The real sync handler: a tenant without an ERP connection cannot be synced.
    await add_tenant(rt, "acme", connected=False)
    await start_worker()
    job = await trigger_sync(rt, queues, "acme")
    await wait_until(lambda: _is(queues, job.job_id, "failed"), what="job failed")
    bull_job = await queues.get_job(SYNC_QUEUE, job.job_id)
    assert bull_job is not None and bull_job.attemptsMade == 1
    assert "has no ERP connection" in str(bull_job.failedReason)
    runs = await job_runs(rt, job.job_id)
    assert len(runs) == 1
    assert runs[0].status == "FAILED"
    assert runs[0].error == (
        "tenant acme has no ERP connection; set one with `erp-sync tenants set-connection`."
    )


async def test_invalid_job_data_fails_permanently(
    rt: Runtime, queues: JobQueues, start_worker: Callable[..., Any]
) -> None:
    await start_worker()
    raw = await queues.sync.add(
        "sync-tenant", {"tenantId": "acme", "mode": "sideways"}, {"attempts": 3}
    )
    await wait_until(lambda: _is(queues, str(raw.id), "failed"), what="job failed")
    runs = await job_runs(rt, str(raw.id))
    assert (
        len(runs) == 1
        and runs[0].error is not None
        and runs[0].error.startswith("invalid job data")
    )
    assert runs[0].tenantId is None  # unknown tenant: the row is still written


async def test_a_completed_sync_records_its_run(
    rt: Runtime, queues: JobQueues, start_worker: Callable[..., Any]
) -> None:
    await add_tenant(rt, "acme")
    await start_worker()
    data = SyncJobData(tenantId="acme", streams=["products"], mode="full", trigger="api")
    job = await queues.enqueue_sync(data)
    await wait_until(lambda: _is(queues, job.job_id, "completed"), what="job completed")
    (run,) = await job_runs(rt, job.job_id)
    assert (run.status, run.trigger, run.queue, run.jobName, run.attempt) == (
        "COMPLETED",
        "api",
        "sync",
        "sync-tenant",
        1,
    )
