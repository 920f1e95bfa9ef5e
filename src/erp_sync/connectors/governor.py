"""The quota governor: one rate budget per (provider, ERP account), shared by every worker
process through Redis.

It keeps the log of the account's recent requests (a sorted set per limit window) and
lets a request leave only when the window behind it holds fewer than the limit: the same
sliding window the ERPs count with, so N workers on one account together never exceed
it, whatever their timing. A request is logged at the moment it leaves, so a worker that
was late (descheduled, slow) does not squeeze the next ones together. Windows get a small
margin for network jitter. A 429 or a Retry-After holds every worker on the account; a
daily quota is counted too.

A call that several budgets count at once (Omie's: one per IP, one per app key and method)
takes them together with ``acquire_all``: one script checks every window of every budget
and logs the call in all of them only if all have room. Taken one after the other, the
first budget would log the call while it still waits for the next, and calls logged evenly
in the first would leave bunched together.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from erp_sync.errors import RateLimited
from erp_sync.kit import metrics

if TYPE_CHECKING:
    from erp_sync.connectors.base import RateLimits

# The ERP counts arrivals, we count departures: a window of ours is this much longer than
# the ERP's, so jitter between departure and arrival never puts one request too many in it.
MARGIN_MS = 30
MARGIN_SHARE = 0.02
MAX_WAIT_MS = 120_000
# An account with no limits at all (a local sandbox, an ERP that publishes none) has only
# the hold to respect: once found clear, it is read again after this long, not before
# every call (that round trip cost an unthrottled sync's worker ~8 % of its CPU). Another
# worker's 429 holds this one at most this much later; this worker's own, at once.
HOLD_RECHECK_S = 0.25

# Room for one call in the windows of one or more budgets (one account's, or all those
# that count the same call, e.g. Omie's per IP and per method), all or nothing: the call
# waits for the longest hold or window of any of them, a daily quota refuses it before
# any budget counts it, and only a call every budget has room for is logged, in every
# window of each (as in flight until ``now + inflight_ms``).
# KEYS: per governor g: hold_g, day_g, log_g_1..log_g_n
# ARGV: member, inflight_ms, then per governor g: n, day_limit, day_ttl, (limit_i, window_i)...
# -> {0, 0, 0} taken | {wait ms, 0, g} | {-2, day ms left, g} (1-based g: whose limit)
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local govs = {}
local k, a = 1, 3
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  govs[#govs + 1] = {k, a, n}
  k = k + 2 + n
  a = a + 3 + 2 * n
end
local wait, who = 0, 0
for g, gov in ipairs(govs) do
  local hold = tonumber(redis.call('GET', KEYS[gov[1]]) or '0')
  if hold - now > wait then wait, who = hold - now, g end
end
if wait > 0 then return {wait, 0, who} end
for g, gov in ipairs(govs) do
  for i = 1, gov[3] do
    local key = KEYS[gov[1] + 1 + i]
    local limit = tonumber(ARGV[gov[2] + 1 + 2 * i])
    local window = tonumber(ARGV[gov[2] + 2 + 2 * i])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    if redis.call('ZCARD', key) >= limit then
      local oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
      local w = oldest + window - now + 1
      if oldest > now then w = 20 end  -- every slot is a call still in flight: look again soon
      if w > wait then wait, who = w, g end
    end
  end
end
if wait > 0 then return {wait, 0, who} end
for g, gov in ipairs(govs) do
  local day_limit = tonumber(ARGV[gov[2] + 1])
  if day_limit > 0 and tonumber(redis.call('GET', KEYS[gov[1] + 1]) or '0') >= day_limit then
    return {-2, redis.call('PTTL', KEYS[gov[1] + 1]), g}
  end
end
local inflight = tonumber(ARGV[2])
for _, gov in ipairs(govs) do
  if tonumber(ARGV[gov[2] + 1]) > 0 then
    local day = KEYS[gov[1] + 1]
    if redis.call('INCR', day) == 1 then redis.call('PEXPIRE', day, tonumber(ARGV[gov[2] + 2])) end
  end
  for i = 1, gov[3] do
    local key = KEYS[gov[1] + 1 + i]
    redis.call('ZADD', key, now + inflight, ARGV[1])
    redis.call('PEXPIRE', key, tonumber(ARGV[gov[2] + 2 + 2 * i]) + inflight + 1000)
  end
end
return {0, 0, 0}
"""

