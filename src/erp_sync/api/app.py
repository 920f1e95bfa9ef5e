"""The FastAPI application factory (`erp-sync api` serves it under uvicorn)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import sqlalchemy.exc as sa_exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from erp_sync import __version__
from erp_sync.admin import routes as admin_routes
from erp_sync.api import health, metrics, problems
from erp_sync.errors import ConfigError, DomainError, ErpSyncError, Invalid
from erp_sync.jobs import routes as job_routes
from erp_sync.jobs.queues import JobQueues
from erp_sync.kit.logging import get_logger
from erp_sync.kit.outages import describe_outage
from erp_sync.runtime import open_runtime
from erp_sync.settings import Settings, get_settings
from erp_sync.status import routes as status_routes
from erp_sync.tenants import routes as tenant_routes
from erp_sync.tokens import routes as token_routes

log = get_logger(__name__)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Never echo the input back: it may hold credentials.
    errors = [
        {
            "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"),
            "message": err.get("msg", ""),
        }
        for err in exc.errors()
    ]
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    return JSONResponse(
        {"detail": f"{first['field']}: {first['message']}", "errors": errors}, status_code=422
    )


def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    body: dict[str, object] = {"detail": str(exc)}
    if isinstance(exc, Invalid) and exc.field:
        body["field"] = exc.field
    return JSONResponse(body, status_code=exc.status_code)


def _service_error(request: Request, exc: Exception) -> JSONResponse:
    # Expected failures of the service itself (misconfiguration, a queue that is down):
    # the operator must fix something, the caller learns what.
    status = 503 if isinstance(exc, ConfigError) or not isinstance(exc, DomainError) else 400
    return JSONResponse({"detail": str(exc)}, status_code=status)


def _outage(request: Request, exc: Exception) -> JSONResponse:
    message = describe_outage(exc)
    if message is None:
        raise exc
    log.warning("request.dependency_down", path=request.url.path, error=message)
    return JSONResponse({"detail": message}, status_code=503)


def _unstorable(request: Request, exc: Exception) -> JSONResponse:
    # PostgreSQL refused a value of the request (a NUL character, a number out of range):
    # the caller's input, not our bug. The value is not echoed: it may be a secret.
    log.info("request.unstorable_value", path=request.url.path, error=type(exc).__name__)
    return JSONResponse(
        {"detail": "a value in the request cannot be stored (a NUL character, or out of range)"},
        status_code=422,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = open_runtime(settings, name="erp-sync-api")
        app.state.queues = JobQueues(settings)
        try:
            yield
        finally:
            await app.state.queues.close()
            await app.state.runtime.close()

    app = FastAPI(
        title="Merxios ERP-Sync",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(ErpSyncError, _service_error)
    for outage in (sa_exc.OperationalError, sa_exc.InterfaceError, RedisError):
        app.add_exception_handler(outage, _outage)
    app.add_exception_handler(sa_exc.DataError, _unstorable)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(tenant_routes.router)
    app.include_router(token_routes.router)
    app.include_router(job_routes.router)
    app.include_router(status_routes.router)
    app.include_router(admin_routes.router)
    app.openapi = problems.openapi_with_problems(app)  # type: ignore[method-assign]
    return app
