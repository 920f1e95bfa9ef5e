"""Interop with Node BullMQ 6: the earlier service's producer and the tool Bull Board
uses must keep working against our queues. The suite installs the npm packages itself
(`npm ci` from tests/interop/node/package-lock.json)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from erp_sync.jobs.names import SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.models import JobRun
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from tests.jobs.helpers import add_tenant, wait_until

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="session")
def node_ready() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js and npm are needed for the interop tests (apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "bullmq").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=600,
        )
    return NODE_DIR


async def node(settings: Settings, *args: str) -> Any:
    proc = await asyncio.create_subprocess_exec(
        "node",
        "produce.mjs",
        *args,
        cwd=NODE_DIR,
        env={
            "REDIS_URL": settings.redis_url,
            "QUEUE_PREFIX": settings.queue_prefix,
            "PATH": "/usr/bin:/bin:/usr/local/bin",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_a_job_added_by_node_bullmq_is_processed(
    node_ready: Path,
    rt: Runtime,
    fast: Settings,
    queues: JobQueues,
    start_worker: Callable[..., Any],
) -> None:
    await add_tenant(rt, "acme")
    await start_worker()
    added = await node(fast, "add", "sync", "acme")

    async def completed() -> bool:
        return await queues.job_state(SYNC_QUEUE, str(added["id"])) == "completed"

    await wait_until(completed, timeout=15, what="the Node-produced job to complete")
    async with rt.unit_of_work() as session:
        (run,) = (
            await session.execute(select(JobRun).where(JobRun.jobId == str(added["id"])))
        ).scalars()
    assert (run.status, run.tenantId, run.trigger, run.jobName) == (
        "COMPLETED",
        "acme",
        "manual",
        "sync-tenant",
    )
    # Node reads the outcome our worker wrote
    job = await node(fast, "job", "sync", str(added["id"]))
    assert job["state"] == "completed" and job["data"] == {"tenantId": "acme"}
    # and a later trigger for the tenant is not blocked by the finished Node job
    from erp_sync.jobs.service import trigger_sync

    assert (await trigger_sync(rt, queues, "acme")).created


async def test_node_sees_our_counts_and_its_pause_stops_our_workers(
    node_ready: Path,
    rt: Runtime,
    fast: Settings,
    queues: JobQueues,
    start_worker: Callable[..., Any],
) -> None:
    from erp_sync.jobs.service import trigger_sync

    await add_tenant(rt, "acme")
    await add_tenant(rt, "beta")
    await trigger_sync(rt, queues, "acme")
    counts = await node(fast, "counts", "sync")
    assert counts["counts"]["waiting"] == 1 and counts["paused"] is False

    assert (await node(fast, "pause", "sync"))["paused"] is True
    assert (await queues.status())[0]["paused"] is True
    await start_worker()
    await asyncio.sleep(2)
    counts = await node(fast, "counts", "sync")
    assert counts["counts"].get("completed", 0) == 0
    assert (await node(fast, "resume", "sync"))["paused"] is False

    async def done() -> bool:
        return (await node(fast, "counts", "sync"))["counts"].get("completed", 0) == 1

    await wait_until(done, timeout=15, what="the job to run after Node resumed the queue")
    _ = beta = await trigger_sync(rt, queues, "beta")
    assert beta.created
