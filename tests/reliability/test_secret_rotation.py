"""Rotating the Redis and PostgreSQL passwords without restarting the service (runbook §2).

Every test starts real servers of its own: a ``redis-server`` with ``requirepass`` on a
free loopback port and, for PostgreSQL, a private cluster (``initdb``) whose 127.0.0.1
access needs a scram-sha-256 password, because the shared test server trusts 127.0.0.1
and would accept any password. The service under test only ever sees the secret *file*,
as in production; nothing is restarted but Redis itself.

Run with ``-s`` to see the measured recovery times.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from redis.exceptions import AuthenticationError
from sqlalchemy import select

from erp_sync.jobs.names import SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues, SyncJobData, open_queues
from erp_sync.jobs.service import trigger_sync
from erp_sync.jobs.worker import WorkerService
from erp_sync.migrations import upgrade
from erp_sync.models import JobRun
from erp_sync.runtime import Runtime, runtime
from erp_sync.settings import Settings
from tests.conftest import app_client, service_env
from tests.jobs.helpers import add_tenant, handlers_with, slow_handler, wait_until
from tests.reliability.support import PostgresCluster, Processes, RedisServer, postgres_cluster

pytestmark = pytest.mark.slow

OLD = "old-" + uuid.uuid4().hex
NEW = "new-" + uuid.uuid4().hex
# Production-like locks: a job must survive the rotation without being handed to
# another worker, so "exactly one COMPLETED run per job" is a real check.
LOCKS = {"job_lock_ms": 30_000, "stalled_interval_ms": 15_000}


# -- a Redis server of our own --------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir, OLD)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """The Redis secret file, like /etc/merxios/secrets/redis_password."""
    path = tmp_path / "redis_password"
    write_secret(path, OLD)
    return path


def write_secret(path: Path, value: str) -> None:
    """What `sudo sh -c 'echo ... > file'` does."""
    path.write_text(value + "\n")


def on_redis(server: RedisServer, secret: Path) -> dict[str, Any]:
    """Settings overrides: our Redis, its password only in the file."""
    return {"redis_url": server.url, "redis_password_file": secret, "redis_password": None}


def rotate_redis_live(server: RedisServer) -> int:
    """CONFIG SET requirepass + CLIENT KILL TYPE normal: every client must log in again."""
    with server.client(OLD) as admin:
        admin.config_set("requirepass", NEW)
        killed = admin.client_kill_filter(_type="normal", skipme=True)
    return int(killed)


# -- the service ----------------------------------------------------------------------


async def wait_ready(client: httpx.AsyncClient, timeout: float) -> float:
    """Seconds until GET /health/ready answers 200."""
    started = time.monotonic()

    async def ok() -> bool:
        return (await client.get("/health/ready")).status_code == 200

    await wait_until(ok, timeout=timeout, interval=0.05, what="/health/ready to answer 200")
    return time.monotonic() - started


async def runs_of(rt: Runtime, job_ids: list[str]) -> dict[str, list[str]]:
    """Each job's JobRun statuses, in order."""
    async with rt.unit_of_work() as session:
        stmt = select(JobRun).where(JobRun.jobId.in_(job_ids)).order_by(JobRun.id)
        rows = list((await session.execute(stmt)).scalars())
    out: dict[str, list[str]] = {j: [] for j in job_ids}
    for r in rows:
        out[str(r.jobId)].append(r.status)
    return out


async def all_completed(queues: JobQueues, job_ids: list[str]) -> bool:
    states = [await queues.job_state(SYNC_QUEUE, j) for j in job_ids]
    return all(s == "completed" for s in states)


async def count_state(queues: JobQueues, job_ids: list[str], state: str) -> int:
    return sum([await queues.job_state(SYNC_QUEUE, j) == state for j in job_ids])


def collect_errors(worker: WorkerService) -> list[BaseException]:
    errors: list[BaseException] = []
    for w in worker.workers.values():
        w.on("error", lambda err, *args: errors.append(err))
    return errors


