"""Dependency checks shared by `GET /health/ready` and `erp-sync health`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import text

from erp_sync.kit.logging import redact_text
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
        message = " ".join(str(exc).split()) or type(exc).__name__
        return CheckResult(
            name, False, (time.perf_counter() - started) * 1000, redact_text(message)
        )
    return CheckResult(name, True, (time.perf_counter() - started) * 1000)


async def check_dependencies(rt: Runtime) -> list[CheckResult]:
    async def postgres() -> None:
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis() -> None:
        await rt.redis.ping()

    results = await asyncio.gather(_timed("postgres", postgres), _timed("redis", redis))
    return list(results)
