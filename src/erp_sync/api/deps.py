"""Request dependencies: the runtime, bearer auth, the unit of work.

Two kinds of bearer token open ``/api/v1``: the operator's ``API_TOKEN`` (everything)
and a tenant's token (``mxs_...``, see erp_sync.tokens), which sees its own tenant only.
Another tenant's routes answer 404 exactly as an unknown tenant's do, so a tenant token
cannot learn which tenants exist; operator-only routes answer 403.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from erp_sync.errors import Forbidden
from erp_sync.runtime import Runtime
from erp_sync.tenants.schemas import TENANT_ID_PATTERN
from erp_sync.tenants.service import tenant_not_found
from erp_sync.tokens import service as tokens

_bearer = HTTPBearer(
    auto_error=False, description="API_TOKEN (operator), or a tenant's token (mxs_...)"
)
_TENANT_ID = re.compile(TENANT_ID_PATTERN)
UNAUTHORIZED = "missing or wrong bearer token"
OPERATOR_ONLY = "a tenant token cannot do this; it takes the operator's API_TOKEN"
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"description": "operator only: a tenant token is refused"}
}


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the operator (``tenant_id`` None) or one tenant's token."""

    tenant_id: str | None = None
    token_id: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.tenant_id is None

    def sees(self, tenant_id: str) -> bool:
        return self.tenant_id is None or tenant_id == self.tenant_id


def _unauthorized(detail: str = UNAUTHORIZED) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


async def require_token(
    request: Request,
    rt: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    given = credentials.credentials if credentials else ""
    expected = rt.settings.api_token
    if expected is not None and hmac.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    ):
        principal = Principal()
    elif tokens.looks_like_token(given):
        # A short transaction of its own: the lastUsedAt write must not hold the token's
        # row locked for the whole request, nor be lost when the request fails.
        async with rt.unit_of_work() as session:
            token = await tokens.authenticate(session, given)
        if token is None:
            raise _unauthorized()
        principal = Principal(tenant_id=token.tenantId, token_id=token.id)
    elif expected is None:
        raise _unauthorized("API_TOKEN is not configured on the server; set it to use the API.")
    else:
        raise _unauthorized()
    # Every route naming a tenant is checked here, once, before any handler runs. An id
    # that is not a valid tenant id names no tenant; its route answers 422 as usual.
    named = request.path_params.get("tenant_id")
    if isinstance(named, str):
        named = named.strip()
        if _TENANT_ID.fullmatch(named) and not principal.sees(named):
            raise tenant_not_found(named)
    return principal


PrincipalDep = Annotated[Principal, Depends(require_token)]


def require_operator(principal: PrincipalDep) -> Principal:
    if not principal.is_operator:
        raise Forbidden(OPERATOR_ONLY)
    return principal


async def unit_of_work(rt: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with rt.unit_of_work() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(unit_of_work)]
