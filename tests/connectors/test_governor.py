"""The quota governor on a real Redis: several processes (Governor instances with their
own Redis clients) on one ERP account share one schedule.

What a user would notice: 429s from their ERP (too fast), a sync slower than the ERP
allows, or a sync that keeps hammering an account whose daily quota is used up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from erp_sync.connectors.base import RateLimits
from erp_sync.connectors.governor import Governor
from erp_sync.errors import RateLimited
from tests.conftest import REDIS_URL


@pytest.fixture
async def second_redis() -> AsyncIterator[aioredis.Redis]:
    """Another connection pool: what a second worker process would have."""
    client = aioredis.from_url(REDIS_URL, decode_responses=True, socket_timeout=None)
    yield client
    await client.aclose()


def make(redis: aioredis.Redis, prefix: str, limits: RateLimits, account: str = "acct") -> Governor:
    return Governor(redis, prefix=prefix, provider="bling", account=account, limits=limits)


async def test_concurrent_tasks_in_two_processes_are_spaced(
    redis: aioredis.Redis, second_redis: aioredis.Redis, key_prefix: str
) -> None:
    limits = RateLimits(per_second=3)
    one, two = make(redis, key_prefix, limits), make(second_redis, key_prefix, limits)
    times: list[float] = []

    async def task(gov: Governor) -> None:
        await gov.acquire()
        times.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(task(one if i % 2 else two) for i in range(12)))
    times.sort()
    # The ERP's own rule: never more than 3 requests in any 1-second window...
    for i in range(len(times) - 3):
        assert times[i + 3] - times[i] >= 1.0, (i, times)
    # ...and no slower than needed: 12 requests are 4 windows of 3 (1 s + a 30 ms margin).
    assert times[-1] - started < 3 * 1.03 + 0.3
    assert one.stats.requests + two.stats.requests == 12
    assert one.stats.waited_seconds + two.stats.waited_seconds > 5


async def test_accounts_do_not_share_a_budget(redis: aioredis.Redis, key_prefix: str) -> None:
    limits = RateLimits(per_second=3)
    govs = [make(redis, key_prefix, limits, account=f"a{i}") for i in range(6)]
    waited = await asyncio.gather(*(g.acquire() for g in govs))
    assert max(waited) == 0


async def test_penalize_holds_everyone(
    redis: aioredis.Redis, second_redis: aioredis.Redis, key_prefix: str
) -> None:
    limits = RateLimits(per_second=3)
    one, two = make(redis, key_prefix, limits), make(second_redis, key_prefix, limits)
    await one.penalize(1.5)
    started = time.monotonic()
    waits = await asyncio.gather(two.acquire(), one.acquire(), two.acquire(), one.acquire())
    assert 1.4 <= min(waits) <= 1.6
    # three go when the hold ends, the fourth waits for the window
    assert time.monotonic() - started >= 1.5 + 1.0
    assert one.stats.penalties == 1


async def test_penalize_holds_an_account_with_no_published_limits(
    redis: aioredis.Redis, second_redis: aioredis.Redis, key_prefix: str
) -> None:
    one, two = make(redis, key_prefix, RateLimits()), make(second_redis, key_prefix, RateLimits())
    assert await two.acquire() == 0
    await one.penalize(1.0)
    assert 0.9 <= await two.acquire() <= 1.05


async def test_daily_quota_raises_with_retry_after(
    redis: aioredis.Redis, second_redis: aioredis.Redis, key_prefix: str
) -> None:
    limits = RateLimits(per_day=3)
    one, two = make(redis, key_prefix, limits), make(second_redis, key_prefix, limits)
    await one.acquire()
    await two.acquire()
    await one.acquire()
    with pytest.raises(RateLimited, match="daily request quota") as info:
        await two.acquire()
    # Until the next midnight in Brasília (UTC-03:00).
    brasilia_now = time.time() - 3 * 3600
    to_midnight = 86400 - brasilia_now % 86400
    assert info.value.retry_after is not None
    assert abs(info.value.retry_after - to_midnight) < 5


async def test_a_schedule_too_far_ahead_gives_up_with_retry_after(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    gov = make(redis, key_prefix, RateLimits(per_second=3))
    await gov.penalize(300)
    started = time.monotonic()
    with pytest.raises(RateLimited, match="busy") as info:
        await gov.acquire()
    assert time.monotonic() - started < 1
    assert info.value.retry_after is not None and 295 <= info.value.retry_after <= 300


async def test_slot_bounds_concurrency_across_processes(
    redis: aioredis.Redis, second_redis: aioredis.Redis, key_prefix: str
) -> None:
    limits = RateLimits(concurrency=2)
    one, two = make(redis, key_prefix, limits), make(second_redis, key_prefix, limits)
    inside = 0
    peak = 0

    async def work(gov: Governor) -> None:
        nonlocal inside, peak
        async with gov.slot():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    await asyncio.gather(*(work(one if i % 2 else two) for i in range(8)))
    assert peak == 2