# A request's answer came back: log it at this moment (the ERP counted it before now).
# KEYS: log_1..log_n  ARGV: member
LANDED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', now, ARGV[1]) end
return now
"""
# In-flight entries count until their answer; a worker that died mid-call frees its
# entry after this long (the HTTP layer's deadline for one call).
INFLIGHT_MS = 180_000

PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local hold = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > hold then redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 60000) end
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


def _with_margin(window_ms: float) -> int:
    if window_ms < 1000:  # an even spacing: a share of it is jitter enough
        return math.ceil(window_ms * (1 + 1.5 * MARGIN_SHARE))
    return math.ceil(window_ms + max(MARGIN_MS, window_ms * MARGIN_SHARE))


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
        self._hold_key = f"{base}:hold"
        self._day_key = f"{base}:day"
        self._slots_key = f"{base}:slots"
        # (limit, window ms) pairs: 3/s -> 3 per 1 s; 2.5/s -> 2 per 800 ms; 240/min.
        self.windows: list[tuple[int, float]] = []
        if limits.per_second:
            n = max(1, math.floor(limits.per_second))
            self.windows.append((n, 1000.0 * n / limits.per_second))
        if limits.per_minute:
            # Spread evenly rather than in bursts: ERPs that publish a per-minute limit
            # often count it in shorter slices too (Omie's 960/min is checked every 5 s).
            self.windows.append((1, 60000.0 / limits.per_minute))
        self._log_keys = [f"{base}:log:{i}" for i in range(len(self.windows))]
        self._acquire = redis.register_script(ACQUIRE)
        self._landed = redis.register_script(LANDED)
        self._penalize = redis.register_script(PENALIZE)
        self._acquire_slot = redis.register_script(ACQUIRE_SLOT)
        self._member = f"{uuid.uuid4().hex}:"
        self._seq = itertools.count()
        self.stats = GovernorStats()
        self._unlimited = not self.windows and not limits.per_day
        self._clear_until = 0.0  # monotonic time until which the hold is known clear

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[float]:
        """Around one HTTP call: wait for room in the account's windows, count the call as
        in flight, and log it when its answer is back. The ERP counted the call between
        our departure and its answer, so spacing the next ones from the *answer* keeps
        every window of the ERP's within the limit, whatever the network's jitter."""
        member = f"{self._member}{next(self._seq)}"
        waited = await self._take(member, margin=False, inflight=INFLIGHT_MS)
        try:
            yield waited
        finally:
            if self._log_keys:
                with contextlib.suppress(Exception):
                    await self._landed(keys=self._log_keys, args=[member])

    async def acquire(self) -> float:
        """Wait until this account may send one more request, counted from now (with a
        margin for jitter); returns the seconds waited. Prefer ``request()`` around a call."""
        return await self._take(f"{self._member}{next(self._seq)}", margin=True, inflight=0)

    async def _take(self, member: str, *, margin: bool, inflight: int) -> float:
        # Even with no published limits the hold is read: a 429's penalty must stop every
        # worker on the account (see HOLD_RECHECK_S).
        if self._unlimited and time.monotonic() < self._clear_until:
            self.stats.requests += 1
            return 0.0
        waited = await _take([self], member, margin=margin, inflight=inflight)
        if self._unlimited:
            self._clear_until = time.monotonic() + HOLD_RECHECK_S
        return waited

    def _script_input(self, *, margin: bool, day_ttl: int) -> tuple[list[str], list[int | str]]:
        """This budget's KEYS and ARGV in an ACQUIRE call."""
        args: list[int | str] = [len(self.windows), self.limits.per_day or 0, day_ttl]
        for limit, window in self.windows:
            args += [limit, _with_margin(window) if margin else math.ceil(window)]
        return [self._hold_key, self._day_key, *self._log_keys], args

    async def penalize(self, seconds: float) -> None:
        """Hold every worker's next request on this account for ``seconds`` (after a 429
        or a Retry-After)."""
        self.stats.penalties += 1
        self._clear_until = 0.0
        metrics.ERP_RATE_LIMITED.labels(self.provider).inc()
        await self._penalize(keys=[self._hold_key], args=[max(1, int(seconds * 1000))])

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


async def acquire_all(governors: Sequence[Governor]) -> float:
    """``acquire()`` for one request that every one of ``governors`` counts (e.g. Omie's
    per-IP and per-(app key, method) budgets): wait until all of them have room, then
    count the request in all of them at the same moment, from now (with a margin for
    jitter). Each one's hold and daily quota apply as in ``acquire()``; a request one of
    them refuses is counted by none. Returns the seconds waited. The governors share one
    Redis client: one script call checks and logs them all."""
    if not governors:
        raise ValueError("acquire_all needs at least one governor")
    redis = governors[0].redis
    if any(g.redis is not redis for g in governors):
        raise ValueError("acquire_all: the governors must share one Redis client")
    first = governors[0]
    return await _take(governors, f"{first._member}{next(first._seq)}", margin=True, inflight=0)


async def _take(
    governors: Sequence[Governor], member: str, *, margin: bool, inflight: int
) -> float:
    """One ACQUIRE over ``governors`` (the first one's script and Redis), until taken."""
    keys: list[str] = []
    args: list[int | str] = [member, inflight]
    ttl = _ms_to_brasilia_midnight()
    for gov in governors:
        gov_keys, gov_args = gov._script_input(margin=margin, day_ttl=ttl)
        keys += gov_keys
        args += gov_args
    script = governors[0]._acquire
    return await _wait_for_room(governors, lambda: script(keys=keys, args=args))


async def _wait_for_room(
    governors: Sequence[Governor], attempt: Callable[[], Awaitable[Any]]
) -> float:
    """Run ``attempt`` (an ACQUIRE script) until it takes the request, sleeping the waits it
    returns; RateLimited when a daily quota is used up or the wait would be too long.
    ``attempt`` answers [wait ms, extra, whose (1-based index into ``governors``)]."""
    waited = 0.0
    while True:
        wait_ms, extra, *whose = await attempt()
        wait_ms = int(wait_ms)
        if wait_ms == 0:
            break
        provider = governors[int(whose[0]) - 1 if whose else 0].provider
        if wait_ms == -2:
            metrics.GOVERNOR_REFUSALS.labels(provider, "daily_quota").inc()
            raise RateLimited(
                "the ERP account's daily request quota is used up; the sync resumes after midnight",
                retry_after=int(extra) / 1000,
            )
        if waited * 1000 + wait_ms > MAX_WAIT_MS:
            metrics.GOVERNOR_REFUSALS.labels(provider, "busy").inc()
            raise RateLimited(
                "the ERP account is busy with other syncs for the next minutes; trying later",
                retry_after=wait_ms / 1000,
            )
        await asyncio.sleep(wait_ms / 1000)
        waited += wait_ms / 1000
    for gov in governors:
        gov.stats.requests += 1
        gov.stats.waited_seconds += waited
    metrics.GOVERNOR_WAIT.labels(governors[0].provider).observe(waited)
    return waited
