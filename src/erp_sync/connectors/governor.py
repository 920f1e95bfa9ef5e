"""The quota governor: one rate budget per (provider, ERP account), shared by every worker
process through Redis.

Each request reserves the next free slot on a schedule (GCRA: a "theoretical arrival
time" key advanced by one interval per request), so N workers on one account are spaced
exactly as one well-behaved client would be: no polling, no bursts, no 429s. A 429 or a
Retry-After pushes the schedule back for everyone; a daily quota is counted too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from erp_sync.errors import RateLimited

if TYPE_CHECKING:
    from erp_sync.connectors.base import RateLimits

# Stay a little under the published rate: the ERP counts arrivals, we count departures,
# and loopback or network jitter must not push two requests into one window.
SAFETY = 0.96
MAX_WAIT_MS = 120_000

RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(tat, now)
local wait = slot - now
if wait > tonumber(ARGV[2]) then return {-1, wait} end
local day_limit = tonumber(ARGV[3])
if day_limit > 0 then
  local used = redis.call('INCR', KEYS[2])
  if used == 1 then redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4])) end
  if used > day_limit then return {-2, redis.call('PTTL', KEYS[2])} end
end
if interval > 0 then
  redis.call('SET', KEYS[1], slot + interval, 'PX', wait + interval + 60000)
end
return {wait, 0}
"""

PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > tat then redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 60000) end
return until_ms - now
"""

ACQUIRE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + 1000)
  return 1
end
return 0
"""


def _ms_to_brasilia_midnight() -> int:
    # ERP daily quotas reset at midnight in Brasília (UTC-3, no DST since 2019).
    now = time.time() - 3 * 3600
    return int((86400 - now % 86400) * 1000) + 1000


@dataclass
class GovernorStats:
    requests: int = 0
    waited_seconds: float = 0.0
    penalties: int = 0


class Governor:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        provider: str,
        account: str,
        limits: RateLimits,
    ) -> None:
        self.redis = redis
        self.limits = limits
        # Public so a connector can build sibling budgets on the same Redis and prefix
        # (e.g. Omie's per-method and per-IP limits) without knowing how the engine
        # configured this one.
        self.prefix = prefix
        self.provider = provider
        self.account = account
        base = f"{prefix}:erp-sync:governor:{provider}:{account}"
        self._tat_key = f"{base}:tat"
        self._day_key = f"{base}:day"
        self._slots_key = f"{base}:slots"
        rates = []
        if limits.per_second:
            rates.append(1000.0 / (limits.per_second * SAFETY))
        if limits.per_minute:
            rates.append(60000.0 / (limits.per_minute * SAFETY))
        self.interval_ms = int(max(rates)) + 1 if rates else 0
        self._reserve = redis.register_script(RESERVE)
        self._penalize = redis.register_script(PENALIZE)
        self._acquire_slot = redis.register_script(ACQUIRE_SLOT)
        self.stats = GovernorStats()

    async def acquire(self) -> float:
        """Wait for this account's next request slot; returns the seconds waited."""
        # Even with no published limits the schedule is read: a 429's penalty must hold
        # every worker on the account (one Redis round trip, far below an HTTP call).
        wait_ms, extra = await self._reserve(
            keys=[self._tat_key, self._day_key],
            args=[
                self.interval_ms,
                MAX_WAIT_MS,
                self.limits.per_day or 0,
                _ms_to_brasilia_midnight(),
            ],
        )
        if int(wait_ms) == -2:
            raise RateLimited(
                "the ERP account's daily request quota is used up; the sync resumes after midnight",
                retry_after=int(extra) / 1000,
            )
        if int(wait_ms) == -1:
            raise RateLimited(
                "the ERP account is busy with other syncs for the next minutes; trying later",
                retry_after=int(extra) / 1000,
            )
        waited = int(wait_ms) / 1000
        if waited > 0:
            await asyncio.sleep(waited)
        self.stats.requests += 1
        self.stats.waited_seconds += waited
        return waited

    async def penalize(self, seconds: float) -> None:
        """Hold every worker's next request on this account for ``seconds`` (after a 429
        or a Retry-After)."""
        self.stats.penalties += 1
        await self._penalize(keys=[self._tat_key], args=[max(1, int(seconds * 1000))])

    @contextlib.asynccontextmanager
    async def slot(self, lease_seconds: float = 300) -> AsyncIterator[None]:
        """At most ``limits.concurrency`` calls in flight on this account, across processes."""
        limit = self.limits.concurrency
        if not limit:
            yield
            return
        token = uuid.uuid4().hex
        lease_ms = int(lease_seconds * 1000)
        delay = 0.01
        while not await self._acquire_slot(keys=[self._slots_key], args=[limit, token, lease_ms]):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await self.redis.zrem(self._slots_key, token)
