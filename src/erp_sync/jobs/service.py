"""What the API, CLI and admin page share: trigger a tenant's sync, read job runs."""

from __future__ import annotations

from collections.abc import Sequence

from erp_sync.jobs.queues import Enqueued, JobQueues, SyncJobData
from erp_sync.runtime import Runtime
from erp_sync.tenants import service as tenants


async def trigger_sync(
    rt: Runtime,
    queues: JobQueues,
    tenant_id: str,
    *,
    streams: Sequence[str] | None = None,
    full: bool = False,
    trigger: str = "manual",
) -> Enqueued:
    """Queue a sync of an existing tenant outside its cron (runbook section 6)."""
    async with rt.unit_of_work() as session:
        await tenants.get_tenant(session, tenant_id)  # NotFound for an unknown tenant
    data = SyncJobData.model_validate(
        {
            "tenantId": tenant_id,
            "streams": list(streams) if streams else None,
            "mode": "full" if full else "incremental",
            "trigger": trigger,
        }
    )
    return await queues.enqueue_sync(data)
