"""Managing tenant tokens: the operator's (a tenant token cannot mint or see tokens)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Response, status

from erp_sync.api.deps import FORBIDDEN, SessionDep, require_operator, require_token
from erp_sync.tenants.schemas import TenantId
from erp_sync.tenants.service import get_tenant
from erp_sync.tokens import service
from erp_sync.tokens.schemas import TokenCreate, TokenCreated, TokenList

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "unknown tenant or token"}}

router = APIRouter(
    prefix="/api/v1/tenants/{tenant_id}/tokens",
    tags=["tokens"],
    dependencies=[Depends(require_token), Depends(require_operator)],
    responses={**NOT_FOUND, **FORBIDDEN},
)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_token(
    tenant_id: TenantId, data: TokenCreate, session: SessionDep, response: Response
) -> TokenCreated:
    """A new token for the tenant. The answer holds the token itself, this once: only its
    SHA-256 is stored, so a lost token is revoked and replaced, never shown again."""
    response.headers["Cache-Control"] = "no-store"
    return await service.create_token(session, tenant_id, data)


@router.get("")
async def list_tokens(tenant_id: TenantId, session: SessionDep) -> TokenList:
    """The tenant's tokens, revoked and expired ones included, oldest first; never the
    tokens themselves nor their hashes."""
    return TokenList(
        items=[service.token_out(t) for t in await service.list_tokens(session, tenant_id)]
    )


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_token(tenant_id: TenantId, token_id: uuid.UUID, session: SessionDep) -> Response:
    """Revoke a token: requests with it get 401 from now on. Revoking twice is harmless."""
    await get_tenant(session, tenant_id)
    await service.revoke_token(session, str(token_id), tenant_id=tenant_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
