"""Shared fixtures: a real, freshly migrated PostgreSQL database and real Redis.

Each test starts from empty tables (truncation) and gets its own BullMQ key prefix,
so tests never see each other's rows or queues.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis as syncredis

from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.worker import Handler, WorkerService
from erp_sync.kit.crypto import generate_key
from erp_sync.migrations import upgrade
from erp_sync.models import Base
from erp_sync.runtime import Runtime, open_runtime
from erp_sync.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("TEST_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# One database per test run, so that parallel runs (CI, developers, helpers) never collide.
TEST_DB = os.environ.get("TEST_DB_NAME", f"erp_sync_test_{os.getpid()}")
ENCRYPTION_KEY = generate_key()
API_TOKEN = "test-token-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A loopback port nobody listens on: connections are refused at once."""
    return free_port()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)'.encode())
        conn.execute(f'CREATE DATABASE "{TEST_DB}"'.encode())
    url = f"{PG_SERVER}/{TEST_DB}"
    upgrade(Settings(_env_file=None, database_url=url), create_database=False)
    yield url
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)'.encode())


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": REDIS_URL,
        "encryption_key": ENCRYPTION_KEY,
        "api_token": API_TOKEN,
        "queue_prefix": "test-" + uuid.uuid4().hex[:12],
        "redis_password_file": None,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def truncate_all(database_url: str) -> None:
    """Empty every table. A connection an earlier test left inside a transaction (a
    test that errored before it could stop its worker) would hold TRUNCATE, and the
    whole run, forever: after a short wait such leftovers are ended, with a warning."""
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    truncate = f"TRUNCATE {tables} RESTART IDENTITY CASCADE".encode()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(b"SET lock_timeout = '10s'")
        try:
            conn.execute(truncate)
            return
        except psycopg.errors.LockNotAvailable:
            pass
        ended = conn.execute(
            b"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            b"WHERE datname = current_database() AND pid <> pg_backend_pid() "
            b"AND state LIKE 'idle in transaction%'"
        ).fetchone()
        warnings.warn(
            f"an earlier test left {ended[0] if ended else 0} connection(s) inside a "
            "transaction; ended them to empty the database",
            stacklevel=2,
        )
        conn.execute(b"SET lock_timeout = 0")
        conn.execute(truncate)


@pytest.fixture
def clean_db(database_url: str) -> str:
    truncate_all(database_url)
    return database_url


@pytest.fixture
def settings(clean_db: str) -> Iterator[Settings]:
    s = make_settings(clean_db)
    yield s
    # Drop this test's queues and heartbeats.
    r = syncredis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(f"{s.queue_prefix}:*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.fixture
async def rt(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = open_runtime(settings, name="erp-sync-test")
    yield runtime
    await runtime.close()


@contextlib.asynccontextmanager
async def app_client(
    settings: Settings, token: str = API_TOKEN
) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP app in this process (its lifespan included), called with a bearer token."""
    from erp_sync.api.app import create_app

    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {token}"},
        ) as client,
    ):
        yield client


@pytest.fixture
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings) as client:
        yield client


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for an `erp-sync` child process configured like ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "REDIS_", "BULLBOARD_", "API_TOKEN", "ENCRYPTION_KEY"))
    }
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "QUEUE_PREFIX": settings.queue_prefix,
            "ENCRYPTION_KEY": ENCRYPTION_KEY,
            "API_TOKEN": API_TOKEN,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def erp_sync_cmd() -> list[str]:
    return [str(Path(sys.executable).parent / "erp-sync")]


def run_cli(
    settings: Settings,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*erp_sync_cmd(), *args],
        env=env or service_env(settings),
        cwd=cwd or ROOT / "tests",
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )


# -- queues and workers (fast timings: recovery in seconds) ------------------------------


@pytest.fixture
def fast(settings: Settings) -> Settings:
    from tests.jobs.helpers import fast_settings

    return fast_settings(settings)


@pytest.fixture
async def queues(fast: Settings) -> AsyncIterator[JobQueues]:
    q = JobQueues(fast)
    yield q
    await q.close()


@pytest.fixture
async def start_worker(fast: Settings) -> AsyncIterator[Callable[..., object]]:
    started: list[WorkerService] = []

    async def start(
        handlers: dict[tuple[str, str], Handler] | None = None, **overrides: object
    ) -> WorkerService:
        s = fast.model_copy(update=overrides) if overrides else fast
        service = WorkerService(s, handlers=handlers) if handlers else WorkerService(s)
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop(grace=5)