def assert_refused(server: RedisServer, password: str) -> None:
    with pytest.raises(AuthenticationError), server.client(password) as r:
        r.ping()


# -- Redis ------------------------------------------------------------------------------


async def test_config_set_requirepass_and_client_kill_need_no_restart(
    redis_server: RedisServer,
    secret: Path,
    rt: Runtime,
    fast: Settings,
    start_worker: Callable[..., Any],
) -> None:
    tenants = [f"t{i}" for i in range(6)]
    for t in tenants:
        await add_tenant(rt, t)
    overrides = {**on_redis(redis_server, secret), **LOCKS, "worker_concurrency": 2}
    s = fast.model_copy(update=overrides)
    worker: WorkerService = await start_worker(handlers_with(slow_handler(0.5)), **overrides)
    errors = collect_errors(worker)
    async with app_client(s) as client, open_queues(s) as queues:
        assert (await client.get("/health/ready")).status_code == 200
        jobs = [(await trigger_sync(rt, queues, t)).job_id for t in tenants]

        async def running() -> bool:
            return any("RUNNING" in v for v in (await runs_of(rt, jobs)).values())

        await wait_until(running, timeout=10, what="a job to be running")

        write_secret(secret, NEW)
        killed = rotate_redis_live(redis_server)
        rotated = time.monotonic()
        # At least the worker's four BullMQ connections and its own client.
        assert killed >= 5, killed
        ready_in = await wait_ready(client, timeout=10)
        await wait_until(lambda: all_completed(queues, jobs), timeout=30, what="every job done")
        all_done_in = time.monotonic() - rotated

        # The API's own BullMQ producer logs in again as well.
        r = await client.post("/api/v1/tenants/t0/sync")
        assert r.status_code == 202, r.text
        late = r.json()["jobId"]
        await wait_until(lambda: all_completed(queues, [late]), timeout=10, what="a new job")

    # No job lost, none run twice: exactly one COMPLETED run each, no FAILED attempt.
    assert await runs_of(rt, [*jobs, late]) == {j: ["COMPLETED"] for j in [*jobs, late]}
    assert not errors, errors
    assert_refused(redis_server, OLD)
    print(
        f"\nCONFIG SET + CLIENT KILL ({killed} clients): /health/ready 200 after "
        f"{ready_in:.2f} s; all {len(jobs)} jobs (0.5 s each, 2 at a time) done "
        f"{all_done_in:.2f} s after the rotation"
    )
    assert ready_in < 3, ready_in


