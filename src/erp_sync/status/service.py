"""Per-tenant sync status and freshness, the failing/stale overview, auto-pause and the
quarantine: what an operator needs to know before the tenant's customers notice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy import func, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from erp_sync.jobs.names import SYNC_JOB
from erp_sync.kit.time import utcnow
from erp_sync.models import ErpConnection, JobRun, QuarantinedRecord, SyncState, Tenant
from erp_sync.status.schemas import (
    ConnectionStatus,
    LastJob,
    Overview,
    Problem,
    QuarantineItem,
    QuarantineList,
    StreamStatus,
    TenantStatus,
)
from erp_sync.tenants.service import get_tenant

SEVERITY = {"needs_reauth": 5, "failing": 4, "paused": 3, "stale": 2, "never_synced": 1}


def schedule_interval(cron: str, tz: str, now: datetime | None = None) -> timedelta:
    """The gap between the next two runs of a cron (what "fresh" means for the tenant)."""
    base = (now or utcnow()).astimezone(ZoneInfo(tz))
    it = croniter(cron, base)
    first = it.get_next(datetime)
    second = it.get_next(datetime)
    return second - first


async def consecutive_failures(session: AsyncSession, tenant_id: str, limit: int = 100) -> int:
    rows = (
        await session.execute(
            select(JobRun.status)
            .where(
                JobRun.tenantId == tenant_id, JobRun.jobName == SYNC_JOB, JobRun.status != "RUNNING"
            )
            .order_by(JobRun.startedAt.desc(), JobRun.id.desc())
            .limit(limit)
        )
    ).scalars()
    count = 0
    for status in rows:
        if status != "FAILED":
            break
        count += 1
    return count


async def tenant_status(
    session: AsyncSession,
    tenant_id: str,
    *,
    tz: str,
    stale_factor: float,
    next_runs: dict[str, datetime] | None = None,
) -> TenantStatus:
    tenant = await get_tenant(session, tenant_id)
    now = utcnow()
    states = (
        (
            await session.execute(
                select(SyncState).where(SyncState.tenantId == tenant_id).order_by(SyncState.stream)
            )
        )
        .scalars()
        .all()
    )
    counted = await session.execute(
        select(QuarantinedRecord.stream, func.count())
        .where(QuarantinedRecord.tenantId == tenant_id)
        .group_by(QuarantinedRecord.stream)
    )
    quarantined: dict[str, int] = {str(stream): int(n) for stream, n in counted.all()}
    last = (
        await session.execute(
            select(JobRun)
            .where(JobRun.tenantId == tenant_id, JobRun.jobName == SYNC_JOB)
            .order_by(JobRun.startedAt.desc(), JobRun.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    failures = await consecutive_failures(session, tenant_id)
    streams = [
        StreamStatus(
            stream=s.stream,
            lastSuccessAt=s.lastSuccessAt,
            lagSeconds=(now - s.lastSuccessAt).total_seconds() if s.lastSuccessAt else None,
            cursor=s.cursor,
            fullSyncInProgress=s.fullRunId is not None,
            lastFullSyncAt=s.lastFullSyncAt,
            lastError=s.lastError,
            lastErrorAt=s.lastErrorAt,
            lastRun=s.lastStats,
            quarantined=quarantined.get(s.stream, 0),
        )
        for s in states
    ]
    successes = [s.lastSuccessAt for s in states if s.lastSuccessAt]
    lag = (now - min(successes)).total_seconds() if successes else None
    conn = tenant.connection
    health = _health(
        tenant, conn.status if conn else None, lag, failures, last, tz, stale_factor, now
    )
    return TenantStatus(
        tenantId=tenant.id,
        name=tenant.name,
        active=tenant.active,
        paused=tenant.pausedAt is not None,
        pausedReason=tenant.pausedReason,
        schedule=tenant.schedule,
        nextRunAt=(next_runs or {}).get(tenant.id),
        connection=ConnectionStatus(
            provider=conn.provider, status=conn.status, reason=conn.lastError
        )
        if conn
        else None,
        health=health,
        lagSeconds=lag,
        consecutiveFailures=failures,
        lastJob=LastJob(
            jobId=last.jobId,
            status=last.status,
            startedAt=last.startedAt,
            finishedAt=last.finishedAt,
            error=last.error,
        )
        if last
        else None,
        streams=streams,
    )


def _health(
    tenant: Tenant,
    conn_status: str | None,
    lag: float | None,
    failures: int,
    last: JobRun | None,
    tz: str,
    stale_factor: float,
    now: datetime,
) -> str:
    if not tenant.active:
        return "inactive"
    if conn_status == "NEEDS_REAUTH":
        return "needs_reauth"
    if tenant.pausedAt is not None:
        return "paused"
    if failures > 0 and last is not None and last.status == "FAILED":
        return "failing"
    interval = schedule_interval(tenant.schedule, tz, now).total_seconds()
    if lag is None:
        age = (now - tenant.createdAt).total_seconds()
        return "never_synced" if age > stale_factor * interval else "ok"
    if lag > stale_factor * interval:
        return "stale"
    return "ok"


@dataclass(frozen=True)
class TenantHealth:
    tenant_id: str
    health: str
    lag: float | None  # seconds since the oldest stream's last success
    running: bool  # active and not paused: counts for the largest lag


async def all_tenant_health(
    session: AsyncSession, *, tz: str, stale_factor: float
) -> list[TenantHealth]:
    """Every tenant's health and lag by ``_health``'s rule, from three queries whatever
    the number of tenants (``tenant_status`` costs several queries per tenant: seconds
    at a few hundred tenants). /metrics and the overview read it."""
    now = utcnow()
    runs = (
        select(JobRun)
        .where(JobRun.tenantId == Tenant.id, JobRun.jobName == SYNC_JOB)
        .order_by(JobRun.startedAt.desc(), JobRun.id.desc())
        .limit(1)
        .lateral("last_run")
    )
    last_run = aliased(JobRun, runs)
    finished = (
        select(JobRun.status)
        .where(JobRun.tenantId == Tenant.id, JobRun.jobName == SYNC_JOB, JobRun.status != "RUNNING")
        .order_by(JobRun.startedAt.desc(), JobRun.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    rows = (
        await session.execute(
            select(Tenant, ErpConnection.status, last_run, finished)
            .outerjoin(ErpConnection, ErpConnection.tenantId == Tenant.id)
            .outerjoin(last_run, true())
            .order_by(Tenant.id)
        )
    ).all()
    oldest = dict(
        (
            await session.execute(
                select(SyncState.tenantId, func.min(SyncState.lastSuccessAt))
                .where(SyncState.lastSuccessAt.is_not(None))
                .group_by(SyncState.tenantId)
            )
        ).all()
    )
    out: list[TenantHealth] = []
    for tenant, conn_status, last, last_finished in rows:
        success = oldest.get(tenant.id)
        lag = (now - success).total_seconds() if success is not None else None
        # The rule only asks whether the failure streak is non-empty, i.e. whether the
        # last finished attempt failed; its length is tenant_status's business.
        failures = 1 if last_finished == "FAILED" else 0
        health = _health(tenant, conn_status, lag, failures, last, tz, stale_factor, now)
        out.append(TenantHealth(tenant.id, health, lag, tenant.active and tenant.pausedAt is None))
    return out


async def overview(
    session: AsyncSession,
    *,
    tz: str,
    stale_factor: float,
    next_runs: dict[str, datetime] | None = None,
) -> Overview:
    # Every tenant's health in bulk; the full status (for the detail line) only of those
    # with a problem.
    tenants = await all_tenant_health(session, tz=tz, stale_factor=stale_factor)
    problems: list[Problem] = []
    for t in tenants:
        if t.health not in SEVERITY:
            continue
        st = await tenant_status(
            session, t.tenant_id, tz=tz, stale_factor=stale_factor, next_runs=next_runs
        )
        if st.health in SEVERITY:
            problems.append(
                Problem(
                    tenantId=st.tenantId,
                    name=st.name,
                    health=st.health,
                    severity=SEVERITY[st.health],
                    lagSeconds=st.lagSeconds,
                    detail=_detail(st),
                )
            )
    problems.sort(key=lambda p: (-p.severity, -(p.lagSeconds or 0)))
    return Overview(tenants=len(tenants), problems=problems)


def _detail(st: TenantStatus) -> str:
    if st.health == "needs_reauth" and st.connection:
        return f"connection needs re-authorisation: {st.connection.reason or 'credentials refused'}"
    if st.health == "paused":
        return st.pausedReason or "paused"
    if st.health == "failing" and st.lastJob:
        return (
            f"{st.consecutiveFailures} failed sync attempt(s) in a row; "
            f"last error: {st.lastJob.error}"
        )
    if st.health == "stale" and st.lagSeconds is not None:
        ago = timedelta(seconds=int(st.lagSeconds))
        return f"last complete sync {ago} ago (schedule {st.schedule})"
    return "never synced"


async def pause_if_failing(
    session: AsyncSession, tenant_id: str, threshold: int, last_error: str | None
) -> bool:
    """Auto-pause a tenant whose last ``threshold`` sync attempts all failed: no retry storm
    against a broken ERP account. Returns True when it paused the tenant now."""
    if threshold <= 0:
        return False
    tenant = await session.get(Tenant, tenant_id, with_for_update=True)
    if tenant is None or tenant.pausedAt is not None:
        return False
    failures = await consecutive_failures(session, tenant_id, limit=threshold)
    if failures < threshold:
        return False
    tenant.pausedAt = utcnow()
    tenant.pausedReason = (
        f"paused after {failures} failed syncs in a row; last error: {last_error or 'unknown'}; "
        f"resume with `erp-sync tenants resume {tenant_id}`"
    )[:2000]
    return True


async def resume(session: AsyncSession, tenant_id: str) -> Tenant:
    tenant = await get_tenant(session, tenant_id, for_update=True)
    tenant.pausedAt = None
    tenant.pausedReason = None
    await session.flush()
    return tenant


async def quarantine_list(
    session: AsyncSession,
    tenant_id: str,
    *,
    stream: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> QuarantineList:
    await get_tenant(session, tenant_id)
    base = select(QuarantinedRecord).where(QuarantinedRecord.tenantId == tenant_id)
    count = (
        select(func.count())
        .select_from(QuarantinedRecord)
        .where(QuarantinedRecord.tenantId == tenant_id)
    )
    if stream:
        base = base.where(QuarantinedRecord.stream == stream)
        count = count.where(QuarantinedRecord.stream == stream)
    rows: Sequence[QuarantinedRecord] = (
        (
            await session.execute(
                base.order_by(QuarantinedRecord.lastSeenAt.desc(), QuarantinedRecord.id.desc())
                .limit(limit)
                .offset(offset)
            )
        )
        .scalars()
        .all()
    )
    total = int((await session.execute(count)).scalar_one())
    return QuarantineList(
        items=[
            QuarantineItem(
                id=r.id,
                stream=r.stream,
                externalId=r.externalId,
                reason=r.reason,
                firstSeenAt=r.firstSeenAt,
                lastSeenAt=r.lastSeenAt,
                occurrences=r.occurrences,
                raw=r.raw,
            )
            for r in rows
        ],
        total=total,
    )
