from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status

from erp_sync.api.deps import (
    FORBIDDEN,
    PrincipalDep,
    RuntimeDep,
    SessionDep,
    require_operator,
    require_token,
)
from erp_sync.errors import Invalid
from erp_sync.jobs import heartbeat, runs
from erp_sync.jobs.queues import STREAMS, JobQueues
from erp_sync.jobs.schemas import JobRunOut, QueuesOverview, QueueStatus, SyncQueued, SyncRequest
from erp_sync.jobs.service import trigger_sync
from erp_sync.tenants.schemas import TenantId

router = APIRouter(prefix="/api/v1", tags=["jobs"], dependencies=[Depends(require_token)])


def get_queues(request: Request) -> JobQueues:
    queues: JobQueues = request.app.state.queues
    return queues


QueuesDep = Annotated[JobQueues, Depends(get_queues)]


@router.post(
    "/tenants/{tenant_id}/sync",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        404: {"description": "unknown tenant"},
        200: {"description": "joined a queued sync"},
    },
)
async def sync_now(
    tenant_id: TenantId,
    rt: RuntimeDep,
    queues: QueuesDep,
    response: Response,
    body: SyncRequest | None = None,
) -> SyncQueued:
    """Queue a sync of the tenant now. 202 with a new job, or 200 when a sync of this tenant
    was already waiting or running and the request joined it."""
    body = body or SyncRequest()
    if body.streams:
        unknown = [s for s in body.streams if s not in STREAMS]
        if unknown:
            raise Invalid(
                f"streams: unknown stream {unknown[0]!r}; streams are {', '.join(STREAMS)}",
                "streams",
            )
    result = await trigger_sync(
        rt, queues, tenant_id, streams=body.streams, full=body.full, trigger="api"
    )
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return SyncQueued(
        jobId=result.job_id, created=result.created, message=result.describe(tenant_id)
    )


@router.get("/job-runs")
async def list_job_runs(
    session: SessionDep,
    principal: PrincipalDep,
    status_: Annotated[
        Literal["RUNNING", "COMPLETED", "FAILED"] | None, Query(alias="status")
    ] = None,
    tenant: Annotated[str | None, Query(max_length=64)] = None,
    job_name: Annotated[str | None, Query(alias="jobName", max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[JobRunOut]:
    """Job runs, newest first: the runbook's section-5 query with filters. A tenant token
    sees its own tenant's runs only (another tenant's filter matches nothing)."""
    if principal.tenant_id is not None:
        if tenant is not None and tenant != principal.tenant_id:
            return []
        tenant = principal.tenant_id
    rows = await runs.list_runs(
        session, runs.RunFilter(status=status_, tenant_id=tenant, job_name=job_name, limit=limit)
    )
    return [JobRunOut.model_validate(r) for r in rows]


@router.get("/queues", dependencies=[Depends(require_operator)], responses=FORBIDDEN)
async def queues_overview(rt: RuntimeDep, queues: QueuesDep) -> QueuesOverview:
    """Counts per state, paused or not, and the live workers."""
    items: list[dict[str, Any]] = await queues.status()
    workers = await heartbeat.live_workers(rt.redis, rt.settings.queue_prefix)
    return QueuesOverview(queues=[QueueStatus.model_validate(q) for q in items], workers=workers)
