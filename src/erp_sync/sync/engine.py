"""Sync one tenant. (The connector-driven engine lands with the sync engine issue; until
then a tenant's sync checks the tenant and its connection and fetches nothing.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from erp_sync.errors import ConfigError, NotFound, PermanentError
from erp_sync.runtime import Runtime
from erp_sync.tenants import service

Progress = Callable[[dict[str, Any]], Awaitable[None]]


async def sync_tenant(
    rt: Runtime,
    tenant_id: str,
    *,
    streams: Sequence[str] | None,
    mode: str,
    progress: Progress,
) -> dict[str, Any]:
    async with rt.unit_of_work() as session:
        try:
            tenant = await service.get_tenant(session, tenant_id)
        except NotFound as exc:
            raise PermanentError(str(exc)) from None
        conn = tenant.connection
        if conn is None:
            raise ConfigError(
                f"tenant {tenant_id} has no ERP connection; "
                "set one with `erp-sync tenants set-connection`."
            )
        if conn.status != "ACTIVE":
            raise ConfigError(
                f"the ERP connection of tenant {tenant_id} is {conn.status}"
                f"{': ' + conn.lastError if conn.lastError else ''}; fix it and set it again."
            )
    await progress({"stage": "done", "streams": list(streams or [])})
    return {"streams": {}}
