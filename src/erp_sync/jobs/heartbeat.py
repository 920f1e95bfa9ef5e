"""Worker heartbeats: a Redis key per live worker, with a TTL.

Bull Board cannot list Python workers, so the API, CLI and admin page read these keys.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import orjson
import redis.asyncio as aioredis


def _key(prefix: str, worker_id: str = "*") -> str:
    return f"{prefix}:erp-sync:worker:{worker_id}"


async def beat(
    redis: aioredis.Redis,
    prefix: str,
    worker_id: str,
    *,
    ttl: int,
    queues: list[str],
    concurrency: int,
    started_at: float,
    running: list[str],
) -> None:
    info = {
        "id": worker_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "queues": queues,
        "concurrency": concurrency,
        "startedAt": started_at,
        "lastBeat": time.time(),
        "running": running,
    }
    await redis.set(_key(prefix, worker_id), orjson.dumps(info).decode(), ex=ttl)


async def forget(redis: aioredis.Redis, prefix: str, worker_id: str) -> None:
    await redis.delete(_key(prefix, worker_id))


async def live_workers(redis: aioredis.Redis, prefix: str) -> list[dict[str, Any]]:
    keys = [k async for k in redis.scan_iter(_key(prefix), count=500)]
    if not keys:
        return []
    values = await redis.mget(keys)
    workers = [orjson.loads(v) for v in values if v]
    return sorted(workers, key=lambda w: (w.get("host", ""), w.get("startedAt", 0)))
