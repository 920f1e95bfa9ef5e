"""Scenarios 2 and 3: Redis and PostgreSQL stopped in the middle of syncs and started
again. Worker and API *processes*, a Redis server and a PostgreSQL cluster of the test's
own (the shared ones on 6379 and 5432 are never touched)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from erp_sync.jobs.names import SYNC_QUEUE
from erp_sync.jobs.queues import open_queues
from erp_sync.jobs.service import trigger_sync
from erp_sync.migrations import upgrade
from erp_sync.runtime import runtime
from erp_sync.settings import Settings
from tests.conftest import service_env
from tests.reliability.support import (
    EVIDENCE,
    Processes,
    SandboxProcess,
    add_bling_tenant,
    dump_database,
    dump_redis,
    duplicates,
    jobrun_statuses,
    postgres_cluster,
    redis_server,
    sandbox_process,
    stored_products,
    truth_products,
    wait_for,
)

pytestmark = pytest.mark.slow

PRODUCTS = 6_000


def timing_env(s: Settings, **extra: str) -> dict[str, str]:
    return service_env(
        s,
        JOB_BACKOFF_MS=str(s.job_backoff_ms),
        JOB_LOCK_MS=str(s.job_lock_ms),
        STALLED_INTERVAL_MS=str(s.stalled_interval_ms),
        HEARTBEAT_TTL_SECONDS=str(s.heartbeat_ttl_seconds),
        WORKER_GRACE_SECONDS="5",
        **extra,
    )


def product_count(db: str, tenant: str) -> int:
    with psycopg.connect(db) as c:
        row = c.execute(
            'SELECT count(*) FROM "Product" WHERE "tenantId" = %s', (tenant,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def runs_by_job(db: str) -> dict[str, list[tuple[str, str | None]]]:
    with psycopg.connect(db) as c:
        rows = c.execute('SELECT "jobId", status, error FROM "JobRun" ORDER BY id').fetchall()
    out: dict[str, list[tuple[str, str | None]]] = {}
    for job, status, error in rows:
        out.setdefault(str(job), []).append((str(status), error))
    return out


@pytest.fixture
def sandbox() -> Iterator[SandboxProcess]:
    # 20 ms per answer: a 6,000-product read lasts several seconds, room for an outage.
    with sandbox_process(
        products=PRODUCTS, customers=5, orders=5, warehouses=1, latency_ms=20
    ) as sb:
        yield sb


# -- 2. Redis ------------------------------------------------------------------------------


async def test_redis_restart_mid_sync_loses_no_job(
    fast: Settings,
    clean_db: str,
    procs: Processes,
    sandbox: SandboxProcess,
    tmp_path: Path,
    outcome: dict[str, Any],
) -> None:
    outcome.update(scenario="2-redis-restart", title="Redis restart mid-sync (AOF on)", runs=1)
    tenants = ["r1", "r2", "r3"]
    with redis_server() as server:
        secret = tmp_path / "redis_password"
        secret.write_text(server.password + "\n")
        # Production locks and heartbeats: an outage of a few seconds must not hand a
        # running job to another worker, so "one COMPLETED run per job" is a real check.
        s = fast.model_copy(
            update={
                "redis_url": server.url,
                "redis_password_file": secret,
                "job_lock_ms": 30_000,
                "stalled_interval_ms": 15_000,
                "heartbeat_ttl_seconds": 30,
            }
        )
        env = timing_env(s, REDIS_PASSWORD_FILE=str(secret), WORKER_CONCURRENCY="2")
        workers = [procs.worker(env, name=f"redis-worker-{n}") for n in range(2)]
        async with runtime(s) as rt, open_queues(s) as queues:
            for t in tenants:
                await add_bling_tenant(
                    rt, t, sandbox.base_url, sandbox.credentials(), fetch_details=False
                )
            jobs = [
                (await trigger_sync(rt, queues, t, streams=["products"], full=True)).job_id
                for t in tenants
            ]
            wait_for(
                lambda: any(0 < product_count(clean_db, t) < PRODUCTS for t in tenants),
                timeout=60,
                what="the first pages to land",
            )
            at_stop = {t: product_count(clean_db, t) for t in tenants}
            states_before = [await queues.job_state(SYNC_QUEUE, j) for j in jobs]
            down_at = time.monotonic()
            server.stop()  # SIGTERM: Redis writes its AOF and exits
            time.sleep(4)
            server.start()  # same port, same directory: the AOF brings the queue back
            outage_s = time.monotonic() - down_at
            back = time.monotonic()

            async def done() -> bool:
                states = [await queues.job_state(SYNC_QUEUE, j) for j in jobs]
                return all(st == "completed" for st in states)

            deadline = time.monotonic() + 120
            while not await done():
                assert time.monotonic() < deadline, [
                    await queues.job_state(SYNC_QUEUE, j) for j in jobs
                ]
                time.sleep(0.2)
            all_done_s = time.monotonic() - back
            # The workers' blocking connections are back too: a new job runs at once.
            started = time.monotonic()
            late = (await trigger_sync(rt, queues, "r1", streams=["products"])).job_id
            wait_for(lambda: runs_by_job(clean_db).get(late, [("", None)])[-1][0] == "COMPLETED",
                     timeout=20, what="a job queued after the restart")  # fmt: skip
            new_job_s = time.monotonic() - started
            expected = truth_products(sandbox)
            stored = {t: stored_products(clean_db, t) for t in tenants}
            with server.client() as r:
                dump_redis(r, f"{s.queue_prefix}:*", "redis-restart")
        alive = [w.poll() is None for w in workers]
        logs = "".join(procs.log_of(w) for w in workers)

    runs = runs_by_job(clean_db)
    outcome.update(
        faults=[
            f"redis-server SIGTERM with jobs {states_before}, down {outage_s:.1f} s, "
            "restarted on the same port and AOF directory"
        ],
        rows_checked=expected.rows * len(tenants),
        data_lost=sum(len(expected.lines - stored[t].lines) for t in tenants),
        rows_at_stop=at_stop,
        all_done_after_restart_s=round(all_done_s, 1),
        new_job_after_restart_s=round(new_job_s, 2),
        worker_error_events=logs.count("worker.error"),
        jobruns=jobrun_statuses(clean_db),
        attempts={j: [f"{st} {e or ''}".strip()[:90] for st, e in runs[j]] for j in jobs},
        notes=(
            f"3 tenants x {PRODUCTS:,} products, 2 worker processes (2 jobs each), lock 30 s, "
            "heartbeat TTL 30 s"
        ),
    )
    assert all(alive), logs[-3000:]
    for t in tenants:
        assert stored[t].sha256 == expected.sha256, (t, stored[t].diff(expected))
        assert duplicates(clean_db, "Product", t) == 0
    # No job lost: each ends COMPLETED. An attempt that needed Redis during the outage
    # (the rate governor asks it before every ERP call) failed retryably, said so, and
    # was retried once Redis was back; none was handed to a second worker meanwhile.
    for j in jobs:
        *before, last = runs[j]
        assert last == ("COMPLETED", None), runs[j]
        assert len(before) <= 1, runs[j]
        assert all(st == "FAILED" and "cannot reach Redis" in str(e) for st, e in before), runs[j]
    assert jobrun_statuses(clean_db).get("RUNNING", 0) == 0
    assert new_job_s < 10, new_job_s
    dump_database(clean_db, "redis-restart")


# -- 3. PostgreSQL ----------------------------------------------------------------------------


async def test_postgres_restart_mid_sync_retries_and_completes(
    fast: Settings,
    procs: Processes,
    sandbox: SandboxProcess,
    tmp_path: Path,
    outcome: dict[str, Any],
) -> None:
    outcome.update(scenario="3-postgres-restart", title="PostgreSQL restart mid-sync", runs=1)
    password = EVIDENCE.secret("the database password", "db-" + secrets.token_hex(16))
    password_file = tmp_path / "postgres_password"
    password_file.write_text(f"{password}\n")
    with postgres_cluster() as pg:
        with pg.admin() as conn:
            conn.execute(f"CREATE ROLE merxios LOGIN PASSWORD '{password}'".encode())
            conn.execute(b"CREATE DATABASE merxios OWNER merxios")
        s = fast.model_copy(
            update={
                "database_url": f"postgresql://merxios@127.0.0.1:{pg.port}/merxios",
                "database_password_file": password_file,
                "database_password": None,
                # Attempts 1, 2, 4, 8 s apart: a 6 s outage is retried through.
                "job_backoff_ms": 1000,
            }
        )
        upgrade(s, create_database=False)
        db = f"postgresql://merxios:{password}@127.0.0.1:{pg.port}/merxios"
        env = timing_env(s, DATABASE_PASSWORD_FILE=str(password_file))
        worker = procs.worker(env, name="pg-worker")
        api, api_url = procs.api(env)
        async with runtime(s) as rt, open_queues(s) as queues:
            await add_bling_tenant(
                rt, "p1", sandbox.base_url, sandbox.credentials(), fetch_details=False
            )
            job = (await trigger_sync(rt, queues, "p1", streams=["products"], full=True)).job_id
            wait_for(
                lambda: 0 < product_count(db, "p1") < PRODUCTS,
                timeout=60,
                what="the first pages to land",
            )
            at_stop = product_count(db, "p1")
            assert httpx.get(f"{api_url}/health/ready", timeout=10).status_code == 200
            down_at = time.monotonic()
            pg.stop()
            ready_down = httpx.get(f"{api_url}/health/ready", timeout=10)

            async def retried() -> bool:
                j = await queues.get_job(SYNC_QUEUE, job)
                return j is not None and int(j.attemptsMade or 0) >= 1

            deadline = time.monotonic() + 20
            while not await retried():
                assert time.monotonic() < deadline, "the attempt did not fail during the outage"
                time.sleep(0.1)
            failed_job = await queues.get_job(SYNC_QUEUE, job)
            assert failed_job is not None
            first_error = str(failed_job.failedReason or "")
            state_in_outage = await queues.job_state(SYNC_QUEUE, job)
            time.sleep(max(0.0, 6 - (time.monotonic() - down_at)))
            pg.start()
            outage_s = time.monotonic() - down_at
            back = time.monotonic()
            wait_for(
                lambda: httpx.get(f"{api_url}/health/ready", timeout=10).status_code == 200,
                timeout=20,
                what="/health/ready 200 after the restart",
                interval=0.1,
            )
            ready_after_s = time.monotonic() - back

            async def completed() -> bool:
                return await queues.job_state(SYNC_QUEUE, job) == "completed"

            deadline = time.monotonic() + 90
            while not await completed():
                assert time.monotonic() < deadline, await queues.job_state(SYNC_QUEUE, job)
                time.sleep(0.2)
            done_s = time.monotonic() - back
            # The reaper (or the next attempt) closes the attempt the outage interrupted.
            wait_for(
                lambda: jobrun_statuses(db).get("RUNNING", 0) == 0,
                timeout=30,
                what="no RUNNING JobRun row",
            )
            expected = truth_products(sandbox)
            stored = stored_products(db, "p1")
            runs = runs_by_job(db)[job]
            dupes = duplicates(db, "Product", "p1")
            dump_database(db, "postgres-restart")
        alive = worker.poll() is None and api.poll() is None
        logs = procs.log_of(worker) + procs.log_of(api)

    outcome.update(
        faults=[
            f"PostgreSQL fast shutdown with {at_stop} of {PRODUCTS} rows stored, down "
            f"{outage_s:.1f} s, restarted on the same data directory"
        ],
        rows_checked=expected.rows,
        data_lost=len(expected.lines - stored.lines),
        ready_during_outage=ready_down.status_code,
        ready_after_restart_s=round(ready_after_s, 2),
        done_after_restart_s=round(done_s, 1),
        job_state_in_outage=state_in_outage,
        first_failure=first_error[:200],
        attempts=[f"{st} {e or ''}".strip()[:120] for st, e in runs],
        notes=f"{PRODUCTS:,} products, private cluster, job backoff 1 s doubling",
    )
    assert alive, logs[-3000:]
    assert ready_down.status_code == 503, ready_down.text
    assert ready_down.json()["checks"]["postgres"]["status"] == "down"
    assert ready_down.json()["checks"]["redis"]["status"] == "up"
    # The job's failedReason (Redis, Bull Board) is the sentence, not the driver's text.
    assert "PostgreSQL" in first_error and "[SQL:" not in first_error, first_error
    assert state_in_outage in ("delayed", "waiting", "active"), state_in_outage
    assert stored.sha256 == expected.sha256, stored.diff(expected)
    assert dupes == 0
    assert runs[-1] == ("COMPLETED", None), runs
    # The attempt the outage interrupted is closed with what happened, written once
    # PostgreSQL was back (not as 'worker lost': the worker lived).
    assert [st for st, _ in runs[:-1]] == ["FAILED"], runs
    assert "PostgreSQL" in str(runs[0][1]), runs
