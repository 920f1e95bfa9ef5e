"""Retention of the JobRun ledger (runbook section 7)."""

from __future__ import annotations

from erp_sync.jobs import runs
from erp_sync.kit.logging import get_logger
from erp_sync.runtime import Runtime

log = get_logger(__name__)
BATCH_SIZE = 5000


async def prune_job_runs(
    rt: Runtime, days: int | None = None, *, dry_run: bool = False, batch_size: int = BATCH_SIZE
) -> int:
    """Delete "JobRun" rows that started more than ``days`` ago (RETENTION_DAYS_JOBRUN by
    default), one short transaction per batch so the table is never locked for long."""
    days = days if days is not None else rt.settings.retention_days_jobrun
    if dry_run:
        async with rt.unit_of_work() as session:
            return await runs.count_prunable(session, days)
    before = runs.cutoff(days)
    total = 0
    while True:
        async with rt.unit_of_work() as session:
            removed = await runs.prune_batch(session, before, batch_size)
        total += removed
        if removed < batch_size:
            break
    log.info("jobrun.pruned", removed=total, days=days)
    return total
