"""Producing jobs and controlling queues (pause, resume, counts), with bounded waits.

BullMQ's producer calls can hang for minutes when Redis refuses our password, so every
call here has a timeout and turns Redis trouble into one sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis
from bullmq import Job, Queue
from pydantic import BaseModel, Field

from erp_sync.errors import ErpSyncError, Invalid
from erp_sync.jobs.connection import connection_opts
from erp_sync.jobs.names import (
    BACKOFF_TYPE,
    MAINTENANCE_QUEUE,
    PRUNE_JOB,
    QUEUES,
    SYNC_JOB,
    SYNC_QUEUE,
    dedup_id,
)
from erp_sync.kit.outages import describe_outage
from erp_sync.settings import Settings

T = TypeVar("T")
REDIS_CALL_TIMEOUT_S = 5.0
STREAMS = ("products", "stock_levels", "customers", "sales_orders")
Trigger = Literal["cron", "manual", "api"]


class QueueUnavailable(ErpSyncError):
    """Redis did not answer a queue operation."""


class SyncJobData(BaseModel):
    """What a `sync-tenant` job carries. Never a secret: job data is readable in Redis."""

    tenantId: str = Field(min_length=1, max_length=64)
    streams: list[Literal["products", "stock_levels", "customers", "sales_orders"]] | None = None
    mode: Literal["incremental", "full"] = "incremental"
    trigger: Trigger = "manual"


def job_options(settings: Settings) -> dict[str, Any]:
    return {
        "attempts": settings.job_attempts,
        "backoff": {"type": BACKOFF_TYPE, "delay": settings.job_backoff_ms},
        # Bounded history in Redis; the JobRun table keeps the long one.
        "removeOnComplete": {"count": 1000, "age": 7 * 24 * 3600},
        "removeOnFail": {"count": 5000, "age": 30 * 24 * 3600},
    }


async def diagnose_redis(settings: Settings) -> str | None:
    """Why Redis is not answering, asked with one plain connection and no retries."""
    client = aioredis.from_url(
        settings.redis_url,
        password=settings.current_redis_password(),
        socket_connect_timeout=2,
        socket_timeout=2,
        retry=None,
    )
    try:
        await client.ping()
    except Exception as exc:
        return describe_outage(exc)
    finally:
        await client.aclose()
    return None


async def bounded(
    call: Awaitable[T],
    what: str,
    timeout: float = REDIS_CALL_TIMEOUT_S,
    settings: Settings | None = None,
) -> T:
    try:
        return await asyncio.wait_for(call, timeout)
    except TimeoutError:
        reason = await diagnose_redis(settings) if settings is not None else None
        if reason:
            raise QueueUnavailable(f"{what} failed: {reason}") from None
        raise QueueUnavailable(
            f"Redis did not answer within {timeout:g} s while {what}; "
            "check that it runs and that REDIS_URL / REDIS_PASSWORD are right."
        ) from None
    except ErpSyncError:
        raise
    except Exception as exc:
        message = describe_outage(exc)
        if message is None:
            raise
        raise QueueUnavailable(f"{what} failed: {message}") from None


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    created: bool  # False: collapsed into a sync of this tenant already waiting or running

    def describe(self, tenant_id: str) -> str:
        if self.created:
            return f"queued sync of tenant {tenant_id} as job {self.job_id}"
        return (
            f"a sync of tenant {tenant_id} is already queued or running (job {self.job_id}); "
            "this request joined it"
        )


class JobQueues:
    """The service's queues as a producer sees them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        opts = {"connection": connection_opts(settings), "prefix": settings.queue_prefix}
        self.queues: dict[str, Queue] = {name: Queue(name, opts) for name in QUEUES}

    @property
    def sync(self) -> Queue:
        return self.queues[SYNC_QUEUE]

    @property
    def maintenance(self) -> Queue:
        return self.queues[MAINTENANCE_QUEUE]

    def get(self, name: str) -> Queue:
        try:
            return self.queues[name]
        except KeyError:
            raise Invalid(
                f"unknown queue {name!r}; the queues are {', '.join(QUEUES)}", field="queue"
            ) from None

    async def call(self, coro: Awaitable[T], what: str) -> T:
        return await bounded(coro, what, settings=self.settings)

    async def close(self) -> None:
        for q in self.queues.values():
            with contextlib.suppress(Exception):
                await q.close()

    async def enqueue_sync(self, data: SyncJobData) -> Enqueued:
        proposed = f"sync-{data.tenantId}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:6]}"
        opts = {
            **job_options(self.settings),
            "jobId": proposed,
            "deduplication": {"id": dedup_id(data.tenantId)},
        }
        job = await self.call(
            self.sync.add(SYNC_JOB, data.model_dump(exclude_none=True), opts),
            f"queueing a sync of tenant {data.tenantId}",
        )
        return Enqueued(job_id=str(job.id), created=str(job.id) == proposed)

    async def enqueue_continuation(self, data: SyncJobData, previous_job_id: str) -> str:
        """Queue the rest of a sync whose job used up its time budget. Not deduplicated
        (the running job still holds the tenant's key); the key is then pointed at the
        continuation, so triggers arriving meanwhile join it."""
        job_id = f"sync-{data.tenantId}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:6]}"
        job = await self.call(
            self.sync.add(
                SYNC_JOB,
                data.model_dump(exclude_none=True),
                {**job_options(self.settings), "jobId": job_id},
            ),
            f"queueing the continuation of job {previous_job_id}",
        )
        key = f"{self.settings.queue_prefix}:{SYNC_QUEUE}:de:{dedup_id(data.tenantId)}"
        await self.call(
            self.sync.redisConnection.conn.set(key, str(job.id)), "handing over the tenant"
        )
        return str(job.id)

    async def enqueue_prune(self, days: int | None = None) -> str:
        data: dict[str, Any] = {"trigger": "manual"}
        if days is not None:
            data["days"] = days
        job = await self.call(
            self.maintenance.add(PRUNE_JOB, data, job_options(self.settings)), "queueing a prune"
        )
        return str(job.id)

    async def get_job(self, queue: str, job_id: str) -> Job | None:
        result: Job | None = await self.call(
            Job.fromId(self.get(queue), job_id), f"reading job {job_id}"
        )
        return result

    async def job_state(self, queue: str, job_id: str) -> str:
        return str(await self.call(self.get(queue).getJobState(job_id), f"reading job {job_id}"))

    async def pause(self, name: str) -> None:
        await self.call(self.get(name).pause(), f"pausing queue {name}")

    async def resume(self, name: str) -> None:
        await self.call(self.get(name).resume(), f"resuming queue {name}")

    async def status(self) -> list[dict[str, Any]]:
        out = []
        for name, q in self.queues.items():
            counts = await self.call(
                q.getJobCounts(
                    "waiting", "active", "delayed", "prioritized", "completed", "failed", "paused"
                ),
                f"counting jobs of queue {name}",
            )
            paused = await self.call(q.isPaused(), f"reading queue {name}")
            # A paused queue keeps its waiting jobs in the "paused" list.
            counts["waiting"] = int(counts.get("waiting", 0)) + int(counts.pop("paused", 0))
            out.append({"queue": name, "paused": bool(paused), "counts": counts})
        return out


@contextlib.asynccontextmanager
async def open_queues(settings: Settings) -> AsyncIterator[JobQueues]:
    queues = JobQueues(settings)
    try:
        yield queues
    finally:
        await queues.close()
