"""What every entry point (API, CLI, worker) opens once: engine, sessions, Redis, crypto."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from erp_sync.errors import ConfigError
from erp_sync.kit.crypto import Box, CryptoError
from erp_sync.kit.db import create_engine, session_factory
from erp_sync.kit.redis import create_redis
from erp_sync.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: aioredis.Redis
    _box: Box | None = field(default=None, repr=False)

    @property
    def box(self) -> Box:
        """The credentials box; a clear error when no ENCRYPTION_KEY is configured."""
        if self._box is None:
            key = self.settings.encryption_key
            if key is None:
                raise ConfigError(
                    "ENCRYPTION_KEY is not set, so ERP credentials cannot be stored or read; "
                    "generate one with `erp-sync keygen` and set ENCRYPTION_KEY."
                )
            try:
                self._box = Box(key.get_secret_value())
            except CryptoError as exc:
                raise ConfigError(str(exc)) from None
        return self._box

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed once on success, rolled back on any error."""
        async with self.sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    async def close(self) -> None:
        await self.redis.aclose()
        await self.engine.dispose()


def open_runtime(settings: Settings, *, name: str = "erp-sync") -> Runtime:
    engine = create_engine(
        settings.sqlalchemy_url(),
        password=lambda: settings.current_database_password() or settings.url_password(),
        application_name=name,
    )
    redis = create_redis(settings.redis_url, settings.current_redis_password, client_name=name)
    return Runtime(settings, engine, session_factory(engine), redis)


@contextlib.asynccontextmanager
async def runtime(settings: Settings, *, name: str = "erp-sync") -> AsyncIterator[Runtime]:
    rt = open_runtime(settings, name=name)
    try:
        yield rt
    finally:
        await rt.close()
