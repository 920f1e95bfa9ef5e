from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from erp_sync.cli import common
from erp_sync.runtime import Runtime
from erp_sync.tenants import service
from erp_sync.tenants.schemas import ConnectionIn, TenantCreate, TenantOut, TenantUpdate

tenants_app = typer.Typer(
    help="Create, list and change tenants and their ERP connection.", no_args_is_help=True
)


def _pairs(values: list[str] | None, option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values or []:
        if "=" not in item:
            common.fail(f"{option} takes KEY=VALUE, got {item.split('=')[0]!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def _show(tenant: TenantOut) -> None:
    conn = tenant.connection
    common.console.print(f"id:         {tenant.id}", markup=False)
    common.console.print(f"name:       {tenant.name}", markup=False)
    common.console.print(f"document:   {tenant.document or '-'}", markup=False)
    common.console.print(f"active:     {'yes' if tenant.active else 'no'}", markup=False)
    common.console.print(f"schedule:   {tenant.schedule}", markup=False)
    if conn:
        common.console.print(
            f"connection: {conn.provider} ({conn.status})"
            f"{'' if conn.hasCredentials else ', no credentials'}",
            markup=False,
        )
        if conn.lastError:
            common.console.print(f"last error: {conn.lastError}", markup=False)
    else:
        common.console.print("connection: none (set one with `erp-sync tenants set-connection`)")


@tenants_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Company name")],
    tenant_id: Annotated[
        str | None, typer.Option("--id", help="Chosen id (default: a UUID)")
    ] = None,
    document: Annotated[str | None, typer.Option(help="CNPJ or CPF")] = None,
    schedule: Annotated[
        str | None, typer.Option(help="Cron of its syncs (default */15 * * * *)")
    ] = None,
    inactive: Annotated[bool, typer.Option("--inactive", help="Create it disabled")] = False,
) -> None:
    """Create a tenant."""
    data = common.parse_model(
        TenantCreate,
        id=tenant_id,
        name=name,
        document=document,
        schedule=schedule,
        active=not inactive,
    )

    async def go(rt: Runtime) -> TenantOut:
        async with rt.unit_of_work() as session:
            return service.tenant_out(
                await service.create_tenant(session, data, rt.settings.default_schedule)
            )

    tenant = common.with_runtime(go)
    common.console.print(f"created tenant {tenant.id}", markup=False)


@tenants_app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List tenants."""

    async def go(rt: Runtime) -> list[TenantOut]:
        async with rt.unit_of_work() as session:
            rows, _ = await service.list_tenants(session, limit=10_000)
            return [service.tenant_out(t) for t in rows]

    tenants = common.with_runtime(go)
    if as_json:
        common.print_json([t.model_dump(mode="json") for t in tenants])
        return
    table = Table("id", "name", "document", "active", "schedule", "connection")
    for t in tenants:
        conn = f"{t.connection.provider} ({t.connection.status})" if t.connection else "-"
        table.add_row(
            t.id, t.name, t.document or "-", "yes" if t.active else "no", t.schedule, conn
        )
    common.console.print(table)
    if not tenants:
        common.console.print("no tenants yet; add one with `erp-sync tenants add NAME`")


@tenants_app.command("show")
def show(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show one tenant and its connection (never its credentials)."""

    async def go(rt: Runtime) -> TenantOut:
        async with rt.unit_of_work() as session:
            return service.tenant_out(await service.get_tenant(session, tenant_id))

    tenant = common.with_runtime(go)
    if as_json:
        common.print_json(tenant.model_dump(mode="json"))
    else:
        _show(tenant)


def _update(tenant_id: str, data: TenantUpdate) -> TenantOut:
    async def go(rt: Runtime) -> TenantOut:
        async with rt.unit_of_work() as session:
            return service.tenant_out(await service.update_tenant(session, tenant_id, data))

    return common.with_runtime(go)


@tenants_app.command("disable")
def disable(tenant_id: Annotated[str, typer.Argument(help="Tenant id")]) -> None:
    """Stop scheduling a tenant's syncs (its data stays)."""
    _update(tenant_id, TenantUpdate(active=False))
    common.console.print(f"tenant {tenant_id} disabled", markup=False)


@tenants_app.command("enable")
def enable(tenant_id: Annotated[str, typer.Argument(help="Tenant id")]) -> None:
    """Schedule a disabled tenant's syncs again."""
    _update(tenant_id, TenantUpdate(active=True))
    common.console.print(f"tenant {tenant_id} enabled", markup=False)


@tenants_app.command("set-schedule")
def set_schedule(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id")],
    schedule: Annotated[str, typer.Argument(help="Cron expression, e.g. '*/15 * * * *'")],
) -> None:
    """Change when a tenant syncs."""
    data = common.parse_model(TenantUpdate, schedule=schedule)
    tenant = _update(tenant_id, data)
    common.console.print(f"tenant {tenant_id} now syncs at {tenant.schedule}", markup=False)


@tenants_app.command("set-connection")
def set_connection(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id")],
    provider: Annotated[str, typer.Option(help="ERP provider, e.g. bling, omie, tryton")],
    setting: Annotated[
        list[str] | None, typer.Option("--setting", "-s", help="KEY=VALUE, repeatable")
    ] = None,
    credential: Annotated[
        list[str] | None,
        typer.Option(
            "--credential", "-c", help="KEY=VALUE, repeatable (prefer --credentials-file)"
        ),
    ] = None,
    credentials_file: Annotated[
        Path | None,
        typer.Option(help="JSON file with the credentials (keeps them out of shell history)"),
    ] = None,
) -> None:
    """Set a tenant's ERP provider, settings and credentials (stored encrypted)."""
    creds: dict[str, Any] | None = None
    if credentials_file is not None:
        try:
            loaded = json.loads(credentials_file.read_text(encoding="utf-8"))
        except OSError as exc:
            common.fail(f"cannot read {credentials_file}: {exc.strerror}")
        except json.JSONDecodeError:
            common.fail(f"{credentials_file} is not valid JSON")
        if not isinstance(loaded, dict):
            common.fail(f"{credentials_file} must hold a JSON object")
        creds = loaded
    if credential:
        creds = {**(creds or {}), **_pairs(credential, "--credential")}
    data = common.parse_model(
        ConnectionIn, provider=provider, settings=_pairs(setting, "--setting"), credentials=creds
    )

    async def go(rt: Runtime) -> None:
        box = rt.box if data.credentials is not None else None
        async with rt.unit_of_work() as session:
            await service.set_connection(session, tenant_id, data, box)

    common.with_runtime(go)
    common.console.print(f"tenant {tenant_id} now syncs from {provider}", markup=False)


@tenants_app.command("resume")
def resume(tenant_id: Annotated[str, typer.Argument(help="Tenant id")]) -> None:
    """Clear an auto-pause (after too many failed syncs); its schedule comes back."""
    from erp_sync.status.service import resume as resume_tenant

    async def go(rt: Runtime) -> None:
        async with rt.unit_of_work() as session:
            await resume_tenant(session, tenant_id)

    common.with_runtime(go)
    common.console.print(
        f"tenant {tenant_id} resumed; its schedule returns within a minute", markup=False
    )
