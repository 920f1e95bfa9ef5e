"""Worker *processes*: SIGKILL mid-job and recovery by another worker; SIGTERM drains."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from erp_sync.jobs.names import SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.service import trigger_sync
from erp_sync.jobs.worker import WorkerService
from erp_sync.models import JobRun
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from tests.conftest import ROOT, run_cli, service_env
from tests.jobs.helpers import add_tenant, handlers_with, slow_handler, wait_until


def worker_env(s: Settings) -> dict[str, str]:
    return service_env(
        s,
        JOB_BACKOFF_MS=str(s.job_backoff_ms),
        JOB_LOCK_MS=str(s.job_lock_ms),
        STALLED_INTERVAL_MS=str(s.stalled_interval_ms),
        HEARTBEAT_TTL_SECONDS=str(s.heartbeat_ttl_seconds),
        WORKER_GRACE_SECONDS=str(s.worker_grace_seconds),
    )


@pytest.fixture
def spawn(fast: Settings) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(seconds: float, **env: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-m", "tests.jobs.helpers", str(seconds)],
            cwd=ROOT,
            env={**worker_env(fast), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


async def runs_of(rt: Runtime, job_id: str) -> list[JobRun]:
    async with rt.unit_of_work() as session:
        stmt = select(JobRun).where(JobRun.jobId == job_id).order_by(JobRun.id)
        return list((await session.execute(stmt)).scalars())


async def test_sigkill_mid_job_is_recovered_by_another_worker(
    rt: Runtime,
    queues: JobQueues,
    fast: Settings,
    spawn: Callable[..., subprocess.Popen[str]],
    start_worker: Callable[..., Any],
) -> None:
    await add_tenant(rt, "acme")
    victim = spawn(30)
    job = await trigger_sync(rt, queues, "acme")

    async def running_row() -> list[JobRun]:
        return [r for r in await runs_of(rt, job.job_id) if r.status == "RUNNING"]

    await wait_until(running_row, timeout=30, what="the first worker to start the job")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    loop = asyncio.get_running_loop()
    killed_at = loop.time()

    rescuer: WorkerService = await start_worker(handlers_with(slow_handler(0.5)))

    async def completed() -> bool:
        return await queues.job_state(SYNC_QUEUE, job.job_id) == "completed"

    # Bound: lock (2 s) + 2 x stalled interval (1 s) + slack.
    await wait_until(completed, timeout=20, what="recovery by the second worker")
    recovered_in = loop.time() - killed_at
    rows = await runs_of(rt, job.job_id)
    assert [(r.status, r.error) for r in rows] == [("FAILED", "worker lost"), ("COMPLETED", None)]
    assert rows[1].workerId == rescuer.worker_id and rows[0].workerId != rescuer.worker_id
    assert recovered_in < 10, recovered_in


async def test_reaper_closes_rows_of_a_dead_worker_even_without_recovery(
    rt: Runtime, start_worker: Callable[..., Any]
) -> None:
    from datetime import timedelta

    from erp_sync.kit.time import utcnow

    await add_tenant(rt, "acme")
    async with rt.unit_of_work() as session:
        session.add(
            JobRun(
                tenantId="acme",
                jobName="sync-tenant",
                jobId="gone-1",
                queue="sync",
                status="RUNNING",
                attempt=1,
                trigger="cron",
                workerId="dead-worker",
                startedAt=utcnow() - timedelta(minutes=5),
            )
        )
    worker: WorkerService = await start_worker()
    assert await worker.reap() == 1
    (row,) = await runs_of(rt, "gone-1")
    assert (row.status, row.error) == ("FAILED", "worker lost")
    assert row.durationMs is not None and row.durationMs >= 300_000


async def test_sigterm_lets_the_running_job_finish_and_exits_0(
    rt: Runtime, queues: JobQueues, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    await add_tenant(rt, "acme")
    proc = spawn(2)
    job = await trigger_sync(rt, queues, "acme")
    await wait_until(lambda: runs_of(rt, job.job_id), timeout=30, what="job started")
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
    output = proc.stdout.read() if proc.stdout else ""
    assert code == 0, output
    (row,) = await runs_of(rt, job.job_id)
    assert row.status == "COMPLETED"
    assert await queues.job_state(SYNC_QUEUE, job.job_id) == "completed", output
    assert "worker.stopped" in output


async def test_sigterm_past_the_grace_period_leaves_the_job_for_another_worker(
    rt: Runtime, queues: JobQueues, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    await add_tenant(rt, "acme")
    proc = spawn(30, WORKER_GRACE_SECONDS="1")
    job = await trigger_sync(rt, queues, "acme")
    await wait_until(lambda: runs_of(rt, job.job_id), timeout=30, what="job started")
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
    assert code == 0
    (row,) = await runs_of(rt, job.job_id)
    assert (row.status, row.error) == ("FAILED", "worker stopped before the job finished")
    # Not failed in BullMQ: it stays active until the stalled check hands it on.
    assert await queues.job_state(SYNC_QUEUE, job.job_id) in ("active", "waiting")


async def test_pause_stops_new_work_and_resume_restarts_it(
    rt: Runtime, queues: JobQueues, fast: Settings, start_worker: Callable[..., Any]
) -> None:
    await add_tenant(rt, "acme")
    await start_worker()
    r = run_cli(fast, "queues", "pause", "sync")
    assert r.returncode == 0, r.stderr
    assert "queue sync paused" in r.stdout
    job = await trigger_sync(rt, queues, "acme")
    await asyncio.sleep(2.5)
    assert await queues.job_state(SYNC_QUEUE, job.job_id) in ("waiting", "paused")
    status = run_cli(fast, "queues", "status")
    assert "PAUSED" in status.stdout
    r = run_cli(fast, "queues", "resume", "sync")
    assert r.returncode == 0, r.stderr

    async def done() -> bool:
        return await queues.job_state(SYNC_QUEUE, job.job_id) == "completed"

    await wait_until(done, timeout=10, what="job completed after resume")


def test_unknown_queue_is_a_clear_error(fast: Settings) -> None:
    r = run_cli(fast, "queues", "pause", "nope")
    assert r.returncode == 1
    assert r.stderr.strip() == "error: unknown queue 'nope'; the queues are sync, maintenance"
