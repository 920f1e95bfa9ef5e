"""Async SQLAlchemy engine and sessions on psycopg 3."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

PasswordProvider = Callable[[], str | None]


def create_engine(
    url: str,
    password: PasswordProvider | None = None,
    *,
    pool_size: int = 5,
    connect_timeout: int = 5,
    application_name: str = "erp-sync",
) -> AsyncEngine:
    """An engine whose connections ask ``password()`` each time they open, so a rotated
    password file takes effect for new connections without a restart."""
    engine = create_async_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        connect_args={"connect_timeout": connect_timeout, "application_name": application_name},
    )
    if password is not None:

        @event.listens_for(engine.sync_engine, "do_connect")
        def _supply_password(
            dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]
        ) -> None:
            value = password()
            if value:
                cparams["password"] = value

    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
