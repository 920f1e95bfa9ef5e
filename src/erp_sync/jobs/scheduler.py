"""`erp-sync scheduler`: one BullMQ job scheduler per schedulable tenant, plus the daily
JobRun prune, reconciled with the database on start and every SCHEDULER_INTERVAL_SECONDS.

Job schedulers live in Redis under ids derived from the tenant, and an upsert with the
same id replaces rather than adds, so two schedulers running at once agree instead of
double-scheduling.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from erp_sync.jobs.names import (
    PRUNE_CRON,
    PRUNE_JOB,
    PRUNE_SCHEDULER_ID,
    SYNC_JOB,
    dedup_id,
    scheduler_id,
)
from erp_sync.jobs.queues import JobQueues, job_options
from erp_sync.kit.logging import get_logger
from erp_sync.models import Tenant
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings

log = get_logger(__name__)
SYNC_PREFIX = "sync:"


@dataclass(frozen=True)
class Plan:
    upserts: dict[str, str]  # tenant id -> cron
    removals: list[str]  # scheduler ids


@dataclass(frozen=True)
class ReconcileResult:
    created: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: int


async def schedulable_tenants(rt: Runtime) -> dict[str, str]:
    """Active, unpaused tenants with an ACTIVE connection: tenant id -> cron. A tenant
    without a connection or one that needs re-authorisation has nothing to sync;
    scheduling it would only fail every few minutes."""
    async with rt.unit_of_work() as session:
        rows = (
            await session.execute(
                select(Tenant)
                .where(Tenant.active.is_(True), Tenant.pausedAt.is_(None))
                .options(selectinload(Tenant.connection))
            )
        ).scalars()
        return {
            t.id: t.schedule
            for t in rows
            if t.connection is not None and t.connection.status == "ACTIVE"
        }


async def current_schedulers(queues: JobQueues) -> dict[str, dict[str, Any]]:
    items = await queues.call(queues.sync.getJobSchedulers(0, -1, True), "reading job schedulers")
    return {str(s["key"]): s for s in items if str(s.get("key", "")).startswith(SYNC_PREFIX)}


async def reconcile(rt: Runtime, queues: JobQueues) -> ReconcileResult:
    settings = rt.settings
    wanted = await schedulable_tenants(rt)
    existing = await current_schedulers(queues)
    created: list[str] = []
    changed: list[str] = []
    for tenant_id, cron in sorted(wanted.items()):
        sid = scheduler_id(tenant_id)
        have = existing.get(sid)
        if (
            have is not None
            and have.get("pattern") == cron
            and have.get("tz") == settings.schedule_tz
        ):
            continue
        await upsert_tenant_schedule(queues, settings, tenant_id, cron)
        (changed if have is not None else created).append(tenant_id)
    removed = []
    for sid in sorted(set(existing) - {scheduler_id(t) for t in wanted}):
        await queues.call(queues.sync.removeJobScheduler(sid), f"removing job scheduler {sid}")
        removed.append(sid.removeprefix(SYNC_PREFIX))
    await ensure_prune_schedule(queues, settings)
    if created or changed or removed:
        log.info("scheduler.reconciled", created=created, changed=changed, removed=removed)
    return ReconcileResult(created, changed, removed, len(wanted) - len(created) - len(changed))


async def upsert_tenant_schedule(
    queues: JobQueues, settings: Settings, tenant_id: str, cron: str
) -> None:
    opts = {**job_options(settings), "deduplication": {"id": dedup_id(tenant_id)}}
    await queues.call(
        queues.sync.upsertJobScheduler(
            scheduler_id(tenant_id),
            {"pattern": cron, "tz": settings.schedule_tz},
            SYNC_JOB,
            {"tenantId": tenant_id, "mode": "incremental", "trigger": "cron"},
            opts,
        ),
        f"scheduling tenant {tenant_id}",
    )


async def ensure_prune_schedule(queues: JobQueues, settings: Settings) -> None:
    # getJobScheduler() of bullmq 3.4 raises for an absent id: list them instead.
    items = await queues.call(
        queues.maintenance.getJobSchedulers(0, -1, True), "reading the prune schedule"
    )
    have = next((s for s in items if s.get("key") == PRUNE_SCHEDULER_ID), None)
    if have and have.get("pattern") == PRUNE_CRON and have.get("tz") == settings.schedule_tz:
        return
    await queues.call(
        queues.maintenance.upsertJobScheduler(
            PRUNE_SCHEDULER_ID,
            {"pattern": PRUNE_CRON, "tz": settings.schedule_tz},
            PRUNE_JOB,
            {"trigger": "cron"},
            job_options(settings),
        ),
        "scheduling the daily prune",
    )


class SchedulerService:
    def __init__(self, settings: Settings) -> None:
        from erp_sync.runtime import open_runtime

        self.settings = settings
        self.rt = open_runtime(settings, name="erp-sync-scheduler")
        self.queues = JobQueues(settings)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await reconcile(self.rt, self.queues)  # fail fast at start on bad config
        self._task = asyncio.create_task(self._loop())
        log.info("scheduler.started", interval_s=self.settings.scheduler_interval_seconds)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.scheduler_interval_seconds)
            try:
                await reconcile(self.rt, self.queues)
            except Exception as exc:
                from erp_sync.jobs.worker import error_text

                log.warning("scheduler.reconcile_failed", error=error_text(exc))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.queues.close()
        await self.rt.close()
        log.info("scheduler.stopped")


async def next_runs(queues: JobQueues) -> dict[str, datetime]:
    """When each tenant's next scheduled sync fires (from the job schedulers in Redis)."""
    out: dict[str, datetime] = {}
    for sid, item in (await current_schedulers(queues)).items():
        nxt = item.get("next")
        if nxt:
            out[sid.removeprefix(SYNC_PREFIX)] = datetime.fromtimestamp(int(nxt) / 1000, UTC)
    return out
