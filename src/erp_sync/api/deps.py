"""Request dependencies: the runtime, bearer auth, the unit of work."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from erp_sync.runtime import Runtime

_bearer = HTTPBearer(auto_error=False, description="API_TOKEN")


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_token(
    rt: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = rt.settings.api_token
    if expected is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "API_TOKEN is not configured on the server; set it to use the API.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def unit_of_work(rt: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with rt.unit_of_work() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(unit_of_work)]
