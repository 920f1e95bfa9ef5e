"""Scenario 6, tenant isolation: two tenants on two sandboxes with the same seed, so
every externalId collides. A sync of one never writes, marks deleted or quarantines the
other's rows, and the API's per-tenant queries answer only about the tenant asked for.

Then A's own API token (made with `erp-sync tokens create`, as an operator would) goes
through every operation the served OpenAPI document lists: A's routes answer about A,
every route of B answers 404 exactly as an unknown tenant's does (whatever the method
or body, and B is untouched afterwards), the list and job runs hold A only, operator
routes answer 403, revoked and expired tokens 401; the database holds hashes only."""

from __future__ import annotations

import hashlib
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
from tests.conftest import API_TOKEN, REDIS_URL, run_cli
from tests.jobs.test_processes import worker_env
from tests.reliability.support import (
    EVIDENCE,
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


# What a tenant token may do beyond its own tenant's routes: nothing. These operations
# are the operator's (403); the two listings below answer about its own tenant only.
# A new operation must be placed in one of these sets, or name {tenant_id}.
OPERATOR_ONLY = {
    ("POST", "/api/v1/tenants"),
    ("PATCH", "/api/v1/tenants/{tenant_id}"),
    ("DELETE", "/api/v1/tenants/{tenant_id}"),
    ("POST", "/api/v1/tenants/{tenant_id}/tokens"),
    ("GET", "/api/v1/tenants/{tenant_id}/tokens"),
    ("DELETE", "/api/v1/tenants/{tenant_id}/tokens/{token_id}"),
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/queues"),
}
OWN_ONLY_LISTS = {("GET", "/api/v1/tenants"), ("GET", "/api/v1/job-runs")}


def operations(api: str) -> list[tuple[str, str]]:
    paths = httpx.get(f"{api}/openapi.json", timeout=30).json()["paths"]
    return sorted(
        (method.upper(), path)
        for path, ops in paths.items()
        if path.startswith("/api/")
        for method in ops
    )


def body_for(method: str, path: str, connection: dict[str, Any]) -> dict[str, Any] | None:
    return {
        ("POST", "/api/v1/tenants"): {"id": "delta", "name": "Delta"},
        ("PATCH", "/api/v1/tenants/{tenant_id}"): {"active": False},
        ("PUT", "/api/v1/tenants/{tenant_id}/connection"): connection,
        ("POST", "/api/v1/tenants/{tenant_id}/tokens"): {"name": "mine now"},
    }.get((method, path))


def call(
    http: httpx.Client, method: str, path: str, tenant: str, token_id: str, body: Any
) -> httpx.Response:
    url = path.replace("{tenant_id}", tenant).replace("{token_id}", token_id)
    return http.request(method, url, json=body)


def tenant_token_sweep(api: str, db: str, settings: Settings) -> dict[str, Any]:
    """A's token against every operation; returns the figures, asserts as it goes."""
    r = run_cli(settings, "tokens", "create", "alpha", "--name", "alpha storefront")
    assert r.returncode == 0, r.stderr
    (token_a,) = [line for line in r.stdout.splitlines() if line.startswith("mxs_")]
    EVIDENCE.secret("a tenant API token", token_a)
    operator = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {API_TOKEN}"})
    tenant_a = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token_a}"})
    checks = 0
    with operator, tenant_a:
        made = operator.post("/api/v1/tenants/beta/tokens", json={"name": "beta bridge"})
        assert made.status_code == 201, made.text
        token_b = EVIDENCE.secret("a tenant API token", made.json()["token"])
        beta_before = {
            u: operator.get(u).json()
            for u in ("/api/v1/tenants/beta", "/api/v1/tenants/beta/connection")
        }
        conn_a = operator.get("/api/v1/tenants/alpha/connection").json()
        # A's settings, stored credentials kept: a harmless write for A, a takeover for B.
        connection = {"provider": conn_a["provider"], "settings": conn_a["settings"]}

        ops = operations(api)
        unplaced = [
            op
            for op in ops
            if op not in OPERATOR_ONLY | OWN_ONLY_LISTS and "{tenant_id}" not in op[1]
        ]
        assert not unplaced, f"decide what a tenant token may do with {unplaced}"
        assert len(ops) >= 17, ops

        for method, path in ops:
            body = body_for(method, path, connection)
            if "{tenant_id}" in path:
                # B's route, and an unknown tenant's: the same 404, the same sentence.
                beta = call(tenant_a, method, path, "beta", made.json()["id"], body)
                ghost = call(tenant_a, method, path, "gamma", made.json()["id"], body)
                assert (beta.status_code, ghost.status_code) == (404, 404), (method, path)
                assert beta.json() == {"detail": "tenant 'beta' does not exist"}, beta.text
                assert ghost.json() == {"detail": "tenant 'gamma' does not exist"}, ghost.text
                checks += 2
            if (method, path) in OPERATOR_ONLY:
                r = call(tenant_a, method, path, "alpha", made.json()["id"], body)
                assert r.status_code == 403, (method, path, r.status_code, r.text)
                assert "operator's API_TOKEN" in r.json()["detail"]
                checks += 1
            elif "{tenant_id}" in path:
                r = call(tenant_a, method, path, "alpha", made.json()["id"], body)
                assert r.is_success, (method, path, r.status_code, r.text)
                checks += 1
        # A's connection: credentials only; where and how fast we connect is the operator's.
        moved = {**connection, "settings": {**conn_a["settings"], "base_url": "http://10.0.0.1/"}}
        kept = operator.get("/api/v1/tenants/alpha/connection").json()
        r = tenant_a.put("/api/v1/tenants/alpha/connection", json=moved)
        assert r.status_code == 403, r.text
        assert operator.get("/api/v1/tenants/alpha/connection").json() == kept
        # Even a body the API would refuse: B's route is a 404 before anything is read.
        r = tenant_a.put(
            "/api/v1/tenants/beta/connection",
            json={"provider": "bling", "settings": {"base_url": "ftp://x"}},
        )
        assert r.status_code == 404

        # A's reads answer what the operator's do for A.
        for url in ("/api/v1/tenants/alpha/quarantine", "/api/v1/tenants/alpha/connection"):
            assert tenant_a.get(url).json() == operator.get(url).json(), url
        status = tenant_a.get("/api/v1/tenants/alpha/status").json()
        assert status["tenantId"] == "alpha" and {s["stream"] for s in status["streams"]}
        listed = tenant_a.get("/api/v1/tenants").json()
        assert listed["total"] == 1 and [t["id"] for t in listed["items"]] == ["alpha"]
        runs = tenant_a.get("/api/v1/job-runs", params={"limit": 1000}).json()
        assert runs and {r["tenantId"] for r in runs} == {"alpha"}, runs
        assert tenant_a.get("/api/v1/job-runs", params={"tenant": "beta"}).json() == []
        everyone = operator.get("/api/v1/job-runs", params={"limit": 1000}).json()
        assert {r["tenantId"] for r in everyone} >= {"alpha", "beta"}
        checks += 7

        # B is as it was, and B's own token still opens B.
        for url, before in beta_before.items():
            assert operator.get(url).json() == before, url
        beta_self = httpx.get(
            f"{api}/api/v1/tenants/beta", headers={"Authorization": f"Bearer {token_b}"}
        )
        assert beta_self.status_code == 200

        # Revoked (API and CLI) and expired tokens: 401, like an unknown one.
        spare = operator.post("/api/v1/tenants/alpha/tokens", json={"name": "spare"}).json()
        expiring = operator.post(
            "/api/v1/tenants/alpha/tokens", json={"name": "trial", "expiresInDays": 1}
        ).json()
        for t in (spare, expiring):
            EVIDENCE.secret("a tenant API token", t["token"])
            assert httpx.get(f"{api}/api/v1/tenants", headers=bearer(t["token"])).is_success
        assert operator.delete(f"/api/v1/tenants/alpha/tokens/{spare['id']}").status_code == 204
        with psycopg.connect(db, autocommit=True) as c:
            c.execute(
                """UPDATE "ApiToken" SET "expiresAt" = now() - interval '1 second'
                   WHERE id = %s""",
                (expiring["id"],),
            )
        cli_id = next(
            t["id"]
            for t in operator.get("/api/v1/tenants/alpha/tokens").json()["items"]
            if t["name"] == "alpha storefront"
        )
        assert run_cli(settings, "tokens", "revoke", cli_id).returncode == 0
        for t in (spare["token"], expiring["token"], token_a, "mxs_" + "0" * 43):
            r = httpx.get(f"{api}/api/v1/tenants/alpha", headers=bearer(t))
            assert r.status_code == 401 and r.json()["detail"] == "missing or wrong bearer token"
            checks += 1

    # Hashes only: no token, nor the secret part of one, anywhere in the database.
    plain = [token_a, token_b or "", spare["token"], expiring["token"]]
    with psycopg.connect(db) as c:
        hashes = {str(r[0]) for r in c.execute('SELECT "tokenHash" FROM "ApiToken"').fetchall()}
    assert hashes == {hashlib.sha256(t.encode()).hexdigest() for t in plain}
    dump = dump_database(db, "isolation-tokens").read_text(errors="replace")
    assert not [t for t in plain if t in dump or t[12:] in dump]
    return {"token_checks": checks, "operations_swept": len(ops)}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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

        # Tenant tokens: A's token against every operation of the API.
        sweep = tenant_token_sweep(api, clean_db, fast)
        b_after_sweep = fingerprint(clean_db, "beta")

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
            "records (quarantined for B only); A's tenant token swept every operation of "
            "the OpenAPI document: 404 for every route of B, 403 for operator routes, 401 "
            "once revoked or expired"
        ),
        **sweep,
    )
    assert after_b == before_b, {t: (before_b[t], after_b[t]) for t in TABLES}
    assert b_after_sweep == after_b, {t: (after_b[t], b_after_sweep[t]) for t in TABLES}
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
