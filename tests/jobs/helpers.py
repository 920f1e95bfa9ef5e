"""Job handlers and helpers for the queue tests: real BullMQ, real Redis, real PostgreSQL.

The handlers stand in for the sync engine where a test needs a job that fails a given
number of times or takes a given time; everything around them (JobRun ledger, retries,
backoff, dedupe, stalled recovery, pause) is the production code.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select

from erp_sync.errors import RetryableError
from erp_sync.jobs.names import SYNC_JOB, SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.service import trigger_sync
from erp_sync.jobs.worker import DEFAULT_HANDLERS, Handler, JobContext, run_worker
from erp_sync.models import ErpConnection, JobRun, Tenant
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings


async def wait_until(
    predicate: Callable[[], Awaitable[Any]],
    timeout: float = 20,
    interval: float = 0.1,
    what: str = "",
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(interval)


async def add_tenant(
    rt: Runtime,
    tenant_id: str,
    *,
    connected: bool = True,
    schedule: str = "*/15 * * * *",
    sandbox: Any = None,
) -> None:
    """A tenant; ``connected`` gives it a working Bling connection (to a sandbox: the
    shared small one unless ``sandbox`` is given)."""
    from tests.bling_support import connection_values, shared_sandbox

    async with rt.unit_of_work() as session:
        session.add(Tenant(id=tenant_id, name=f"Tenant {tenant_id}", schedule=schedule))
        await session.flush()
        if connected:
            settings, credentials = connection_values(sandbox or shared_sandbox())
            session.add(
                ErpConnection(
                    tenantId=tenant_id,
                    provider="bling",
                    settings=settings,
                    credentials=rt.box.encrypt_json(credentials),
                )
            )


async def sync_until_failed(
    rt: Runtime, queues: JobQueues, tenant_id: str = "acme"
) -> tuple[ErpConnection, list[JobRun]]:
    """Trigger a sync of the tenant (a worker must be running), wait for the job to fail;
    the tenant's connection and the job's JobRuns."""
    job = await trigger_sync(rt, queues, tenant_id)

    async def failed() -> bool:
        return await queues.job_state(SYNC_QUEUE, job.job_id) == "failed"

    await wait_until(failed, timeout=30, what="the job to fail")
    async with rt.unit_of_work() as s:
        conn = (
            await s.execute(select(ErpConnection).where(ErpConnection.tenantId == tenant_id))
        ).scalar_one()
        runs = (await s.execute(select(JobRun).where(JobRun.jobId == job.job_id))).scalars().all()
    return conn, list(runs)


def slow_handler(seconds: float) -> Handler:
    async def handler(ctx: JobContext) -> dict[str, Any]:
        steps = max(1, int(seconds / 0.1))
        for i in range(steps):
            await ctx.progress({"percent": int(100 * i / steps), "message": f"step {i}"})
            await asyncio.sleep(seconds / steps)
        return {"slept": seconds}

    return handler


def flaky_handler(failures: int, retry_after: float | None = None) -> Handler:
    """Fails with a retryable error ``failures`` times per job, then succeeds."""

    async def handler(ctx: JobContext) -> dict[str, Any]:
        if ctx.attempt <= failures:
            raise RetryableError(
                f"ERP answered 503 (attempt {ctx.attempt})", retry_after=retry_after
            )
        return {"attempt": ctx.attempt}

    return handler


def handlers_with(sync: Handler) -> dict[tuple[str, str], Handler]:
    return {**DEFAULT_HANDLERS, (SYNC_QUEUE, SYNC_JOB): sync}


def fast_settings(settings: Settings, **extra: Any) -> Settings:
    """Short locks, checks and backoffs so that recovery takes seconds, not minutes."""
    values = {
        "job_backoff_ms": 300,
        "job_lock_ms": 2000,
        "stalled_interval_ms": 1000,
        "heartbeat_ttl_seconds": 3,
        "worker_grace_seconds": 10,
        **extra,
    }
    return settings.model_copy(update=values)


if __name__ == "__main__":
    # A worker *process* with a slow sync handler: `python -m tests.jobs.helpers SECONDS`.
    # Its configuration comes from the environment, as for `erp-sync worker`.
    from erp_sync.kit.logging import configure_logging
    from erp_sync.settings import load_settings

    s = load_settings()
    configure_logging("INFO")
    asyncio.run(run_worker(s, handlers_with(slow_handler(float(sys.argv[1])))))