async def test_redis_recreated_with_a_new_password_as_the_runbook_does(
    redis_server: RedisServer,
    secret: Path,
    rt: Runtime,
    fast: Settings,
    procs: Processes,
) -> None:
    tenants = [f"t{i}" for i in range(4)]
    for t in tenants:
        await add_tenant(rt, t)
    s = fast.model_copy(update=on_redis(redis_server, secret))
    # A real worker process (`python -m tests.jobs.helpers SECONDS`: the production worker
    # with a slow sync handler), configured only through its environment.
    proc = procs.spawn(
        "rotation-worker",
        [sys.executable, "-m", "tests.jobs.helpers", "1.0"],
        service_env(
            fast,
            REDIS_URL=redis_server.url,
            REDIS_PASSWORD_FILE=str(secret),
            WORKER_CONCURRENCY="1",
        ),
    )
    async with app_client(s) as client, open_queues(s) as queues:
        jobs = [(await trigger_sync(rt, queues, t)).job_id for t in tenants]

        async def running() -> bool:
            return any("RUNNING" in v for v in (await runs_of(rt, jobs)).values())

        await wait_until(running, timeout=30, what="the worker process to start a job")
        done_before = await count_state(queues, jobs, "completed")

        # Runbook §2: the new password into the file, then stop, remove, recreate Redis.
        write_secret(secret, NEW)
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(1)
        down = await client.get("/health/ready")
        assert down.status_code == 503
        assert down.json()["checks"]["redis"]["status"] == "down"
        await asyncio.sleep(7)  # an operator typing `rm -f` and `up -d`
        await asyncio.to_thread(redis_server.start, NEW)
        back = time.monotonic()

        ready_in = await wait_ready(client, timeout=10)

        # The job that was running finished while Redis was away; the worker records it
        # as soon as it is back, then takes the next one.
        async def resumed() -> bool:
            return await count_state(queues, jobs, "completed") > done_before

        await wait_until(resumed, timeout=30, interval=0.05, what="the worker to resume")
        resumed_in = time.monotonic() - back
        await wait_until(lambda: all_completed(queues, jobs), timeout=30, what="every job done")
        all_done_in = time.monotonic() - back

    assert await runs_of(rt, jobs) == {j: ["COMPLETED"] for j in jobs}
    assert proc.poll() is None, "the worker process died"
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 30)
    output = procs.log_of(proc)
    assert code == 0, output
    # redis-py retries a refused or dropped connection itself: BullMQ saw no error.
    assert output.count("worker.error") == 0, output
    assert_refused(redis_server, OLD)
    print(
        f"\nRedis down 8 s, back with the new password: /health/ready 200 after "
        f"{ready_in:.2f} s, worker resumed after {resumed_in:.2f} s, "
        f"all {len(jobs)} jobs done after {all_done_in:.2f} s"
    )
    # BullMQ's own reconnect policy (up to 20 s between attempts) resumed 5-8 s late here.
    assert resumed_in < 3, resumed_in


async def test_a_secret_file_written_late_is_picked_up_and_nothing_spins_meanwhile(
    redis_server: RedisServer,
    secret: Path,
    rt: Runtime,
    fast: Settings,
    start_worker: Callable[..., Any],
) -> None:
    await add_tenant(rt, "acme")
    overrides = {**on_redis(redis_server, secret), **LOCKS}
    s = fast.model_copy(update=overrides)
    worker: WorkerService = await start_worker(handlers_with(slow_handler(0.1)), **overrides)
    errors = collect_errors(worker)
    async with app_client(s) as client:
        assert (await client.get("/health/ready")).status_code == 200
        before = redis_server.stats(OLD)["total_connections_received"]

        rotate_redis_live(redis_server)  # Redis first: the file still holds the old one
        await asyncio.sleep(0.5)
        refused = await client.get("/health/ready")
        assert refused.status_code == 503
        detail = refused.json()["detail"]
        assert "Redis refused our password" in detail and "REDIS_PASSWORD_FILE" in detail
        # Said at once, not after retrying until the 2 s deadline ("no answer within 2 s").
        assert refused.json()["checks"]["redis"]["latencyMs"] < 1000
        assert OLD not in detail and NEW not in detail
        await asyncio.sleep(4.5)
        attempts = redis_server.stats(NEW)["total_connections_received"] - before
        # About 10 clients retrying at most once a second or so; a busy loop would
        # reconnect thousands of times in these 5 s.
        assert attempts < 250, attempts
        assert len(errors) <= 2, errors  # and the worker did not spin on error events

        write_secret(secret, NEW)
        ready_in = await wait_ready(client, timeout=10)
        started = time.monotonic()
        r = await client.post("/api/v1/tenants/acme/sync")
        assert r.status_code == 202, r.text
        job = r.json()["jobId"]
        async with open_queues(s) as queues:
            await wait_until(lambda: all_completed(queues, [job]), timeout=10, what="the job")
        job_in = time.monotonic() - started
    assert await runs_of(rt, [job]) == {job: ["COMPLETED"]}
    print(
        f"\nsecret file written 5 s after Redis changed: {attempts} connection attempts "
        f"meanwhile, /health/ready 200 {ready_in:.2f} s after the file, "
        f"a new job done in {job_in:.2f} s"
    )
    assert ready_in < 3, ready_in
    # BullMQ's own reconnect policy had backed off so far that this took ~10 s here.
    assert job_in < 3, job_in


# -- PostgreSQL -------------------------------------------------------------------------


