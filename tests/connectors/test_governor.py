"""The quota governor on a real Redis: several processes (Governor instances with their
own Redis clients) on one ERP account share one schedule.

What a user would notice: 429s from their ERP (too fast), a sync slower than the ERP
allows, or a sync that keeps hammering an account whose daily quota is used up.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from erp_sync.connectors.base import RateLimits
from erp_sync.connectors.governor import HOLD_RECHECK_S, Governor, acquire_all
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

    async def later() -> float:  # once two reads the hold again
        await asyncio.sleep(HOLD_RECHECK_S)
        return await two.acquire()

    # The one that met the 429 is held at once, the other from its next read of the hold.
    own, other = await asyncio.gather(one.acquire(), later())
    assert 0.9 <= own <= 1.05
    assert 0.9 - HOLD_RECHECK_S <= other <= 1.05 - HOLD_RECHECK_S


async def test_an_account_with_no_limits_reads_the_hold_a_few_times_a_second_not_per_call(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    gov = make(redis, key_prefix, RateLimits())
    before = int((await redis.info("stats"))["total_commands_processed"])
    for _ in range(200):
        await gov.acquire()
    commands = int((await redis.info("stats"))["total_commands_processed"]) - before
    # 200 calls in well under a second: one or two reads of the hold, not 200.
    assert commands < 20
    assert gov.stats.requests == 200


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


# ------------------------------------------------------- several budgets at once


def omie_like(redis: aioredis.Redis, prefix: str, account: str, limits: RateLimits) -> Governor:
    return Governor(redis, prefix=prefix, provider="omie", account=account, limits=limits)


def peak_in_window(times: list[float], window: float) -> int:
    """The most calls in any ``window`` seconds (one starting at each call)."""
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t - start < window) for i, start in enumerate(times))


async def test_acquire_all_keeps_every_budget_within_its_limit_across_processes(
    redis: aioredis.Redis, second_redis: aioredis.Redis, key_prefix: str
) -> None:
    """Omie's shape: one budget for the IP (here 4/s, and evenly 600/min) that every
    method shares, one per method (2/s). Three processes, each with its own Governors,
    call three methods at once, one method twice as often: sometimes the IP is the limit,
    sometimes the method. Taking the budgets one after the other, the first logged a call
    that then waited for the second, and calls left bunched: more than the IP's limit in
    one second."""
    third_redis = aioredis.from_url(REDIS_URL, decode_responses=True, socket_timeout=None)
    ip_limits, method_limits = RateLimits(per_second=4, per_minute=600), RateLimits(per_second=2)
    calls = {"ListarProdutos": 2, "ListarClientes": 1, "ListarPedidos": 1}  # per process
    left: dict[str, list[float]] = {method: [] for method in calls}

    async def process(client: aioredis.Redis) -> None:
        ip = omie_like(client, key_prefix, "ip", ip_limits)
        methods = {m: omie_like(client, key_prefix, f"key:{m}", method_limits) for m in calls}

        async def call(method: str) -> None:
            await acquire_all([ip, methods[method]])
            left[method].append(time.monotonic())

        await asyncio.gather(*(call(m) for m, n in calls.items() for _ in range(n)))
        assert ip.stats.requests == sum(calls.values())

    try:
        started = time.monotonic()
        await asyncio.gather(*(process(c) for c in (redis, second_redis, third_redis)))
        elapsed = time.monotonic() - started
    finally:
        await third_redis.aclose()
    everything = sorted(t for times in left.values() for t in times)
    assert len(everything) == 3 * sum(calls.values())
    # Never above a limit, in any window: 4 a second and 100 ms apart for the IP (less a
    # few ms: our clock reads when each task resumes, not when Redis logged the call)...
    assert peak_in_window(everything, 1.0) == 4
    assert min(b - a for a, b in itertools.pairwise(everything)) >= 0.09
    # ...and 2 a second for each method (the busiest one reaches it).
    for method, times in left.items():
        assert len(times) == 3 * calls[method]
        assert peak_in_window(times, 1.0) <= 2, method
    assert peak_in_window(left["ListarProdutos"], 1.0) == 2
    # 12 calls at 4/s take 2 windows after the first, the busiest method's 6 at 2/s too;
    # 3 if the other methods took the IP's first window (the order is the race's).
    assert elapsed < 3 * 1.03 + 0.8


async def test_a_hold_on_either_budget_stops_acquire_all(
    redis: aioredis.Redis, second_redis: aioredis.Redis, key_prefix: str
) -> None:
    """A 429 seen by another process holds whatever it concerns: the IP holds every
    method, one method's hold holds only that method."""
    limits = RateLimits(per_second=10)
    ip, products, customers = (
        omie_like(redis, key_prefix, account, limits) for account in ("ip", "k:P", "k:C")
    )
    other_ip, other_products = (
        omie_like(second_redis, key_prefix, account, limits) for account in ("ip", "k:P")
    )
    await other_ip.penalize(1.0)
    assert 0.9 <= await acquire_all([ip, products]) <= 1.1
    await other_products.penalize(1.0)
    held, free = await asyncio.gather(acquire_all([ip, products]), acquire_all([ip, customers]))
    assert free == 0
    assert 0.9 <= held <= 1.1
    # The hold only delayed the calls: each budget counted each call once.
    assert (ip.stats.requests, products.stats.requests, customers.stats.requests) == (3, 2, 1)


async def test_acquire_all_a_call_one_daily_quota_refuses_is_counted_by_none(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    ip = omie_like(redis, key_prefix, "ip", RateLimits(per_day=3))
    products = omie_like(redis, key_prefix, "k:P", RateLimits(per_day=1))
    customers = omie_like(redis, key_prefix, "k:C", RateLimits(per_day=5))
    await acquire_all([ip, products])
    with pytest.raises(RateLimited, match="daily request quota") as info:
        await acquire_all([ip, products])
    assert info.value.retry_after is not None and info.value.retry_after > 0
    # The refused call used none of the IP's quota: two more calls fit in it, not one.
    await acquire_all([ip, customers])
    await acquire_all([ip, customers])
    with pytest.raises(RateLimited, match="daily request quota"):
        await acquire_all([ip, customers])
