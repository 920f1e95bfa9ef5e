from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status

from erp_sync.api.deps import RuntimeDep, SessionDep, require_token
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


@router.post("", status_code=status.HTTP_201_CREATED, responses={409: {"description": "id taken"}})
async def create_tenant(data: TenantCreate, session: SessionDep, rt: RuntimeDep) -> TenantOut:
    tenant = await service.create_tenant(session, data, rt.settings.default_schedule)
    return service.tenant_out(tenant)


@router.get("")
async def list_tenants(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    active: bool | None = None,
) -> TenantList:
    rows, total = await service.list_tenants(session, limit=limit, offset=offset, active=active)
    return TenantList(items=[service.tenant_out(t) for t in rows], total=total)


@router.get("/{tenant_id}", responses=NOT_FOUND)
async def show_tenant(tenant_id: TenantId, session: SessionDep) -> TenantOut:
    return service.tenant_out(await service.get_tenant(session, tenant_id))


@router.patch("/{tenant_id}", responses=NOT_FOUND)
async def update_tenant(tenant_id: TenantId, data: TenantUpdate, session: SessionDep) -> TenantOut:
    return service.tenant_out(await service.update_tenant(session, tenant_id, data))


@router.delete("/{tenant_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_tenant(tenant_id: TenantId, session: SessionDep) -> Response:
    await service.delete_tenant(session, tenant_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{tenant_id}/connection", responses=NOT_FOUND)
async def show_connection(tenant_id: TenantId, session: SessionDep) -> ConnectionOut:
    tenant = await service.get_tenant(session, tenant_id)
    if tenant.connection is None:
        from erp_sync.errors import NotFound

        raise NotFound(f"tenant {tenant_id!r} has no ERP connection yet")
    return service.connection_out(tenant.connection)


@router.put("/{tenant_id}/connection", responses=NOT_FOUND)
async def set_connection(
    tenant_id: TenantId, data: ConnectionIn, session: SessionDep, rt: RuntimeDep
) -> ConnectionOut:
    box = rt.box if data.credentials is not None else None
    conn = await service.set_connection(session, tenant_id, data, box)
    return service.connection_out(conn)
