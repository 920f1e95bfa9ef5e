"""One Omie call, governed by every rule Omie enforces, across all worker processes.

Omie counts, per (IP, app key, method), 240 calls a minute and 4 in flight; per IP,
960 a minute. It refuses the same call with the same parameters within 60 s of one it
answered ("Consumo redundante"), and an app key that keeps getting faults is blocked for
about 30 minutes ("API bloqueada por consumo indevido", HTTP 425). So, before every
call, in this order (all state in Redis, shared by every worker):

1. **Block marker** (``...:omie:<app key>:blocked``): set when Omie answers a block,
   for the time it states. While it is there no call is sent: ``OmieBlocked``, a
   PermanentError saying until when. The job fails at once and the next scheduled sync
   fails the same way, with no HTTP, until the block ends.
2. **Circuit** (``...:circuit:<method>``): after ``circuit_after`` faults in a row on one
   method (Omie blocks at 10), calls of that method pause (RateLimited, 1 minute,
   doubling up to 30) and then one probe call is let through. A flapping Omie never
   earns us a block.
3. **Redundancy guard** (``...:sent:<hash of method + param>``): a key set with NX for the
   redundancy window (+1 s) when the call is sent. Whoever finds it set (another worker,
   or our own retry) waits until it expires: the same call never reaches Omie twice
   within the window. A call Omie certainly did not process (429, 502, 503) releases its
   key at once, so its retry need not wait; after a timeout or a server fault it may have
   been processed, so the retry waits the window out.
4. **Concurrency** (``erp_sync.connectors.governor``): a slot of the 4 per (app key,
   method), held until the answer is back.
5. **Rate**, with the slot held, right before the call leaves: one budget for the IP
   (960/min, every tenant) and one per (app key, method) (240/min), taken in one step
   (``acquire_all``): the call is logged in both windows at the same moment, only once
   both have room. Taken one after the other, whichever came first logged the call while
   it still waited for the other (or for a slot), so calls it had spaced evenly left
   bunched together and Omie saw more in its window than we had counted.

Then the answer is read once (``mapping.fault_of``): data, "no records" (an empty page,
not an error), or a fault mapped to our taxonomy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from datetime import datetime
from typing import Any

import orjson

from erp_sync.connectors.base import RateLimits
from erp_sync.connectors.governor import MAX_WAIT_MS, Governor, acquire_all
from erp_sync.connectors.http import ErpHttp, ErpResponse, parse_retry_after
from erp_sync.connectors.omie.cursor import BRASILIA
from erp_sync.connectors.omie.mapping import Fault, FaultKind, describe_error, fault_of
from erp_sync.errors import (
    ConfigError,
    ContractError,
    PermanentError,
    RateLimited,
    RetryableError,
    UpstreamUnavailable,
)

# Statuses we read ourselves: Omie's faults (500), its block (425), its throttle (429)
# and the gateway's 502/503/504 (whether Omie processed the call differs between them).
OWN_STATUSES = (425, 429, 500, 502, 503, 504)
NOT_PROCESSED = (429, 502, 503)
DEFAULT_BLOCK_S = 1800.0
# The slot is held while the rate budgets are waited for (at most MAX_WAIT_MS) and
# during the call (the HTTP layer's deadline: 180 s).
SLOT_LEASE_S = MAX_WAIT_MS / 1000 + 200.0
MAX_BACKOFF_S = 10.0
CIRCUIT_BASE_S = 60.0
CIRCUIT_MAX_S = 1800.0
STREAK_TTL_MS = 3_600_000

# KEYS: block, circuit, sent, streak, probe.  ARGV: token, ttl ms, circuit threshold.
# -> {-1, ms left, why} blocked | {-2, ms left, why} circuit open | {1} reserved | {0, ms left}
# Once a circuit's pause is over, one caller at a time probes (the streak is still high).
RESERVE = """
local left = redis.call('PTTL', KEYS[1])
if left > 0 then return {-1, left, redis.call('GET', KEYS[1]) or ''} end
left = redis.call('PTTL', KEYS[2])
if left > 0 then return {-2, left, redis.call('GET', KEYS[2]) or ''} end
if tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[3]) then
  if not redis.call('SET', KEYS[5], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {-2, redis.call('PTTL', KEYS[5]), 'another worker is probing'}
  end
end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, 0, ''} end
left = redis.call('PTTL', KEYS[3])
if left < 0 then left = 10 end
return {0, left, ''}
"""

# Restart our reservation's window now (the call leaves now); 0 if someone else holds it.
REFRESH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: streak, circuit.  ARGV: threshold, base ms, max ms, streak ttl ms, why.
FAULT = """
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local over = n - tonumber(ARGV[1])
if over >= 0 then
  local ms = math.min(tonumber(ARGV[2]) * (2 ^ math.min(over, 20)), tonumber(ARGV[3]))
  redis.call('SET', KEYS[2], ARGV[5], 'PX', math.floor(ms))
