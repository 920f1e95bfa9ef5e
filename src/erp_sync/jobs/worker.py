"""`erp-sync worker`: BullMQ workers for the sync and maintenance queues.

Each attempt of each job writes a "JobRun" row (RUNNING, then COMPLETED or FAILED).
Retryable errors go back to BullMQ with capped exponential backoff (or the ERP's
Retry-After); permanent ones fail at once. SIGTERM stops taking jobs and lets running
ones finish within WORKER_GRACE_SECONDS. A worker that dies is noticed twice: BullMQ's
stalled-job check hands its job to another worker, and the heartbeat reaper closes its
RUNNING rows as 'worker lost'.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from bullmq import Job, Worker
from bullmq.custom_errors import UnrecoverableError
from pydantic import ValidationError

from erp_sync.errors import ConfigError, ErpSyncError, PermanentError, RetryableError
from erp_sync.jobs import heartbeat, runs
from erp_sync.jobs.connection import connection_opts
from erp_sync.jobs.names import (
    MAINTENANCE_QUEUE,
    PRUNE_JOB,
    QUEUES,
    SYNC_JOB,
    SYNC_QUEUE,
    dedup_id,
)
from erp_sync.jobs.prune import prune_job_runs
from erp_sync.jobs.queues import JobQueues, SyncJobData
from erp_sync.kit import metrics
from erp_sync.kit.logging import bound_contextvars, get_logger, redact_text
from erp_sync.kit.outages import describe_outage
from erp_sync.models import Tenant
from erp_sync.runtime import Runtime, open_runtime
from erp_sync.settings import Settings
from erp_sync.status.service import pause_if_failing
from erp_sync.sync.engine import sync_tenant

log = get_logger(__name__)
# How long a stop waits for cancelled jobs to record how they ended.
ABANDONED_BOOKKEEPING_S = 5.0


@dataclass
class JobContext:
    rt: Runtime
    job: Job
    queue: str
    run_id: int
    attempt: int
    data: dict[str, Any]
    producer: JobQueues

    async def progress(self, value: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # progress is informative; never fail a job on it
            await self.job.updateProgress(value)


Handler = Callable[[JobContext], Awaitable[dict[str, Any] | None]]


async def handle_sync(ctx: JobContext) -> dict[str, Any] | None:
    data = SyncJobData.model_validate(ctx.data)
    result = await sync_tenant(
        ctx.rt, data.tenantId, streams=data.streams, mode=data.mode, progress=ctx.progress
    )
    left = result.get("continues")
    if left:
        # Time budget used up: the rest goes to the back of the queue, behind the other
        # tenants, and later triggers for this tenant join it.
        follow = data.model_copy(update={"streams": left})
        result["continuation"] = await ctx.producer.enqueue_continuation(follow, str(ctx.job.id))
    return result


async def handle_prune(ctx: JobContext) -> dict[str, Any] | None:
    days = ctx.data.get("days")
    removed = await prune_job_runs(ctx.rt, int(days) if days is not None else None)
    return {"removed": removed}


DEFAULT_HANDLERS: dict[tuple[str, str], Handler] = {
    (SYNC_QUEUE, SYNC_JOB): handle_sync,
    (MAINTENANCE_QUEUE, PRUNE_JOB): handle_prune,
}

# Claims the tenant's dedup key for this job unless another live job holds it: cron jobs
# (made by job schedulers) and jobs from other producers do not pass BullMQ's dedup check.
CLAIM_TENANT = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. cur) == 1
   and redis.call('HEXISTS', ARGV[2] .. cur, 'finishedOn') == 0 then
  return cur
end
redis.call('SET', KEYS[1], ARGV[1])
return false
"""
RELEASE_TENANT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _cause(exc: BaseException) -> BaseException | None:
    """What BullMQ may keep of a failure. It stores str(error) as the job's failedReason
    and the formatted chain as its stacktrace, in Redis and on Bull Board: jobs fail with
    the redacted sentence, chained to the original only when its message is ours (an
    ERP's answer, or job data, may echo a credential)."""
    return None if isinstance(exc, ErpSyncError | ValidationError) else exc


