"""Per-tenant cron schedules in Redis, reconciled with the database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, update

from erp_sync.jobs.names import PRUNE_SCHEDULER_ID, SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.scheduler import SchedulerService, reconcile
from erp_sync.models import ErpConnection, Tenant
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from tests.jobs.helpers import add_tenant, wait_until


async def schedulers(queues: JobQueues) -> dict[str, dict[str, Any]]:
    items = await queues.sync.getJobSchedulers(0, -1, True)
    return {s["key"]: s for s in items}


async def test_reconcile_creates_changes_and_removes_tenant_schedules(
    rt: Runtime, queues: JobQueues
) -> None:
    await add_tenant(rt, "acme", schedule="*/5 * * * *")
    await add_tenant(rt, "beta")
    await add_tenant(rt, "lonely", connected=False)  # nothing to sync: not scheduled
    result = await reconcile(rt, queues)
    assert sorted(result.created) == ["acme", "beta"]
    have = await schedulers(queues)
    assert set(have) == {"sync:acme", "sync:beta"}
    assert have["sync:acme"]["pattern"] == "*/5 * * * *"
    assert have["sync:acme"]["tz"] == "America/Sao_Paulo"
    template = have["sync:acme"]["template"]
    assert template["data"] == {"tenantId": "acme", "mode": "incremental", "trigger": "cron"}
    assert template["opts"]["deduplication"] == {"id": "sync:acme"}
    # the next run is a delayed job in the sync queue, due at the next cron tick
    counts = await queues.sync.getJobCounts("delayed")
    assert counts["delayed"] == 2

    again = await reconcile(rt, queues)
    assert (again.created, again.changed, again.removed, again.unchanged) == ([], [], [], 2)

    async with rt.unit_of_work() as session:
        await session.execute(
            update(Tenant).where(Tenant.id == "acme").values(schedule="0 3 * * *")
        )
        await session.execute(update(Tenant).where(Tenant.id == "beta").values(active=False))
        await session.execute(
            update(ErpConnection).where(ErpConnection.tenantId == "lonely").values(status="ACTIVE")
        )
    await add_tenant(rt, "gamma")
    result = await reconcile(rt, queues)
    assert result.changed == ["acme"] and result.removed == ["beta"] and result.created == ["gamma"]
    have = await schedulers(queues)
    assert set(have) == {"sync:acme", "sync:gamma"}
    assert have["sync:acme"]["pattern"] == "0 3 * * *"

    async with rt.unit_of_work() as session:
        await session.execute(delete(Tenant).where(Tenant.id == "gamma"))
        await session.execute(
            update(ErpConnection)
            .where(ErpConnection.tenantId == "acme")
            .values(status="NEEDS_REAUTH")
        )
    result = await reconcile(rt, queues)
    assert sorted(result.removed) == ["acme", "gamma"]
    assert await schedulers(queues) == {}
    # the old iterations are gone too: nothing left to fire
    assert (await queues.sync.getJobCounts("delayed"))["delayed"] == 0


async def test_daily_prune_is_scheduled(rt: Runtime, queues: JobQueues) -> None:
    await reconcile(rt, queues)
    prune = await queues.maintenance.getJobScheduler(PRUNE_SCHEDULER_ID)
    assert (
        prune is not None and prune["pattern"] == "30 3 * * *" and prune["name"] == "jobrun-prune"
    )


async def test_two_schedulers_at_once_do_not_double_schedule(rt: Runtime, fast: Settings) -> None:
    await add_tenant(rt, "acme")
    a, b = SchedulerService(fast), SchedulerService(fast)
    try:
        await asyncio.gather(a.start(), b.start())
        await asyncio.gather(reconcile(a.rt, a.queues), reconcile(b.rt, b.queues))
        have = await schedulers(a.queues)
        assert list(have) == ["sync:acme"]
        counts = await a.queues.sync.getJobCounts("delayed", "waiting")
        assert counts == {"delayed": 1, "waiting": 0}
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_the_scheduler_loop_picks_up_a_new_tenant(
    rt: Runtime, fast: Settings, queues: JobQueues
) -> None:
    service = SchedulerService(fast.model_copy(update={"scheduler_interval_seconds": 0.5}))
    await service.start()
    try:
        assert await schedulers(queues) == {}
        await add_tenant(rt, "acme")

        async def scheduled() -> bool:
            return "sync:acme" in await schedulers(queues)

        await wait_until(scheduled, timeout=10, what="the new tenant's schedule")
    finally:
        await service.stop()


async def test_a_cron_fire_runs_a_sync_with_trigger_cron(
    rt: Runtime, queues: JobQueues, start_worker: Callable[..., Any]
) -> None:
    """A scheduler-made job (every second here, cron in production) is processed and
    its JobRun says trigger=cron."""
    from sqlalchemy import select

    from erp_sync.jobs.queues import job_options
    from erp_sync.models import JobRun

    await add_tenant(rt, "acme")
    await queues.sync.upsertJobScheduler(
        "sync:acme",
        {"every": 1000},
        "sync-tenant",
        {"tenantId": "acme", "mode": "incremental", "trigger": "cron"},
        {**job_options(queues.settings), "deduplication": {"id": "sync:acme"}},
    )
    await start_worker()

    async def cron_runs() -> list[JobRun]:
        async with rt.unit_of_work() as session:
            rows = (
                await session.execute(select(JobRun).where(JobRun.status == "COMPLETED"))
            ).scalars()
            return [r for r in rows if r.trigger == "cron"]

    rows = await wait_until(cron_runs, timeout=10, what="a cron-triggered run")
    assert rows[0].jobId is not None and rows[0].jobId.startswith("repeat:sync:acme:")
    assert rows[0].queue == SYNC_QUEUE
