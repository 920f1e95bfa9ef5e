from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status

from erp_sync.api.deps import (
    FORBIDDEN,
    PrincipalDep,
    RuntimeDep,
    SessionDep,
    require_operator,
    require_token,
)
from erp_sync.errors import NotFound
from erp_sync.tenants import service
from erp_sync.tenants.schemas import (
    ConnectionIn,
    ConnectionOut,
    TenantCreate,
    TenantId,
    TenantList,
    TenantOut,
    TenantUpdate,
)

router = APIRouter(
    prefix="/api/v1/tenants", tags=["tenants"], dependencies=[Depends(require_token)]
)

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "unknown tenant"}}
# Creating, changing and deleting tenants is the operator's: the tenant record (name,
# CNPJ, schedule, active) is our side of the contract, and its schedule sets the load on
# the workers and the ERP. A tenant token reads its tenant and rotates its credentials.
OPERATOR = [Depends(require_operator)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=OPERATOR,
    responses={**FORBIDDEN, 409: {"description": "id taken"}},
)
async def create_tenant(data: TenantCreate, session: SessionDep, rt: RuntimeDep) -> TenantOut:
    tenant = await service.create_tenant(session, data, rt.settings.default_schedule)
    return service.tenant_out(tenant)


@router.get("")
async def list_tenants(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    active: bool | None = None,
) -> TenantList:
    """Every tenant; for a tenant token, its own tenant only."""
    rows, total = await service.list_tenants(
        session, limit=limit, offset=offset, active=active, only=principal.tenant_id
    )
    return TenantList(items=[service.tenant_out(t) for t in rows], total=total)


@router.get("/{tenant_id}", responses=NOT_FOUND)
async def show_tenant(tenant_id: TenantId, session: SessionDep) -> TenantOut:
    return service.tenant_out(await service.get_tenant(session, tenant_id))


@router.patch("/{tenant_id}", dependencies=OPERATOR, responses={**NOT_FOUND, **FORBIDDEN})
async def update_tenant(tenant_id: TenantId, data: TenantUpdate, session: SessionDep) -> TenantOut:
    return service.tenant_out(await service.update_tenant(session, tenant_id, data))


@router.delete(
    "/{tenant_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=OPERATOR,
    responses={**NOT_FOUND, **FORBIDDEN},
)
async def delete_tenant(tenant_id: TenantId, session: SessionDep) -> Response:
    await service.delete_tenant(session, tenant_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{tenant_id}/connection", responses=NOT_FOUND)
async def show_connection(tenant_id: TenantId, session: SessionDep) -> ConnectionOut:
    tenant = await service.get_tenant(session, tenant_id)
    if tenant.connection is None:
        raise NotFound(f"tenant {tenant_id!r} has no ERP connection yet")
    return service.connection_out(tenant.connection)


@router.put(
    "/{tenant_id}/connection",
    responses={
        **NOT_FOUND,
        403: {"description": "a tenant token changed the provider or settings"},
    },
)
async def set_connection(
    tenant_id: TenantId,
    data: ConnectionIn,
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
) -> ConnectionOut:
    """Set the ERP provider, settings and credentials (write-only, stored encrypted).
    Settings and credentials are checked against the connector's own models: a 422
    names the field at fault (``settings.base_url``), never a credential's value.
    A tenant token replaces the credentials only, with the stored provider and settings."""
    box = rt.box if data.credentials is not None else None
    conn = await service.set_connection(
        session, tenant_id, data, box, credentials_only=not principal.is_operator
    )
    return service.connection_out(conn)
