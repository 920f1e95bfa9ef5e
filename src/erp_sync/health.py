"""Dependency checks shared by `GET /health/ready` and `erp-sync health`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.exceptions as redis_exc
from sqlalchemy import text

from erp_sync.kit.logging import redact_text
from erp_sync.kit.redis import create_redis
from erp_sync.runtime import Runtime

CHECK_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    latency_ms: float
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "status": "up" if self.ok else "down",
            "latencyMs": round(self.latency_ms, 2),
        }
        if self.error:
            out["error"] = self.error
        return out


async def _timed(name: str, probe: Callable[[], Awaitable[object]]) -> CheckResult:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT_S)
    except TimeoutError:
        return CheckResult(
            name,
            False,
            (time.perf_counter() - started) * 1000,
            f"no answer within {CHECK_TIMEOUT_S:g} s",
        )
    except Exception as exc:  # any failure of a dependency is a "down", reported, not raised
        return CheckResult(
            name, False, (time.perf_counter() - started) * 1000, redact_text(_describe(exc))
        )
    return CheckResult(name, True, (time.perf_counter() - started) * 1000)


def _describe(exc: Exception) -> str:
    """One line; a refused password says which secret to look at (runbook section 2)."""
    message = " ".join(str(getattr(exc, "orig", None) or exc).split()) or type(exc).__name__
    if isinstance(exc, redis_exc.AuthenticationError) or message.startswith(
        ("NOAUTH", "WRONGPASS")
    ):
        return (
            f"Redis refused our password ({message}); "
            "REDIS_PASSWORD_FILE must hold the password Redis runs with."
        )
    if "password authentication failed" in message:
        reason = message.split("FATAL:", 1)[-1].strip()
        return (
            f"PostgreSQL refused our password ({reason}); "
            "DATABASE_PASSWORD_FILE must hold the role's current password."
        )
    return message


async def check_dependencies(rt: Runtime) -> list[CheckResult]:
    async def postgres() -> None:
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis() -> None:
        # One fresh connection, no retries: the shared client retries a refused password
        # (it may have just been rotated) until the deadline, and would only say "no answer".
        probe = create_redis(
            rt.settings.redis_url,
            rt.settings.current_redis_password,
            single_connection=True,
            connect_timeout=CHECK_TIMEOUT_S,
            socket_timeout=CHECK_TIMEOUT_S,
            retries=0,
        )
        try:
            await probe.ping()
        finally:
            await probe.aclose()

    results = await asyncio.gather(_timed("postgres", postgres), _timed("redis", redis))
    return list(results)
