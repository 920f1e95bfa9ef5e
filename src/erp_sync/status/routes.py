from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from erp_sync.api.deps import FORBIDDEN, RuntimeDep, SessionDep, require_operator, require_token
from erp_sync.errors import ConfigError, Conflict
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.routes import QueuesDep
from erp_sync.jobs.scheduler import next_runs
from erp_sync.status import service
from erp_sync.status.schemas import Overview, QuarantineList, TenantStatus
from erp_sync.sync.engine import retry_quarantined
from erp_sync.tenants import service as tenants
from erp_sync.tenants.schemas import TenantId, TenantOut

router = APIRouter(prefix="/api/v1", tags=["status"], dependencies=[Depends(require_token)])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "unknown tenant"}}


async def next_runs_safe(queues: JobQueues) -> dict[str, datetime]:
    try:
        return await next_runs(queues)
    except Exception:  # Redis trouble must not hide the database's view of the tenant
        return {}


@router.get("/tenants/{tenant_id}/status", responses=NOT_FOUND)
async def tenant_status(
    tenant_id: TenantId, session: SessionDep, rt: RuntimeDep, queues: QueuesDep
) -> TenantStatus:
    """Per stream: last success, cursor, lag, last error, last run's counts, quarantined
    records; the connection's status; the next scheduled run."""
    return await service.tenant_status(
        session, tenant_id, tz=rt.settings.schedule_tz, stale_factor=rt.settings.stale_factor,
        next_runs=await next_runs_safe(queues),
    )  # fmt: skip


@router.get("/status", dependencies=[Depends(require_operator)], responses=FORBIDDEN)
async def status_overview(session: SessionDep, rt: RuntimeDep, queues: QueuesDep) -> Overview:
    """Tenants that are failing, paused, stale or need re-authorisation, worst first."""
    return await service.overview(
        session, tz=rt.settings.schedule_tz, stale_factor=rt.settings.stale_factor,
        next_runs=await next_runs_safe(queues),
    )  # fmt: skip


@router.post("/tenants/{tenant_id}/resume", responses=NOT_FOUND)
async def resume_tenant(tenant_id: TenantId, session: SessionDep) -> TenantOut:
    """Clear an auto-pause: the scheduler restores the tenant's schedule within a minute."""
    return tenants.tenant_out(await service.resume(session, tenant_id))


@router.get("/tenants/{tenant_id}/quarantine", responses=NOT_FOUND)
async def quarantine(
    tenant_id: TenantId,
    session: SessionDep,
    stream: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> QuarantineList:
    """Records rejected by validation, with the reason."""
    return await service.quarantine_list(
        session, tenant_id, stream=stream, limit=limit, offset=offset
    )


@router.post(
    "/tenants/{tenant_id}/quarantine/retry",
    responses={**NOT_FOUND, 409: {"description": "the tenant has no usable ERP connection"}},
)
async def quarantine_retry(
    tenant_id: TenantId,
    rt: RuntimeDep,
    session: SessionDep,
    stream: Annotated[str | None, Query(max_length=40)] = None,
) -> dict[str, int]:
    """Map the quarantined records again with the current code (after a fix); the ones
    that now pass are written and leave the quarantine."""
    await tenants.get_tenant(session, tenant_id)  # an unknown tenant is a 404, not a 503
    try:
        return await retry_quarantined(rt, tenant_id, stream=stream)
    except ConfigError as exc:  # no usable connection: the tenant's state, not an outage
        raise Conflict(str(exc)) from None
