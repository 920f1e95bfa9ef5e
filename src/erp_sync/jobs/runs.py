"""The "JobRun" ledger: one row per job attempt (runbook sections 5 and 7)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from erp_sync.kit.time import utcnow
from erp_sync.models import JobRun

WORKER_LOST = "worker lost"


async def start_run(
    session: AsyncSession,
    *,
    tenant_id: str | None,
    job_name: str,
    job_id: str,
    queue: str,
    attempt: int,
    trigger: str,
    worker_id: str,
) -> JobRun:
    run = JobRun(
        tenantId=tenant_id,
        jobName=job_name,
        jobId=job_id,
        queue=queue,
        status="RUNNING",
        attempt=attempt,
        trigger=trigger,
        startedAt=utcnow(),
        workerId=worker_id,
    )
    session.add(run)
    await session.flush()
    return run


async def finish_run(
    session: AsyncSession,
    run_id: int,
    *,
    status: str,
    error: str | None = None,
    stats: dict[str, Any] | None = None,
) -> None:
    now = utcnow()
    await session.execute(
        update(JobRun)
        .where(JobRun.id == run_id, JobRun.status == "RUNNING")
        .values(
            status=status,
            error=error[:4000] if error else None,
            stats=stats,
            finishedAt=now,
            durationMs=func.greatest(
                0, func.floor(func.extract("epoch", now - JobRun.startedAt) * 1000)
            ).cast(JobRun.durationMs.type),
        )
    )


async def close_lost_runs(
    session: AsyncSession,
    *,
    job_id: str | None = None,
    queue: str | None = None,
    except_run: int | None = None,
    live_workers: Sequence[str] | None = None,
    older_than: timedelta | None = None,
) -> int:
    """Close RUNNING rows whose worker died as FAILED 'worker lost'.

    Called when a recovered job starts again (rows of the same job) and periodically by
    every worker (rows of workers without a heartbeat), so no RUNNING row lives forever.
    """
    now = utcnow()
    conditions = [JobRun.status == "RUNNING"]
    if job_id is not None:
        conditions.append(JobRun.jobId == job_id)
    if queue is not None:
        conditions.append(JobRun.queue == queue)
    if except_run is not None:
        conditions.append(JobRun.id != except_run)
    if live_workers is not None:
        conditions.append(
            (JobRun.workerId.is_(None)) | (JobRun.workerId.not_in(list(live_workers) or [""]))
        )
    if older_than is not None:
        conditions.append(JobRun.startedAt < now - older_than)
    result = await session.execute(
        update(JobRun)
        .where(and_(*conditions))
        .values(
            status="FAILED",
            error=WORKER_LOST,
            finishedAt=now,
            durationMs=func.floor(func.extract("epoch", now - JobRun.startedAt) * 1000).cast(
                JobRun.durationMs.type
            ),
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RunFilter:
    status: str | None = None
    tenant_id: str | None = None
    job_name: str | None = None
    job_id: str | None = None
    limit: int = 50


async def list_runs(session: AsyncSession, f: RunFilter) -> Sequence[JobRun]:
    """The runbook's section-5 query, with optional filters, newest first."""
    stmt = select(JobRun)
    if f.status:
        stmt = stmt.where(JobRun.status == f.status)
    if f.tenant_id:
        stmt = stmt.where(JobRun.tenantId == f.tenant_id)
    if f.job_name:
        stmt = stmt.where(JobRun.jobName == f.job_name)
    if f.job_id:
        stmt = stmt.where(JobRun.jobId == f.job_id)
    stmt = stmt.order_by(JobRun.startedAt.desc(), JobRun.id.desc()).limit(f.limit)
    return (await session.execute(stmt)).scalars().all()


def cutoff(days: int, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(days=days)


async def count_prunable(session: AsyncSession, days: int) -> int:
    stmt = select(func.count()).select_from(JobRun).where(JobRun.startedAt < cutoff(days))
    return int((await session.execute(stmt)).scalar_one())


async def prune_batch(session: AsyncSession, before: datetime, batch_size: int) -> int:
    """Delete up to ``batch_size`` rows older than ``before``; short transactions keep the
    table available while a large backlog is removed."""
    ids = (
        select(JobRun.id)
        .where(JobRun.startedAt < before)
        .order_by(JobRun.startedAt)
        .limit(batch_size)
        .scalar_subquery()
    )
    result = await session.execute(delete(JobRun).where(JobRun.id.in_(ids)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