@pytest.fixture
def postgres_server() -> Iterator[PostgresCluster]:
    """A private cluster: local socket trusted (for the test's admin), 127.0.0.1 needs
    a scram-sha-256 password, so a wrong password is really refused."""
    with postgres_cluster() as pg:
        yield pg


async def test_database_password_rotation_needs_no_restart(
    postgres_server: PostgresCluster,
    tmp_path: Path,
    fast: Settings,
    start_worker: Callable[..., Any],
) -> None:
    pg = postgres_server
    with pg.admin() as conn:
        conn.execute(f"CREATE ROLE merxios LOGIN PASSWORD '{OLD}'".encode())
        conn.execute(b"CREATE DATABASE merxios OWNER merxios")
    password_file = tmp_path / "postgres_password"
    write_secret(password_file, OLD)
    overrides: dict[str, Any] = {
        "database_url": f"postgresql://merxios@127.0.0.1:{pg.port}/merxios",
        "database_password_file": password_file,
        "database_password": None,
        # Attempts 1, 2, 3 s apart and more: a job queued while the password is out of
        # step is retried, not lost.
        "job_backoff_ms": 1000,
        **LOCKS,
    }
    s = fast.model_copy(update=overrides)
    await asyncio.to_thread(upgrade, s, create_database=False)
    # The password really is checked on 127.0.0.1.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"postgresql://merxios:wrong@127.0.0.1:{pg.port}/merxios")

    async with runtime(s) as rt:
        await add_tenant(rt, "acme")
        await add_tenant(rt, "beta")
    await start_worker(handlers_with(slow_handler(0.1)), **overrides)
    async with app_client(s) as client, open_queues(s) as queues, runtime(s) as rt:
        assert (await client.get("/health/ready")).status_code == 200

        # ALTER ROLE: open sessions stay logged in, so nothing notices yet.
        with pg.admin() as conn:
            conn.execute(f"ALTER ROLE merxios PASSWORD '{NEW}'".encode())
        assert (await client.get("/health/ready")).status_code == 200

        # Every session dropped (as a restart of PostgreSQL would): new logins with the
        # old file are refused, and readiness says which secret to look at.
        with pg.admin() as conn:
            conn.execute(
                b"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'merxios'"
            )
        refused = await client.get("/health/ready")
        assert refused.status_code == 503
        detail = refused.json()["detail"]
        assert "PostgreSQL refused our password" in detail, detail
        assert "DATABASE_PASSWORD_FILE" in detail and OLD not in detail

        # The API cannot read the tenant with the stale password: 503, not 500.
        r = await client.post("/api/v1/tenants/acme/sync")
        assert r.status_code == 503, r.text
        # A job queued now (straight into Redis) cannot open its JobRun: BullMQ retries it.
        queued = await queues.enqueue_sync(SyncJobData(tenantId="acme"))

        async def retried() -> bool:
            return await queues.job_state(SYNC_QUEUE, queued.job_id) == "delayed"

        await wait_until(retried, timeout=10, what="the first attempt to fail")

        write_secret(password_file, NEW)
        ready_in = await wait_ready(client, timeout=10)
        r = await client.post("/api/v1/tenants/beta/sync")
        assert r.status_code == 202, r.text
        job_id = r.json()["jobId"]
        jobs = [queued.job_id, job_id]
        await wait_until(lambda: all_completed(queues, jobs), timeout=20, what="both jobs")
        # The refused attempt left no row (the database refused it); one COMPLETED each.
        assert await runs_of(rt, jobs) == {j: ["COMPLETED"] for j in jobs}
        with pg.admin() as conn:
            logged_in = conn.execute(
                b"SELECT count(*) FROM pg_stat_activity WHERE usename = 'merxios'"
            ).fetchone()
        assert logged_in is not None and logged_in[0] >= 1
    print(f"\nPostgreSQL password rotated: /health/ready 200 {ready_in:.2f} s after the file")
    assert ready_in < 3, ready_in
