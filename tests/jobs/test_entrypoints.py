"""Reprocess, job runs and queue status through the CLI and the API."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from erp_sync.jobs.names import SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from tests.conftest import erp_sync_cmd, free_port, service_env
from tests.jobs.helpers import add_tenant, handlers_with, slow_handler, wait_until


async def cli(
    settings: Settings, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the CLI without blocking the event loop (an in-process worker runs meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        *erp_sync_cmd(),
        *args,
        env=env or service_env(settings),
        cwd=Path(__file__).parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_reprocess_wait_follows_the_job_to_completion(
    rt: Runtime, fast: Settings, start_worker: Callable[..., Any]
) -> None:
    await add_tenant(rt, "acme")
    await start_worker(handlers_with(slow_handler(1.0)))
    code, out, err = await cli(
        fast, "reprocess", "--tenant", "acme", "--streams", "products,customers", "--wait"
    )
    assert code == 0, out + err
    assert "queued sync of tenant acme as job sync-acme-" in out
    assert "COMPLETED" in out and "sync-tenant" in out


async def test_reprocess_wait_exits_1_on_failure(
    rt: Runtime, fast: Settings, start_worker: Callable[..., Any]
) -> None:
    await add_tenant(rt, "acme", connected=False)
    await start_worker()
    code, out, err = await cli(fast, "reprocess", "--tenant", "acme", "--full", "--wait")
    assert code == 1, out + err
    assert "FAILED" in out and "has no ERP connection" in out


async def test_reprocess_of_an_unknown_tenant_is_a_clear_error(fast: Settings) -> None:
    code, _out, err = await cli(fast, "reprocess", "--tenant", "ghost")
    assert code == 1
    assert err.strip() == "error: tenant 'ghost' does not exist"


async def test_reprocess_says_when_it_joined_a_queued_sync(rt: Runtime, fast: Settings) -> None:
    await add_tenant(rt, "acme")
    _, first, _ = await cli(fast, "reprocess", "--tenant", "acme")
    _, second, _ = await cli(fast, "reprocess", "--tenant", "acme", "--full")
    assert "queued sync" in first
    assert "already queued or running" in second and "this request joined it" in second


async def test_bad_stream_name_is_refused(fast: Settings) -> None:
    code, _, err = await cli(fast, "reprocess", "--tenant", "acme", "--streams", "produtos")
    assert code == 1
    assert "unknown stream 'produtos'" in err


async def test_jobruns_lists_the_runbook_columns(
    rt: Runtime, queues: JobQueues, fast: Settings, start_worker: Callable[..., Any]
) -> None:
    await add_tenant(rt, "acme", connected=False)
    await add_tenant(rt, "beta")
    await start_worker()
    from erp_sync.jobs.service import trigger_sync

    a = await trigger_sync(rt, queues, "acme")
    b = await trigger_sync(rt, queues, "beta")
    for job in (a, b):
        await wait_until(
            lambda j=job: _finished(queues, j.job_id), timeout=15, what="jobs finished"
        )
    code, out, _ = await cli(fast, "jobruns", "--status", "FAILED")
    assert code == 0
    for column in ("tenantId", "status", "jobName", "error", "durationMs"):
        assert column in out
    assert "acme" in out and "beta" not in out
    code, out, _ = await cli(fast, "jobruns", "--tenant", "beta", "--json")
    rows = json.loads(out)
    assert [(r["tenantId"], r["status"]) for r in rows] == [("beta", "COMPLETED")]


async def _finished(queues: JobQueues, job_id: str) -> bool:
    return await queues.job_state(SYNC_QUEUE, job_id) in ("completed", "failed")


async def test_queues_status_lists_live_workers(
    rt: Runtime, fast: Settings, start_worker: Callable[..., Any]
) -> None:
    worker = await start_worker()
    await asyncio.sleep(0.3)
    code, out, _ = await cli(fast, "queues", "status", "--json")
    assert code == 0
    data = json.loads(out)
    assert [q["queue"] for q in data["queues"]] == ["sync", "maintenance"]
    assert [w["id"] for w in data["workers"]] == [worker.worker_id]
    assert data["workers"][0]["pid"] == os.getpid()


async def test_api_sync_endpoint_and_job_runs(
    api_client: httpx.AsyncClient, rt: Runtime, start_worker: Callable[..., Any]
) -> None:
    await add_tenant(rt, "acme")
    r = await api_client.post("/api/v1/tenants/acme/sync", json={"streams": ["products"]})
    assert r.status_code == 202, r.text
    first = r.json()
    r = await api_client.post("/api/v1/tenants/acme/sync")
    assert (
        r.status_code == 200
        and r.json()["jobId"] == first["jobId"]
        and r.json()["created"] is False
    )
    assert (await api_client.post("/api/v1/tenants/ghost/sync")).status_code == 404
    r = await api_client.post("/api/v1/tenants/acme/sync", json={"streams": ["produtos"]})
    assert r.status_code == 422 and "produtos" in r.json()["detail"]

    await start_worker()

    async def runs() -> list[dict[str, Any]]:
        r = await api_client.get(
            "/api/v1/job-runs", params={"tenant": "acme", "status": "COMPLETED"}
        )
        return r.json()

    rows = await wait_until(runs, timeout=15, what="a completed run")
    assert rows[0]["jobId"] == first["jobId"] and rows[0]["trigger"] == "api"
    assert (await api_client.get("/api/v1/job-runs", params={"status": "LOST"})).status_code == 422
    overview = (await api_client.get("/api/v1/queues")).json()
    assert overview["queues"][0]["queue"] == "sync" and len(overview["workers"]) == 1


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[int]:
    """A real redis-server that requires a password."""
    port = free_port()
    proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--requirepass",
            "the-right-one",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


async def test_wrong_redis_password_is_a_prompt_clear_error(
    rt: Runtime, fast: Settings, guarded_redis: int, tmp_path: Path
) -> None:
    await add_tenant(rt, "acme")
    secret = tmp_path / "redis_password"
    secret.write_text("not-the-right-one\n")
    env = service_env(
        fast, REDIS_URL=f"redis://127.0.0.1:{guarded_redis}/0", REDIS_PASSWORD_FILE=str(secret)
    )
    started = time.monotonic()
    code, out, err = await cli(fast, "reprocess", "--tenant", "acme", env=env)
    assert code == 1
    assert err.strip().startswith("error: ")
    assert "Redis refused our password" in err, err
    assert "not-the-right-one" not in err + out
    assert time.monotonic() - started < 15
    # with the right password the same command works
    secret.write_text("the-right-one\n")
    code, out, err = await cli(fast, "reprocess", "--tenant", "acme", env=env)
    assert code == 0, err
    assert "queued sync of tenant acme" in out
