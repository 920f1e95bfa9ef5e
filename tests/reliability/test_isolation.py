"""Scenario 6, tenant isolation: two tenants on two sandboxes with the same seed, so
every externalId collides. A sync of one never writes, marks deleted or quarantines the
other's rows, and the API's per-tenant queries answer only about the tenant asked for.

API tokens are global today (one API_TOKEN for every tenant): a token cannot be scoped
to a tenant, so there is no token isolation to test; docs/reliability.md says so."""

from __future__ import annotations

import time
from typing import Any

import httpx
import psycopg
import pytest
import redis as syncredis

from erp_sync.jobs.names import SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.service import trigger_sync
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from tests.conftest import API_TOKEN, REDIS_URL
from tests.jobs.test_processes import worker_env
from tests.reliability.support import (
    Processes,
    SandboxProcess,
    add_bling_tenant,
    dump_database,
    dump_redis,
    sandbox_process,
    stored_products,
    truth_products,
)

pytestmark = pytest.mark.slow

SIZES = {"products": 400, "customers": 40, "orders": 40}
TABLES = ("Product", "StockLevel", "Customer", "SalesOrder", "SalesOrderLine",
          "QuarantinedRecord", "SyncState")  # fmt: skip


def fingerprint(db: str, tenant: str) -> dict[str, tuple[int, str]]:
    """Every row of the tenant in every synced table, byte for byte (syncedAt included)."""
    out = {}
    with psycopg.connect(db) as c:
        for table in TABLES:
            row = c.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), ''))"
                f' FROM "{table}" t WHERE "tenantId" = %s',
                (tenant,),
            ).fetchone()
            assert row is not None
            out[table] = (int(row[0]), str(row[1]))
    return out


def external_ids(db: str, tenant: str) -> set[str]:
    with psycopg.connect(db) as c:
        rows = c.execute(
            'SELECT "externalId" FROM "Product" WHERE "tenantId" = %s', (tenant,)
        ).fetchall()
    return {str(r[0]) for r in rows}


def deleted(db: str, tenant: str) -> int:
    with psycopg.connect(db) as c:
        row = c.execute(
            'SELECT count(*) FROM "Product" WHERE "tenantId" = %s AND "deletedAt" IS NOT NULL',
            (tenant,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def sync_and_wait(rt: Runtime, queues: JobQueues, tenant: str, full: bool) -> None:
    job = (await trigger_sync(rt, queues, tenant, full=full)).job_id
    deadline = time.monotonic() + 90
    while (state := await queues.job_state(SYNC_QUEUE, job)) != "completed":
        assert state != "failed", (await queues.get_job(SYNC_QUEUE, job)).failedReason  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"sync of {tenant} still {state}"
        time.sleep(0.2)


async def test_a_sync_of_one_tenant_never_touches_the_other(
    rt: Runtime,
    fast: Settings,
    queues: JobQueues,
    clean_db: str,
    procs: Processes,
    outcome: dict[str, Any],
) -> None:
    outcome.update(
        scenario="6-tenant-isolation", title="Tenant isolation with colliding externalIds", runs=1
    )
    a: SandboxProcess
    b: SandboxProcess
    with (
        sandbox_process(**SIZES, seed=7) as a,
        sandbox_process(**SIZES, seed=7, malformed_rate=0.05) as b,
    ):
        await add_bling_tenant(rt, "alpha", a.base_url, a.credentials())
        await add_bling_tenant(rt, "beta", b.base_url, b.credentials())
        env = worker_env(fast)
        procs.worker(env, name="isolation-worker")
        _, api = procs.api(env)
        await sync_and_wait(rt, queues, "alpha", full=True)
        await sync_and_wait(rt, queues, "beta", full=True)

        ids_a, ids_b = external_ids(clean_db, "alpha"), external_ids(clean_db, "beta")
        truth_a, truth_b = truth_products(a), truth_products(b)
        assert stored_products(clean_db, "alpha") == truth_a
        assert stored_products(clean_db, "beta") == truth_b
        collide = len(ids_a & ids_b)
        assert collide >= SIZES["products"] * 0.9, collide  # same seed: the same ids

        # Deletions, new products and edits in A's ERP, then a *full* sync of A (which
        # marks deleted what A's ERP no longer lists): B's rows must not move a byte.
        before_b = fingerprint(clean_db, "beta")
        changes = a.admin(
            "mutate",
            {"price_changes": 25, "deleted_products": 6, "new_products": 4, "customer_changes": 5},
        )
        await sync_and_wait(rt, queues, "alpha", full=True)
        after_b = fingerprint(clean_db, "beta")
        truth_a2 = truth_products(a)
        stored_a2 = stored_products(clean_db, "alpha")
        deleted_a, deleted_b = deleted(clean_db, "alpha"), deleted(clean_db, "beta")

        # The API answers about the tenant asked for, and only that one.
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        with httpx.Client(base_url=api, headers=headers, timeout=30) as http:
            q_a = http.get("/api/v1/tenants/alpha/quarantine").json()
            q_b = http.get("/api/v1/tenants/beta/quarantine", params={"limit": 1000}).json()
            runs_a = http.get("/api/v1/job-runs", params={"tenant": "alpha", "limit": 100}).json()
            status_a = http.get("/api/v1/tenants/alpha/status").json()
            status_b = http.get("/api/v1/tenants/beta/status").json()
            unknown = http.get("/api/v1/tenants/gamma/status")

    with psycopg.connect(clean_db) as c:
        bad_b = c.execute(
            'SELECT count(*) FROM "QuarantinedRecord" WHERE "tenantId" = %s', ("beta",)
        ).fetchone()
    assert bad_b is not None
    outcome.update(
        faults=[
            f"{collide} colliding product ids; in A's ERP: {len(changes['products']['deleted'])} "
            f"deleted, {len(changes['products']['created'])} created, "
            f"{len(changes['products']['price_changed'])} repriced, then a full sync of A"
        ],
        rows_checked=sum(n for n, _ in after_b.values()) + stored_a2.rows,
        data_lost=0 if after_b == before_b else 1,
        tenant_b_rows=sum(n for n, _ in after_b.values()),
        notes=(
            "same seed on both sandboxes (every externalId collides); B with 5 % broken "
            "records (quarantined for B only); API tokens are global (one API_TOKEN)"
        ),
    )
    assert after_b == before_b, {t: (before_b[t], after_b[t]) for t in TABLES}
    assert stored_a2 == truth_a2, stored_a2.diff(truth_a2)
    assert deleted_a == len(changes["products"]["deleted"]) > 0
    assert deleted_b == 0
    assert q_a["total"] == 0 and q_a["items"] == []
    assert q_b["total"] == int(bad_b[0]) > 0
    assert runs_a and {r["tenantId"] for r in runs_a} == {"alpha"}, runs_a
    assert status_a["tenantId"] == "alpha" and status_b["tenantId"] == "beta"
    assert sum(s["quarantined"] for s in status_a["streams"]) == 0
    assert sum(s["quarantined"] for s in status_b["streams"]) == q_b["total"]
    assert unknown.status_code == 404

    dump_database(clean_db, "isolation")
    with syncredis.Redis.from_url(REDIS_URL, decode_responses=True) as r:
        dump_redis(r, f"{fast.queue_prefix}:*", "isolation")
