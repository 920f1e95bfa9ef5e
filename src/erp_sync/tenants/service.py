"""Tenants and their ERP connection. Services flush, never commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from erp_sync.connectors.base import Connector
from erp_sync.connectors.registry import get_connector
from erp_sync.errors import ConfigError, Conflict, Forbidden, Invalid, NotFound
from erp_sync.kit.crypto import Box
from erp_sync.kit.logging import MASK, get_logger, register_secrets_in
from erp_sync.models import ErpConnection, Tenant
from erp_sync.tenants.schemas import (
    ConnectionIn,
    ConnectionOut,
    TenantCreate,
    TenantOut,
    TenantUpdate,
)

log = get_logger(__name__)


def connection_out(conn: ErpConnection) -> ConnectionOut:
    return ConnectionOut(
        provider=conn.provider,
        settings=conn.settings,
        status=conn.status,
        lastError=conn.lastError,
        hasCredentials=conn.credentials is not None,
        updatedAt=conn.updatedAt,
    )


def tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        document=tenant.document,
        active=tenant.active,
        schedule=tenant.schedule,
        createdAt=tenant.createdAt,
        updatedAt=tenant.updatedAt,
        connection=connection_out(tenant.connection) if tenant.connection else None,
    )


def tenant_not_found(tenant_id: str) -> NotFound:
    """The answer for a tenant that does not exist, and for one the caller may not see."""
    return NotFound(f"tenant {tenant_id!r} does not exist")


async def get_tenant(session: AsyncSession, tenant_id: str, *, for_update: bool = False) -> Tenant:
    stmt = select(Tenant).where(Tenant.id == tenant_id).options(selectinload(Tenant.connection))
    if for_update:
        stmt = stmt.with_for_update()
    tenant = (await session.execute(stmt)).scalar_one_or_none()
    if tenant is None:
        raise tenant_not_found(tenant_id)
    return tenant


async def list_tenants(
    session: AsyncSession,
    *,
    limit: int = 100,
    offset: int = 0,
    active: bool | None = None,
    only: str | None = None,
) -> tuple[Sequence[Tenant], int]:
    """A page of tenants and how many match; ``only`` narrows it to one tenant id."""
    stmt = select(Tenant).options(selectinload(Tenant.connection))
    count = select(func.count()).select_from(Tenant)
    if only is not None:
        stmt = stmt.where(Tenant.id == only)
        count = count.where(Tenant.id == only)
    if active is not None:
        stmt = stmt.where(Tenant.active.is_(active))
        count = count.where(Tenant.active.is_(active))
    rows = (
        (
            await session.execute(
                stmt.order_by(Tenant.createdAt, Tenant.id).limit(limit).offset(offset)
            )
        )
        .scalars()
        .all()
    )
    total = (await session.execute(count)).scalar_one()
    return rows, total


async def create_tenant(session: AsyncSession, data: TenantCreate, default_schedule: str) -> Tenant:
    values: dict[str, Any] = {
        "name": data.name,
        "document": data.document,
        "active": data.active,
        "schedule": data.schedule or default_schedule,
    }
    if data.id:
        values["id"] = data.id
        if await session.get(Tenant, data.id) is not None:
            raise Conflict(f"tenant {data.id!r} already exists")
    tenant = Tenant(**values)
    session.add(tenant)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(f"tenant {data.id!r} already exists") from None
    await session.refresh(tenant, attribute_names=["createdAt", "updatedAt", "connection"])
    log.info("tenant.created", tenant_id=tenant.id)
    return tenant


async def update_tenant(session: AsyncSession, tenant_id: str, data: TenantUpdate) -> Tenant:
    tenant = await get_tenant(session, tenant_id, for_update=True)
    changes = data.model_dump(exclude_unset=True)
    for key, value in changes.items():
        if value is None and key != "document":
            continue
        setattr(tenant, key, value)
    await session.flush()
    await session.refresh(tenant, attribute_names=["updatedAt"])
    log.info("tenant.updated", tenant_id=tenant.id, fields=sorted(changes))
    return tenant


async def delete_tenant(session: AsyncSession, tenant_id: str) -> None:
    tenant = await get_tenant(session, tenant_id, for_update=True)
    await session.delete(tenant)
    await session.flush()
    log.info("tenant.deleted", tenant_id=tenant_id)


CREDENTIALS_ONLY = (
    "a tenant token can replace its connection's credentials only; the provider and "
    "settings (where and how fast the service connects) are set by the operator"
)


async def set_connection(
    session: AsyncSession,
    tenant_id: str,
    data: ConnectionIn,
    box: Box | None,
    *,
    credentials_only: bool = False,
) -> ErpConnection:
    """Create or replace the tenant's connection. New credentials reset the status to ACTIVE
    (the operator re-authorised); omitted credentials keep the stored ones.

    ``credentials_only`` (a tenant's own token): the provider and settings must be the
    stored ones. They choose the host the workers call and the pace they keep, so a
    tenant could otherwise point our workers at internal addresses or lift the ERP's
    rate limit; its credentials are its own to rotate."""
    tenant = await get_tenant(session, tenant_id, for_update=True)
    stored = tenant.connection
    if credentials_only and (
        stored is None or stored.provider != data.provider or stored.settings != data.settings
    ):
        raise Forbidden(CREDENTIALS_ONLY)
    try:
        connector = get_connector(data.provider)  # no connection to an ERP no connector speaks
    except ConfigError as exc:
        raise Invalid(str(exc), field="provider") from None
    validate_connection(connector, data)
    conn = tenant.connection
    if conn is None:
        conn = ErpConnection(tenantId=tenant.id, provider=data.provider, settings=data.settings)
        session.add(conn)
    else:
        if conn.provider != data.provider and data.credentials is None:
            conn.credentials = None  # another ERP's credentials mean nothing here
        conn.provider = data.provider
        conn.settings = data.settings
    if data.credentials is not None:
        register_secrets_in(data.credentials)
        assert box is not None, "credentials need the encryption box"
        conn.credentials = box.encrypt_json(data.credentials)
        conn.status = "ACTIVE"
        conn.lastError = None
    await session.flush()
    await session.refresh(conn, attribute_names=["updatedAt", "status"])
    log.info(
        "connection.set",
        tenant_id=tenant.id,
        provider=data.provider,
        credentials_changed=data.credentials is not None,
    )
    return conn


def _first_problem(
    model: type[BaseModel], values: dict[str, Any], what: str, secrets: dict[str, Any] | None
) -> Invalid | None:
    try:
        model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        field = _scrub(".".join([what, *(str(p) for p in err["loc"])]), secrets)
        # A connector's own validator could quote what it refused: never a credential.
        message = _scrub(err["msg"].removeprefix("Value error, "), secrets)
        return Invalid(f"{field}: {message}", field=field)
    return None


def _scrub(text: str, secrets: dict[str, Any] | None) -> str:
    for value in sorted(_strings(secrets), key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def _strings(data: Any) -> list[str]:
    if isinstance(data, str):
        return [data] if len(data) >= 4 else []
    if isinstance(data, dict):
        data = list(data.values())
    if isinstance(data, list | tuple):
        return [s for item in data for s in _strings(item)]
    return []


def validate_connection(connector: type[Connector], data: ConnectionIn) -> None:
    """Refuse settings or credentials the connector would refuse at its first sync, with
    the field at fault (``settings.base_url``) and never a credential's value."""
    checks = [(connector.settings_model, data.settings, "settings")]
    if data.credentials is not None:  # omitted: the stored ones stay, as they were
        checks.append((connector.credentials_model, data.credentials, "credentials"))
    for model, values, what in checks:
        if model is not None and (problem := _first_problem(model, values, what, data.credentials)):
            raise problem
    try:  # the connector's own rules beyond its models, if it has any
        connector.validate_config(data.settings, data.credentials)
    except ConfigError as exc:
        raise Invalid(_scrub(str(exc), data.credentials)) from None


def read_credentials(conn: ErpConnection, box: Box) -> dict[str, object]:
    """Decrypt a connection's credentials and mask them in every later log line."""
    if conn.credentials is None:
        return {}
    creds = box.decrypt_json(conn.credentials)
    register_secrets_in(creds)
    return creds


async def store_credentials(
    session: AsyncSession, conn: ErpConnection, credentials: dict[str, object], box: Box
) -> None:
    """Replace stored credentials (e.g. a rotated OAuth refresh token) before they are used."""
    register_secrets_in(credentials)
    conn.credentials = box.encrypt_json(credentials)
    await session.flush()
