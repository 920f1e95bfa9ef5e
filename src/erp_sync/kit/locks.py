"""A lock shared by every process (Redis), e.g. around an OAuth token refresh."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis


@contextlib.asynccontextmanager
async def redis_lock(
    redis: aioredis.Redis, name: str, *, ttl: float = 60.0, wait: float = 90.0
) -> AsyncIterator[None]:
    """Hold ``name`` while the block runs; the TTL frees it if the holder dies."""
    lock = redis.lock(name, timeout=ttl, blocking_timeout=wait)
    if not await lock.acquire():
        raise TimeoutError(f"could not take the lock {name!r} within {wait:g} s")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await lock.release()
