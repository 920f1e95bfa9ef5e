from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from erp_sync.api.deps import RuntimeDep
from erp_sync.health import check_dependencies

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers; touches no dependency")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    summary="Readiness: PostgreSQL and Redis answer",
    responses={503: {"description": "a dependency is down"}},
)
async def ready(rt: RuntimeDep) -> JSONResponse:
    results = await check_dependencies(rt)
    down = [r for r in results if not r.ok]
    body: dict[str, object] = {
        "status": "ok" if not down else "unavailable",
        "checks": {r.name: r.as_dict() for r in results},
    }
    if down:
        body["detail"] = "; ".join(f"{r.name} is down: {r.error}" for r in down)
    return JSONResponse(body, status_code=200 if not down else 503)
