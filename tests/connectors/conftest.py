"""Connector test fixtures: a real Redis with a key prefix of its own per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL


@pytest.fixture
def key_prefix() -> str:
    return "test-conn-" + uuid.uuid4().hex[:12]


@pytest.fixture
async def redis(key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL, decode_responses=True, socket_timeout=None)
    yield client
    keys = [k async for k in client.scan_iter(f"{key_prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()
