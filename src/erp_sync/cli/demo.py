"""`erp-sync demo`: a demo tenant synced end to end from a local Bling sandbox, through
the real queue and worker, with a summary of what landed."""

from __future__ import annotations

import time
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table
from sqlalchemy import func, select

from erp_sync.cli import common
from erp_sync.cli.jobs import _follow
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.service import trigger_sync
from erp_sync.jobs.worker import WorkerService
from erp_sync.models import (
    Customer,
    JobRun,
    Product,
    QuarantinedRecord,
    SalesOrder,
    SalesOrderLine,
    StockLevel,
    Tenant,
)
from erp_sync.runtime import Runtime, runtime
from erp_sync.sandbox.bling import BlingSandboxConfig, RunningSandbox, running
from erp_sync.settings import Settings
from erp_sync.tenants import service as tenants
from erp_sync.tenants.schemas import ConnectionIn, TenantCreate

TENANT = "demo"
TABLES: list[tuple[str, Any]] = [
    ("products", Product),
    ("stock levels", StockLevel),
    ("customers", Customer),
    ("sales orders", SalesOrder),
]


def demo(
    products: Annotated[int, typer.Option(help="Products in the sandbox ERP")] = 2000,
    customers: Annotated[int, typer.Option(help="Customers in the sandbox ERP")] = 300,
    orders: Annotated[int, typer.Option(help="Sales orders in the sandbox ERP")] = 300,
    malformed_rate: Annotated[float, typer.Option(help="Share of broken records")] = 0.01,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds")] = 900,
) -> None:
    """Sync the tenant `demo` from a local Bling sandbox, then sync again after changes."""
    s = common.settings()
    config = BlingSandboxConfig(
        port=0, products=products, customers=customers, orders=orders,
        malformed_rate=malformed_rate, rate_limit=0,
    )  # fmt: skip
    with running(config) as sb:
        code = common.run(_demo(s, sb, timeout))
    raise typer.Exit(code)


async def _connect(rt: Runtime, sb: RunningSandbox) -> None:
    """Create the demo tenant (once) and point it at this run's sandbox, with the one-time
    authorization code an operator would paste after authorising the app in Bling."""
    cfg = sb.config
    async with rt.unit_of_work() as session:
        if await session.get(Tenant, TENANT) is None:
            await tenants.create_tenant(
                session,
                TenantCreate(id=TENANT, name="Demo Comércio Ltda", document="11222333000181"),
                rt.settings.default_schedule,
            )
        data = ConnectionIn(
            provider="bling",
            settings={"base_url": sb.base_url, "account": "demo", "rate_limit_per_second": 0},
            credentials={
                "client_id": cfg.client_id,
                "client_secret": cfg.client_secret,
                "code": cfg.auth_code,
            },
        )
        await tenants.set_connection(session, TENANT, data, rt.box)


async def _counts(rt: Runtime) -> dict[str, int]:
    out: dict[str, int] = {}
    async with rt.unit_of_work() as session:
        for label, model in TABLES:
            stmt = (
                select(func.count())
                .select_from(model)
                .where(model.tenantId == TENANT, model.deletedAt.is_(None))
            )
            out[label] = int((await session.execute(stmt)).scalar_one())
        for label, model in (("order lines", SalesOrderLine), ("quarantined", QuarantinedRecord)):
            stmt = select(func.count()).select_from(model).where(model.tenantId == TENANT)
            out[label] = int((await session.execute(stmt)).scalar_one())
    return out


async def _stats(rt: Runtime, job_id: str) -> dict[str, Any]:
    async with rt.unit_of_work() as session:
        run = (
            await session.execute(
                select(JobRun).where(JobRun.jobId == job_id).order_by(JobRun.id.desc()).limit(1)
            )
        ).scalar_one_or_none()
    return dict((run.stats or {}).get("streams", {})) if run else {}


def _print_stats(title: str, stats: dict[str, Any]) -> None:
    table = Table(
        "stream",
        "fetched",
        "inserted",
        "updated",
        "unchanged",
        "quarantined",
        "deleted",
        title=title,
    )
    for stream, st in stats.items():
        table.add_row(
            stream,
            *(
                str(st.get(k, 0))
                for k in ("fetched", "inserted", "updated", "unchanged", "quarantined", "deleted")
            ),
        )
    common.console.print(table)


async def _demo(settings: Settings, sb: RunningSandbox, timeout: float) -> int:
    common.console.print(f"sandbox Bling API at {sb.base_url}", markup=False)
    async with runtime(settings, name="erp-sync-demo") as rt:
        await _connect(rt, sb)
        worker = WorkerService(settings)
        queues = JobQueues(settings)
        await worker.start()
        try:
            started = time.monotonic()
            first = await trigger_sync(rt, queues, TENANT, full=True)
            common.console.print(f"full sync of tenant {TENANT}: job {first.job_id}", markup=False)
            if await _follow(rt, queues, first.job_id, timeout) != 0:
                return 1
            elapsed = time.monotonic() - started
            _print_stats("first sync (full)", await _stats(rt, first.job_id))
            counts = await _counts(rt)
            table = Table("table", "rows for tenant demo", title="what landed in PostgreSQL")
            for label, n in counts.items():
                table.add_row(label, f"{n:,}")
            common.console.print(table)
            rows = sum(v for k, v in counts.items() if k != "quarantined")
            common.console.print(f"{rows:,} rows in {elapsed:.1f} s", markup=False)

            changes = {
                "price_changes": 25,
                "stock_changes": 40,
                "new_products": 5,
                "customer_changes": 5,
            }
            async with httpx.AsyncClient(timeout=30) as client:
                (
                    await client.post(f"{sb.root_url}/__sandbox/mutate", json=changes)
                ).raise_for_status()
            common.console.print(f"changed in the ERP: {changes}", markup=False)
            second = await trigger_sync(rt, queues, TENANT)
            if await _follow(rt, queues, second.job_id, timeout) != 0:
                return 1
            _print_stats("second sync (incremental)", await _stats(rt, second.job_id))
        finally:
            await worker.stop(grace=10)
            await queues.close()
            # The sandbox ends with this command: keep the scheduler from syncing the demo
            # tenant against it later (`erp-sync tenants enable demo` undoes this).
            async with rt.unit_of_work() as session:
                tenant = await session.get(Tenant, TENANT)
                if tenant is not None:
                    tenant.active = False
    common.console.print(
        "\nlook around:  erp-sync status --tenant demo   erp-sync jobruns --tenant demo   "
        "erp-sync quarantine list --tenant demo\n"
        "run the service:  erp-sync start   (API on :3000, worker and scheduler; the demo "
        "tenant is now disabled, since its sandbox ERP ended with this command)",
        markup=False,
    )
    return 0
