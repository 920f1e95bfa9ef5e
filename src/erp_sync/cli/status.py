"""`erp-sync status` and `erp-sync quarantine`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from erp_sync.cli import common
from erp_sync.jobs.queues import open_queues
from erp_sync.jobs.scheduler import next_runs
from erp_sync.runtime import Runtime
from erp_sync.status import service
from erp_sync.status.schemas import Overview, QuarantineList, TenantStatus

quarantine_app = typer.Typer(help="Records rejected by validation.", no_args_is_help=True)


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{timedelta(seconds=int(seconds))} ago"


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


async def _next(rt: Runtime) -> dict[str, datetime]:
    try:
        async with open_queues(rt.settings) as queues:
            return await next_runs(queues)
    except Exception:
        return {}


def status(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="One tenant in detail")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Which tenants are failing or stale (or one tenant's streams in detail)."""

    async def go(rt: Runtime) -> TenantStatus | Overview:
        nxt = await _next(rt)
        async with rt.unit_of_work() as session:
            kw = {
                "tz": rt.settings.schedule_tz,
                "stale_factor": rt.settings.stale_factor,
                "next_runs": nxt,
            }
            if tenant:
                return await service.tenant_status(session, tenant, **kw)  # type: ignore[arg-type]
            return await service.overview(session, **kw)  # type: ignore[arg-type]

    result = common.with_runtime(go)
    if as_json:
        common.print_json(result.model_dump(mode="json"))
        return
    if isinstance(result, Overview):
        if not result.problems:
            common.console.print(f"all {result.tenants} tenants are fine", markup=False)
            return
        table = Table("tenant", "name", "health", "lag", "detail")
        for p in result.problems:
            table.add_row(p.tenantId, p.name, p.health.upper(), _ago(p.lagSeconds), p.detail)
        common.console.print(table)
        common.console.print(
            f"{len(result.problems)} of {result.tenants} tenants need attention", markup=False
        )
        return
    st = result
    conn = f"{st.connection.provider} {st.connection.status}" if st.connection else "none"
    if st.connection and st.connection.reason:
        conn += f" ({st.connection.reason})"
    common.console.print(f"tenant {st.tenantId} ({st.name}): {st.health.upper()}", markup=False)
    common.console.print(f"connection: {conn}", markup=False)
    common.console.print(f"schedule:   {st.schedule}; next run {_when(st.nextRunAt)}", markup=False)
    if st.paused:
        common.console.print(f"paused:     {st.pausedReason}", markup=False)
    if st.lastJob:
        common.console.print(
            f"last job:   {st.lastJob.status} at {_when(st.lastJob.startedAt)}"
            f"{': ' + st.lastJob.error if st.lastJob.error else ''}",
            markup=False,
        )
    table = Table(
        "stream", "last success", "lag", "fetched", "written", "quarantined", "last error"
    )
    for s in st.streams:
        last = s.lastRun or {}
        written = int(last.get("inserted", 0)) + int(last.get("updated", 0))
        table.add_row(
            s.stream, _when(s.lastSuccessAt), _ago(s.lagSeconds), str(last.get("fetched", "-")),
            str(written), str(s.quarantined), (s.lastError or "")[:80],
        )  # fmt: skip
    common.console.print(table)


@quarantine_app.command("list")
def quarantine_list(
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant id")],
    stream: Annotated[str | None, typer.Option(help="Only this stream")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (with the raw records)")
    ] = False,
) -> None:
    """Show the tenant's quarantined records and why each was rejected."""

    async def go(rt: Runtime) -> QuarantineList:
        async with rt.unit_of_work() as session:
            return await service.quarantine_list(session, tenant, stream=stream, limit=limit)

    result = common.with_runtime(go)
    if as_json:
        common.print_json(result.model_dump(mode="json"))
        return
    table = Table("stream", "externalId", "reason", "seen", "last seen")
    for item in result.items:
        table.add_row(
            item.stream,
            item.externalId or "-",
            item.reason[:100],
            str(item.occurrences),
            _when(item.lastSeenAt),
        )
    common.console.print(table)
    common.console.print(f"{result.total} quarantined records", markup=False)


@quarantine_app.command("retry")
def quarantine_retry(
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant id")],
    stream: Annotated[str | None, typer.Option(help="Only this stream")] = None,
) -> None:
    """Map quarantined records again with the current code; those that pass are written."""
    from erp_sync.sync.engine import retry_quarantined

    result = common.with_runtime(lambda rt: retry_quarantined(rt, tenant, stream=stream))
    common.console.print(
        f"{result['released']} records written, {result['stillQuarantined']} still quarantined",
        markup=False,
    )