end
return n
"""


class _LostTurn(Exception):
    """Internal: the reservation was taken over before the call left; reserve again."""


class OmieBlocked(PermanentError):
    """Omie blocked the app key ("API bloqueada por consumo indevido"). Permanent for
    this job: retrying inside the block only prolongs it; the connection stays active and
    the first sync after ``blocked_until`` goes on."""

    def __init__(self, message: str, blocked_for: float, blocked_until: datetime) -> None:
        super().__init__(message)
        self.blocked_for = blocked_for
        self.blocked_until = blocked_until


def blocked_message(seconds: float, why: str) -> OmieBlocked:
    until = datetime.fromtimestamp(time.time() + seconds, BRASILIA).replace(microsecond=0)
    minutes = max(1, round(seconds / 60))
    return OmieBlocked(
        f"Omie blocked this connection's app key for misuse "
        f"({why.strip() or 'API bloqueada por consumo indevido'}); "
        f"no call is sent to Omie until {until:%Y-%m-%d %H:%M:%S} Brasília time "
        f"(about {minutes} min from now), and the first sync after that continues where "
        "this one stopped",
        blocked_for=seconds,
        blocked_until=until,
    )


class OmieClient:
    def __init__(
        self,
        http: ErpHttp,
        governor: Governor,
        *,
        app_key: str,
        app_secret: str,
        method_limits: RateLimits,
        ip_limits: RateLimits,
        redundant_window_s: float,
        attempts: int,
        circuit_after: int,
        log: Any = None,
    ) -> None:
        self.http = http
        self.redis = governor.redis
        self.prefix = governor.prefix
        self.app_key = app_key
        self._secret = app_secret
        self.method_limits = method_limits
        self.redundant_window_s = redundant_window_s
        self.attempts = attempts
        self.circuit_after = circuit_after
        self.log = log
        self._base = f"{self.prefix}:erp-sync:omie:{app_key}"
        self._ip = Governor(
            self.redis, prefix=self.prefix, provider="omie", account="ip", limits=ip_limits
        )
        self._methods: dict[str, Governor] = {}
        self._reserve = self.redis.register_script(RESERVE)
        self._refresh = self.redis.register_script(REFRESH)
        self._release = self.redis.register_script(RELEASE)
        self._fault = self.redis.register_script(FAULT)
        # What this client saw, for tests and logs.
        self.sent = 0
        self.redundant_faults = 0

    def method_governor(self, call: str) -> Governor:
        governor = self._methods.get(call)
        if governor is None:
            governor = self._methods[call] = Governor(
                self.redis,
                prefix=self.prefix,
                provider="omie",
                account=f"{self.app_key}:{call}",
                limits=self.method_limits,
            )
        return governor

    def _emit(self, event: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.warning(event, **fields)

    async def page_size(self, call: str, largest: int) -> int:
        """A page size for a new read of ``call``: ``largest`` minus a per-read offset
        taken from a shared counter, so two reads of the same list (by any workers,
        within the redundancy window) never send the same body."""
        spread = max(1, min(50, largest // 2))
        key = f"{self._base}:reads:{call}"
        n = int(await self.redis.incr(key))
        if n == 1:
            await self.redis.expire(key, 86_400)
        return max(1, largest - (n % spread))

    # ------------------------------------------------------------------------ call

    async def call(self, service: str, call: str, param: dict[str, Any]) -> dict[str, Any] | None:
        """Omie's answer to ``call`` (a dict), or None for "no records" (an empty page)."""
        digest = hashlib.sha256(
            f"{service}|{call}|".encode() + orjson.dumps(param, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()[:32]
        sent_key = f"{self._base}:sent:{digest}"
        body = {"call": call, "app_key": self.app_key, "app_secret": self._secret, "param": [param]}
        window_ms = int(self.redundant_window_s * 1000) + 1000
        last: RetryableError | None = None
        for attempt in range(1, self.attempts + 1):
            while True:
                token = uuid.uuid4().hex
                await self._wait_for_turn(call, sent_key, token, window_ms)
                try:
                    resp = await self._send(service, call, sent_key, token, window_ms, body)
                except _LostTurn:
                    continue
                except RateLimited:
                    raise
                except RetryableError as exc:
                    # Timeouts, resets: Omie may have processed it. The reservation stays,
                    # so the retry waits the redundancy window out.
                    resp, last = None, exc
                break
            if resp is None:
                continue
            result, wait, error = await self._outcome(resp, service, call, sent_key, token, attempt)
            if error is None:
                return result
            last = error
            if attempt < self.attempts and wait > 0:
                await asyncio.sleep(wait)
        assert last is not None
        raise last

    async def _wait_for_turn(self, call: str, sent_key: str, token: str, window_ms: int) -> None:
        keys = [
            f"{self._base}:blocked",
            f"{self._base}:circuit:{call}",
            sent_key,
            f"{self._base}:streak:{call}",
            f"{self._base}:probe:{call}",
        ]
        deadline = time.monotonic() + window_ms / 1000 + 30
        while True:
            state, left_ms, why = await self._reserve(
                keys=keys, args=[token, window_ms, self.circuit_after]
            )
            state, left = int(state), int(left_ms) / 1000
            if state == 1:
                return
            if state == -1:
                raise blocked_message(left, str(why))
            if state == -2:
                raise RateLimited(
                    f"Omie answered {call} with faults several times in a row "
                    f"(last: {why}); pausing {call} for {left:.0f} s so that Omie does not "
                    "block the app key",
                    retry_after=left,
                )
            if time.monotonic() > deadline:  # pragma: no cover - a key without expiry
                raise RateLimited(
                    f"the same Omie {call} call is still reserved by another worker",
                    retry_after=left,
                )
            # The same call left less than the redundancy window ago: wait it out.
            await asyncio.sleep(min(left, window_ms / 1000) + 0.05)

    async def _send(
        self,
        service: str,
        call: str,
        sent_key: str,
        token: str,
        window_ms: int,
        body: dict[str, Any],
    ) -> ErpResponse:
        governor = self.method_governor(call)
        leaving = False
        try:
            async with governor.slot(lease_seconds=SLOT_LEASE_S):
                # Last before the call leaves, both budgets at once: nothing waits between
                # the moment they log the call and its departure.
                await acquire_all([self._ip, governor])
                # The window starts when the call leaves, not when it was reserved.
                if not await self._refresh(keys=[sent_key], args=[token, window_ms]):
                    # Our reservation expired while the governor held us and another
                    # worker took the same call: it is theirs; ours waits its turn.
                    raise _LostTurn
                leaving = True
                self.sent += 1
                return await self.http.send_once(
                    "POST", f"/{service}/", governed=False, ok=OWN_STATUSES, json=body
                )
        except BaseException:
            if not leaving:
                # Nothing was sent (the governor said "later", or the read was closed
                # while this page waited): free the call for whoever asks it next.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._release(keys=[sent_key], args=[token]))
            raise

    async def _outcome(
        self, resp: ErpResponse, service: str, call: str, sent_key: str, token: str, attempt: int
    ) -> tuple[dict[str, Any] | None, float, RetryableError | None]:
        """(result, seconds to wait before retrying, error to retry on)."""
        where = f"Omie answered {call} ({service}) with HTTP {resp.status}"
        if resp.status in NOT_PROCESSED:
            await self._release(keys=[sent_key], args=[token])
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            detail = describe_error(resp)
            if resp.status == 429:
                await self.method_governor(call).penalize(retry_after or 1.0)
                await self._count_fault(call, detail)
                return None, retry_after or 1.0, RateLimited(f"{where}: {detail}", retry_after)
            backoff = retry_after if retry_after is not None else 0.5 * 2 ** (attempt - 1)
            return (
                None,
                min(backoff, MAX_BACKOFF_S),
                UpstreamUnavailable(f"{where}: {detail}", retry_after=retry_after),
            )
        try:
            body = resp.json()
        except ContractError:
            if resp.status == 200:
                raise
            body = None  # a proxy's page instead of Omie's answer
        fault = fault_of(body, resp.status)
        if fault is None and resp.status != 200:
            # 504, or a 500 that is not Omie's: Omie may have processed the call, so the
            # retry waits the redundancy window out.
            return None, 0.0, UpstreamUnavailable(f"{where}: {describe_error(resp)}")
        if fault is None:
            if not isinstance(body, dict):
                raise ContractError(f"{where} and a body that is neither data nor a fault")
            await self.redis.delete(f"{self._base}:streak:{call}")
            return body, 0.0, None
        return await self._on_fault(fault, where, call, sent_key)

    async def _on_fault(
        self, fault: Fault, where: str, call: str, sent_key: str
    ) -> tuple[dict[str, Any] | None, float, RetryableError | None]:
        kind, detail = fault.kind, fault.describe()
        if kind is FaultKind.NO_RECORDS:
            await self.redis.delete(f"{self._base}:streak:{call}")
            return None, 0.0, None
        if kind is FaultKind.BLOCKED:
            seconds = fault.wait_s or DEFAULT_BLOCK_S
            await self.redis.set(f"{self._base}:blocked", fault.text, px=int(seconds * 1000))
            self._emit("omie.blocked", call=call, seconds=seconds, fault=detail)
            raise blocked_message(seconds, fault.text)
        if kind is FaultKind.BAD_KEY:
            raise ConfigError(
                f"{where}: {detail}; Omie refused the app_key/app_secret, check the "
                "connection's credentials"
            )
        await self._count_fault(call, detail)
        if kind is FaultKind.REFUSED:
            raise ContractError(f"{where}: {detail}")
        if kind is FaultKind.REDUNDANT:
            # The guard exists so that this never happens; if it does (another program on
            # the same app key?), hold the call for as long as Omie says.
            self.redundant_faults += 1
            self._emit("omie.redundant", call=call, fault=detail)
            wait = fault.wait_s or self.redundant_window_s
            await self.redis.set(sent_key, "omie", px=int((wait + 1) * 1000))
        # BUSY, SERVER, REDUNDANT: Omie saw the call; the retry waits the window out.
        return None, 0.0, UpstreamUnavailable(f"{where}: {detail}")

    async def _count_fault(self, call: str, detail: str) -> None:
        streak = await self._fault(
            keys=[f"{self._base}:streak:{call}", f"{self._base}:circuit:{call}"],
            args=[
                self.circuit_after,
                int(CIRCUIT_BASE_S * 1000),
                int(CIRCUIT_MAX_S * 1000),
                STREAK_TTL_MS,
                detail[:300],
            ],
        )
        if int(streak) >= self.circuit_after:
            self._emit("omie.circuit_open", call=call, faults_in_a_row=int(streak), fault=detail)
