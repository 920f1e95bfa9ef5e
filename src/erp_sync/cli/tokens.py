"""`erp-sync tokens`: tenant API tokens (create, list, revoke)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from erp_sync.cli import common
from erp_sync.runtime import Runtime
from erp_sync.tokens import service
from erp_sync.tokens.schemas import TokenCreate, TokenCreated, TokenOut

tokens_app = typer.Typer(
    help="API tokens that open one tenant's /api/v1 routes: create, list, revoke.",
    no_args_is_help=True,
)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


@tokens_app.command("create")
def create(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id")],
    name: Annotated[str, typer.Option(help="A label, e.g. 'storefront production'")],
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, max=3650, help="Stop working after N days (default: never)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (token included)")] = False,
) -> None:
    """Create a token for one tenant and print it, this once: only its hash is stored."""
    data = common.parse_model(TokenCreate, name=name, expiresInDays=expires_in_days)

    async def go(rt: Runtime) -> TokenCreated:
        async with rt.unit_of_work() as session:
            return await service.create_token(session, tenant_id, data)

    created = common.with_runtime(go)
    if as_json:
        common.print_json(created.model_dump(mode="json"))
        return
    expiry = f", expires {_when(created.expiresAt)}" if created.expiresAt else ""
    common.console.print(
        f"token {created.id} ({created.prefix}...) for tenant {created.tenantId}{expiry}:",
        markup=False,
    )
    common.console.print(created.token, markup=False)
    common.console.print(
        "Copy it now: it will not be shown again (only its hash is stored).", markup=False
    )


@tokens_app.command("list")
def list_(
    tenant_id: Annotated[
        str | None, typer.Argument(help="Tenant id (default: every tenant)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List tokens (never the tokens themselves): prefix, status, last use."""

    async def go(rt: Runtime) -> list[TokenOut]:
        async with rt.unit_of_work() as session:
            return [service.token_out(t) for t in await service.list_tokens(session, tenant_id)]

    found = common.with_runtime(go)
    if as_json:
        common.print_json([t.model_dump(mode="json") for t in found])
        return
    if not found:
        common.console.print(
            "no tokens yet; create one with `erp-sync tokens create TENANT --name NAME`",
            markup=False,
        )
        return
    table = Table("id", "tenant", "name", "prefix", "status", "created", "last used", "expires")
    for t in found:
        table.add_row(
            t.id,
            t.tenantId,
            t.name,
            t.prefix,
            t.status,
            _when(t.createdAt),
            _when(t.lastUsedAt),
            _when(t.expiresAt),
        )
    common.console.print(table)


@tokens_app.command("revoke")
def revoke(token_id: Annotated[str, typer.Argument(help="Token id (see `tokens list`)")]) -> None:
    """Revoke a token: requests with it get 401 from now on."""

    async def go(rt: Runtime) -> tuple[TokenOut, bool]:
        async with rt.unit_of_work() as session:
            token, changed = await service.revoke_token(session, token_id.strip())
            return service.token_out(token), changed

    token, changed = common.with_runtime(go)
    if changed:
        common.console.print(
            f"token {token.id} ({token.prefix}...) of tenant {token.tenantId} revoked; "
            "requests with it now get 401",
            markup=False,
        )
    else:
        common.console.print(
            f"token {token.id} ({token.prefix}...) was already revoked on {_when(token.revokedAt)}",
            markup=False,
        )