def backoff_ms(settings: Settings, attempts_made: int, err: BaseException | None) -> int:
    """Capped exponential with ±20 % jitter, or the ERP's Retry-After when it gave one."""
    cap = settings.job_backoff_max_ms
    retry_after = getattr(err, "retry_after", None)
    if retry_after is not None:
        return int(min(cap, max(1000.0, float(retry_after) * 1000)))
    base = settings.job_backoff_ms * (2 ** max(0, attempts_made - 1))
    return int(min(cap, base) * random.uniform(0.8, 1.2))


def error_text(exc: BaseException) -> str:
    if isinstance(exc, ErpSyncError):
        text = str(exc)
    else:
        text = describe_outage(exc) or f"internal error: {type(exc).__name__}: {exc}"
    return redact_text(text or type(exc).__name__)


@dataclass
class WorkerService:
    settings: Settings
    handlers: dict[tuple[str, str], Handler] = field(default_factory=lambda: dict(DEFAULT_HANDLERS))
    queues: tuple[str, ...] = QUEUES
    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        self.rt = open_runtime(self.settings, name="erp-sync-worker")
        self.producer = JobQueues(self.settings)
        self.workers: dict[str, Worker] = {}
        self.running: dict[str, str] = {}  # BullMQ job id -> queue
        self.started_at = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        # Outcomes that could not be written (PostgreSQL down): written once it is back,
        # before anything could close those rows as 'worker lost'.
        self._unclosed: dict[int, tuple[str, str | None, dict[str, Any] | None]] = {}
        self._claim = self.rt.redis.register_script(CLAIM_TENANT)
        self._release = self.rt.redis.register_script(RELEASE_TENANT)

    # -- processing ---------------------------------------------------------------------

    def _processor(self, queue: str) -> Callable[[Job, str], Awaitable[Any]]:
        async def process(job: Job, token: str) -> Any:
            return await self.process(queue, job)

        return process

    async def process(self, queue: str, job: Job) -> Any:
        handler = self.handlers.get((queue, job.name))
        if handler is None:
            raise UnrecoverableError(f"no handler for job {job.name!r} in queue {queue!r}")
        data = job.data if isinstance(job.data, dict) else {}
        tenant_id = data.get("tenantId") if isinstance(data.get("tenantId"), str) else None
        job_id = str(job.id)
        if queue == SYNC_QUEUE and tenant_id:
            holder = await self._claim(
                keys=[self._dedup_key(tenant_id)],
                args=[job_id, f"{self.settings.queue_prefix}:{SYNC_QUEUE}:"],
            )
            if holder:
                log.info("job.collapsed", job_id=job_id, tenant_id=tenant_id, into=holder)
                return {"collapsedInto": holder}
        attempt = max(int(job.attemptsStarted or 0), int(job.attemptsMade or 0) + 1)
        trigger = (
            data.get("trigger") if data.get("trigger") in ("cron", "manual", "api") else "manual"
        )
        self.running[job_id] = queue
        with bound_contextvars(job_id=job_id, tenant_id=tenant_id, queue=queue, attempt=attempt):
            try:
                run_id = await self._open_run(queue, job, job_id, tenant_id, attempt, str(trigger))
                ctx = JobContext(self.rt, job, queue, run_id, attempt, data, self.producer)
                with metrics.job_attempt(queue, str(job.name)):
                    return await self._run(handler, ctx, tenant_id)
            finally:
                self.running.pop(job_id, None)

    def _dedup_key(self, tenant_id: str) -> str:
        return f"{self.settings.queue_prefix}:{SYNC_QUEUE}:de:{dedup_id(tenant_id)}"

    async def _open_run(
        self, queue: str, job: Job, job_id: str, tenant_id: str | None, attempt: int, trigger: str
    ) -> int:
        await self._close_unclosed()
        async with self.rt.unit_of_work() as session:
            lost = await runs.close_lost_runs(session, job_id=job_id, queue=queue)
            if lost:
                log.warning("jobrun.closed_lost", job_id=job_id, rows=lost)
            known = tenant_id and await session.get(Tenant, tenant_id) is not None
            run = await runs.start_run(
                session,
                tenant_id=tenant_id if known else None,
                job_name=str(job.name),
                job_id=job_id,
                queue=queue,
                attempt=attempt,
                trigger=trigger,
                worker_id=self.worker_id,
            )
            return run.id

    async def _close_run(
        self, run_id: int, status: str, error: str | None, stats: dict[str, Any] | None
    ) -> None:
        try:
            async with self.rt.unit_of_work() as session:
                await runs.finish_run(session, run_id, status=status, error=error, stats=stats)
        except Exception as exc:  # the DB may be down: written again once it is back
            self._unclosed[run_id] = (status, error, stats)
            log.warning("jobrun.close_failed", run_id=run_id, error=error_text(exc))

    async def _close_unclosed(self) -> None:
        for run_id, (status, error, stats) in list(self._unclosed.items()):
            async with self.rt.unit_of_work() as session:
                await runs.finish_run(session, run_id, status=status, error=error, stats=stats)
            del self._unclosed[run_id]

    async def _run(self, handler: Handler, ctx: JobContext, tenant_id: str | None) -> Any:
        started = time.monotonic()
        log.info("job.started")
        final = True
        try:
            result = await handler(ctx)
        except asyncio.CancelledError:
            await self._close_run(
                ctx.run_id, "FAILED", "worker stopped before the job finished", None
            )
            final = False
            raise
        except (PermanentError, ValidationError) as exc:
            text = (
                error_text(exc)
                if not isinstance(exc, ValidationError)
                else (f"invalid job data: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")
            )
            await self._close_run(ctx.run_id, "FAILED", text, None)
            await self._after_failure(ctx, tenant_id, text)
            log.warning("job.failed", error=text, permanent=True)
            raise UnrecoverableError(text) from _cause(exc)
        except Exception as exc:
            text = error_text(exc)
            await self._close_run(ctx.run_id, "FAILED", text, None)
            if await self._after_failure(ctx, tenant_id, text):
                log.warning("job.failed", error=text, retry=False, paused=True)
                raise UnrecoverableError(f"{text} (tenant paused: too many failures)") from _cause(
                    exc
                )
            attempts = int(ctx.job.opts.get("attempts") or 1)
            final = ctx.attempt >= attempts
            log.warning(
                "job.failed", error=text, retry=not final, retryable=isinstance(exc, RetryableError)
            )
            if isinstance(exc, RetryableError):
                raise RetryableError(text, retry_after=exc.retry_after) from None
            raise ErpSyncError(text) from _cause(exc)
        else:
            stats = result if isinstance(result, dict) else None
            await self._close_run(ctx.run_id, "COMPLETED", None, stats)
            log.info("job.completed", duration_ms=int((time.monotonic() - started) * 1000))
            return result
        finally:
            if final and tenant_id and not ctx.job.deduplication_id:
                # Jobs without BullMQ dedup (other producers) do not release the key themselves.
                with contextlib.suppress(Exception):
                    await self._release(keys=[self._dedup_key(tenant_id)], args=[str(ctx.job.id)])

    async def _after_failure(self, ctx: JobContext, tenant_id: str | None, error: str) -> bool:
        """Auto-pause a tenant whose syncs keep failing: no retry storm against a broken
        ERP account (the scheduler drops its schedule until someone resumes it)."""
        if ctx.queue != SYNC_QUEUE or not tenant_id:
            return False
        try:
            async with self.rt.unit_of_work() as session:
                paused = await pause_if_failing(
                    session, tenant_id, self.settings.auto_pause_after_failures, error
                )
        except Exception as exc:
            log.warning("tenant.auto_pause_failed", error=error_text(exc))
            return False
        if paused:
            log.warning("tenant.auto_paused", failures=self.settings.auto_pause_after_failures)
        return paused

    # -- lifecycle ----------------------------------------------------------------------

    def _worker_opts(self, queue: str) -> dict[str, Any]:
        s = self.settings

        def strategy(attempts_made: int, type_: str, err: BaseException, job: Job) -> int:
            return backoff_ms(s, attempts_made, err)

        return {
            "connection": connection_opts(s),
            "prefix": s.queue_prefix,
            "autorun": False,
            "concurrency": s.worker_concurrency if queue == SYNC_QUEUE else 1,
            "lockDuration": s.job_lock_ms,
            "stalledInterval": s.stalled_interval_ms,
            "maxStalledCount": s.max_stalled_count,
            "drainDelay": 1,
            "name": f"erp-sync-{self.worker_id}",
            "settings": {"backoffStrategy": strategy},
        }

    async def start(self) -> None:
        for queue in self.queues:
            worker = Worker(queue, self._processor(queue), self._worker_opts(queue))
            worker.on("error", lambda err, *a: log.warning("worker.error", error=error_text(err)))
            # Learn the Redis version on both connections before run(): otherwise delays,
            # backoffs and cron fire up to 1 s late (ARCHITECTURE.md).
            await worker.redisConnection.getRedisVersion()
            await worker.blockingRedisConnection.getRedisVersion()
            self.workers[queue] = worker
        for worker in self.workers.values():
            self._tasks.append(asyncio.create_task(worker.run()))
        self._tasks.append(asyncio.create_task(self._heartbeat_loop()))
        self._tasks.append(asyncio.create_task(self._reaper_loop()))
        log.info("worker.started", worker_id=self.worker_id, queues=list(self.queues))

    async def _heartbeat_loop(self) -> None:
        ttl = self.settings.heartbeat_ttl_seconds
        while True:
            try:
                await heartbeat.beat(
                    self.rt.redis,
                    self.settings.queue_prefix,
                    self.worker_id,
                    ttl=ttl,
                    queues=list(self.queues),
                    concurrency=self.settings.worker_concurrency,
                    started_at=self.started_at,
                    running=sorted(self.running),
                )
            except Exception as exc:
                log.warning("worker.heartbeat_failed", error=error_text(exc))
            await asyncio.sleep(max(1.0, ttl / 3))

    async def reap(self) -> int:
        """Close RUNNING rows of workers whose heartbeat expired."""
        live = [
            w["id"] for w in await heartbeat.live_workers(self.rt.redis, self.settings.queue_prefix)
        ]
        if self.worker_id not in live:
            live.append(self.worker_id)
        async with self.rt.unit_of_work() as session:
            closed = await runs.close_lost_runs(
                session,
                live_workers=live,
                older_than=timedelta(seconds=self.settings.heartbeat_ttl_seconds),
            )
        if closed:
            log.warning("jobrun.reaped", rows=closed)
        return closed

    async def _reaper_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stalled_interval_ms / 1000)
            try:
                await self._close_unclosed()
                await self.reap()
            except Exception as exc:
                log.warning("worker.reaper_failed", error=error_text(exc))

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking jobs; wait up to ``grace`` seconds for running ones, then abandon
        them (BullMQ's stalled check hands them to another worker)."""
        grace = self.settings.worker_grace_seconds if grace is None else grace
        log.info("worker.stopping", running=len(self.running), grace_seconds=grace)
        # Pause first and close only when idle: bullmq's close() ends the lock renewal
        # while jobs still run, so a job outliving the lock would be lost at the finish.
        for w in self.workers.values():
            await w.pause(do_not_wait_active=True)
        deadline = time.monotonic() + grace
        while self.running and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a dict
            await asyncio.sleep(0.05)
        force = bool(self.running)
        if force:
            log.warning("worker.grace_expired", abandoned=sorted(self.running))
        for w in self.workers.values():
            with contextlib.suppress(Exception):
                await w.close(force=force)
        # bullmq cancels the abandoned jobs without waiting for them: give them a moment
        # to write their JobRun rows ("worker stopped before the job finished") before
        # the database goes away under them.
        deadline = time.monotonic() + ABANDONED_BOOKKEEPING_S
        while self.running and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a dict
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.producer.close()
        with contextlib.suppress(Exception):
            await heartbeat.forget(self.rt.redis, self.settings.queue_prefix, self.worker_id)
        await self.rt.close()
        metrics.forget_process(self.settings.prometheus_multiproc_dir)
        log.info("worker.stopped")


async def serve_until_signalled(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    await stopping.wait()
    await stop()


async def run_worker(
    settings: Settings, handlers: dict[tuple[str, str], Handler] | None = None
) -> None:
    service = WorkerService(settings, handlers=handlers or dict(DEFAULT_HANDLERS))
    with metrics.serving(settings.metrics_port, settings.host, error=ConfigError):
        await serve_until_signalled(service.start, service.stop)
