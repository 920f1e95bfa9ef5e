"""The sync engine end to end: the Bling sandbox over real HTTP, the real connector,
real PostgreSQL and Redis. What lands must equal what the sandbox holds."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from sqlalchemy import event, select

from erp_sync.connectors.base import Page
from erp_sync.jobs.names import SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.service import trigger_sync
from erp_sync.models import ErpConnection, JobRun
from erp_sync.runtime import Runtime
from erp_sync.sandbox.bling import RunningSandbox
from erp_sync.settings import Settings
from erp_sync.sync.engine import MappedPage, PageFeed, sync_tenant
from tests.bling_support import start_sandbox
from tests.conftest import ROOT
from tests.jobs.helpers import add_tenant, sync_until_failed, wait_until
from tests.jobs.test_processes import worker_env

SIZES = {"products": 240, "customers": 60, "orders": 50}


@pytest.fixture
def sb() -> Iterator[RunningSandbox]:
    with start_sandbox(**SIZES) as sandbox:
        yield sandbox


def truth(sb: RunningSandbox, stream: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{sb.root_url}/__sandbox/truth", params={"stream": stream}, timeout=60)
    r.raise_for_status()
    return [orjson.loads(line) for line in r.content.splitlines() if line]


def admin(sb: RunningSandbox, path: str, body: dict[str, Any]) -> Any:
    r = httpx.post(f"{sb.root_url}/__sandbox/{path}", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


def money(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value)).quantize(Decimal("0.01"))


def stored_products(db: str, tenant: str = "acme") -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(db) as c:
        rows = c.execute(
            'SELECT "externalId", sku, name, "listPrice", "costPrice", active, '
            '"deletedAt" IS NOT NULL FROM "Product" WHERE "tenantId" = %s',
            (tenant,),
        ).fetchall()
    return {r[0]: (r[1], r[2], money(r[3]), money(r[4]), r[5], r[6]) for r in rows}


def expected_products(sb: RunningSandbox) -> dict[str, tuple[Any, ...]]:
    return {
        t["externalId"]: (
            t["sku"],
            t["name"],
            money(t["listPrice"]),
            money(t["costPrice"]),
            t["active"],
            False,
        )
        for t in truth(sb, "products")
        if not t["malformed"]
    }


def count(db: str, table: str, tenant: str = "acme", live: bool = True) -> int:
    where = ' AND "deletedAt" IS NULL' if live and table != "SalesOrderLine" else ""
    with psycopg.connect(db) as c:
        return int(
            c.execute(
                f'SELECT count(*) FROM "{table}" WHERE "tenantId" = %s{where}', (tenant,)
            ).fetchone()[0]
        )


async def _noop(_: dict[str, Any]) -> None:
    return None


async def sync(
    rt: Runtime, mode: str = "incremental", tenant: str = "acme", **kw: Any
) -> dict[str, Any]:
    return await sync_tenant(rt, tenant, streams=None, mode=mode, progress=_noop, **kw)


async def test_first_sync_lands_everything_equal_to_the_sandbox(
    rt: Runtime, sb: RunningSandbox, clean_db: str
) -> None:
    await add_tenant(rt, "acme", sandbox=sb)
    result = await sync(rt, "full")
    streams = result["streams"]
    assert streams["products"]["inserted"] == SIZES["products"]
    assert stored_products(clean_db) == expected_products(sb)
    stock = truth(sb, "stock_levels")
    assert count(clean_db, "StockLevel") == len(stock) == streams["stock_levels"]["inserted"]
    with psycopg.connect(clean_db) as c:
        got = dict(c.execute('SELECT "externalId", quantity FROM "StockLevel"').fetchall())
    assert {k: money(v) for k, v in got.items()} == {
        f"{t['productExternalId']}:{t['warehouseExternalId']}": money(t["quantity"]) for t in stock
    }
    customers = truth(sb, "customers")
    assert count(clean_db, "Customer") == len(customers)
    with psycopg.connect(clean_db) as c:
        docs = dict(c.execute('SELECT "externalId", document FROM "Customer"').fetchall())
    assert docs == {t["externalId"]: t["document"] for t in customers}
    orders = truth(sb, "sales_orders")
    assert count(clean_db, "SalesOrder") == len(orders)
    assert count(clean_db, "SalesOrderLine") == sum(len(o["lines"]) for o in orders)
    with psycopg.connect(clean_db) as c:
        totals = dict(c.execute('SELECT "externalId", total FROM "SalesOrder"').fetchall())
    assert {k: money(v) for k, v in totals.items()} == {
        o["externalId"]: money(o["total"]) for o in orders
    }
    # a second sync right after changes nothing
    again = (await sync(rt))["streams"]
    assert all(s["inserted"] == 0 and s["updated"] == 0 for s in again.values()), again


async def test_incremental_sync_picks_up_exactly_the_changes(
    rt: Runtime, sb: RunningSandbox, clean_db: str
) -> None:
    await add_tenant(rt, "acme", sandbox=sb)
    await sync(rt, "full")
    changed = admin(sb, "mutate", {"price_changes": 4, "new_products": 3, "customer_changes": 2})
    result = (await sync(rt))["streams"]
    assert result["products"]["inserted"] == 3
    assert result["products"]["updated"] == 4
    assert result["customers"]["updated"] == 2
    assert stored_products(clean_db) == expected_products(sb)
    assert changed  # the sandbox said what it changed


async def test_a_full_sync_marks_deleted_records(
    rt: Runtime, sb: RunningSandbox, clean_db: str
) -> None:
    await add_tenant(rt, "acme", sandbox=sb)
    await sync(rt, "full")
    admin(sb, "mutate", {"deleted_products": 2})
    incremental = (await sync(rt))["streams"]["products"]
    assert incremental["deleted"] == 0  # an incremental read cannot see deletions
    full = (await sync(rt, "full"))["streams"]["products"]
    assert full["deleted"] == 2
    live = {k for k, v in stored_products(clean_db).items() if not v[5]}
    assert live == set(expected_products(sb))
    assert count(clean_db, "Product", live=False) == SIZES["products"]  # kept, flagged


async def test_malformed_records_are_quarantined_and_the_rest_lands(
    rt: Runtime, clean_db: str
) -> None:
    with start_sandbox(**SIZES, malformed_rate=0.05) as sb:
        await add_tenant(rt, "acme", sandbox=sb)
        result = (await sync(rt, "full"))["streams"]
        bad = [t for t in truth(sb, "products") if t["malformed"]]
        assert bad, "the sandbox should have broken some products"
        assert result["products"]["quarantined"] == len(bad)
        assert stored_products(clean_db) == expected_products(sb)
        with psycopg.connect(clean_db) as c:
            rows = c.execute(
                'SELECT "externalId", reason FROM "QuarantinedRecord" WHERE stream = %s',
                ("products",),
            ).fetchall()
        assert {r[0] for r in rows if r[0]} <= {t["externalId"] for t in bad}
        assert len(rows) == len(bad) and all(r[1] for r in rows)


async def test_a_rejected_refresh_marks_the_connection_needs_reauth(
    rt: Runtime, sb: RunningSandbox, queues: JobQueues, start_worker: Any
) -> None:
    await add_tenant(rt, "acme", sandbox=sb)
    admin(sb, "faults", {"reject_refresh": True, "expire_tokens": True})
    await start_worker()
    conn, runs = await sync_until_failed(rt, queues)
    assert conn.status == "NEEDS_REAUTH"
    assert len(runs) == 1, "a refused refresh must not be retried"
    assert "re-authoris" in str(runs[0].error) and conn.lastError == runs[0].error


async def test_a_rotated_refresh_token_is_stored_and_reused(
    rt: Runtime, sb: RunningSandbox
) -> None:
    await add_tenant(rt, "acme", sandbox=sb)

    async def stored() -> dict[str, Any]:
        async with rt.unit_of_work() as s:
            conn = (
                await s.execute(select(ErpConnection).where(ErpConnection.tenantId == "acme"))
            ).scalar_one()
            return rt.box.decrypt_json(str(conn.credentials))

    before = await stored()
    admin(sb, "faults", {"expire_tokens": True})
    await sync(rt)
    after = await stored()
    assert after["refresh_token"] != before["refresh_token"]
    assert after["access_token"] != before["access_token"]
    # the old refresh token is dead at the ERP; the stored one works
    cfg = sb.config
    old = httpx.post(
        f"{sb.base_url}/oauth/token", auth=(cfg.client_id, cfg.client_secret),
        data={"grant_type": "refresh_token", "refresh_token": before["refresh_token"]},
    )  # fmt: skip
    assert old.status_code in (400, 401)
    admin(sb, "faults", {"expire_tokens": True})
    await sync(rt)  # refreshes again with the stored (rotated) token
    assert (await stored())["refresh_token"] != after["refresh_token"]


async def test_429s_and_5xx_bursts_are_survived(rt: Runtime, clean_db: str) -> None:
    """Three tenants on one Bling account sync at once against a sandbox enforcing 3 req/s
    and failing 30 % of the answers: the governor keeps them under the limit, retries absorb
    the 5xx, and everything lands."""
    with start_sandbox(
        products=6, customers=2, orders=2, history_days=200, rate_limit=3, error_rate=0.3
    ) as sb:
        for t in ("a", "b", "c"):
            await add_tenant(rt, t, sandbox=sb)
        await asyncio.gather(*(sync(rt, "full", tenant=t) for t in ("a", "b", "c")))
        stats = httpx.get(f"{sb.root_url}/__sandbox/stats").json()
        for t in ("a", "b", "c"):
            assert count(clean_db, "Product", tenant=t) == 6
        assert stats["rate_limited"] == 0, stats
        assert stats.get("injected_errors", stats.get("errors", 1)) > 0, stats


class Interrupted(Exception):
    pass


async def interrupted_full_sync(rt: Runtime) -> None:
    """A full sync that stops after its first write of products (a crash, a deploy)."""

    async def stop(progress: dict[str, Any]) -> None:
        if progress["stream"] == "products":
            raise Interrupted

    with pytest.raises(Interrupted):
        await sync_tenant(rt, "acme", streams=None, mode="full", progress=stop)


def full_run(db: str, stream: str = "products") -> tuple[bool, bool, int]:
    """(a full sync is in progress, it began on an empty table, ids recorded as seen)."""
    with psycopg.connect(db) as c:
        state = c.execute(
            'SELECT "fullRunId" IS NOT NULL, "fullRunFromEmpty" FROM "SyncState" '
            "WHERE \"tenantId\" = 'acme' AND stream = %s",
            (stream,),
        ).fetchone()
        seen = c.execute('SELECT count(*) FROM "SyncSeen"').fetchone()[0]
    return bool(state[0]), bool(state[1]), int(seen)


async def test_a_full_sync_that_began_on_an_empty_table_records_no_seen_ids(
    rt: Runtime, clean_db: str
) -> None:
    """Every row is its own: nothing can be missing from what it read, in any of its jobs;
    a later full sync (the table no longer empty) records them and finds deletions."""
    with start_sandbox(products=400, customers=2, orders=2, latency_ms=40) as sb:
        await add_tenant(rt, "acme", sandbox=sb)
        await interrupted_full_sync(rt)
        assert 0 < count(clean_db, "Product") < 400
        assert full_run(clean_db) == (True, True, 0)
        rest = (await sync(rt))["streams"]["products"]  # the next job resumes it
        assert rest["complete"] and rest["deleted"] == 0
        assert full_run(clean_db) == (False, False, 0)
        assert stored_products(clean_db) == expected_products(sb)

        admin(sb, "mutate", {"deleted_products": 2})
        await interrupted_full_sync(rt)
        in_progress, from_empty, seen = full_run(clean_db)
        assert in_progress and not from_empty and seen > 0
        rest = (await sync(rt))["streams"]["products"]
        assert rest["deleted"] == 2
        assert full_run(clean_db) == (False, False, 0)
        live = {k for k, v in stored_products(clean_db).items() if not v[5]}
        assert live == set(expected_products(sb))


async def test_a_first_load_that_meets_a_row_stored_meanwhile_still_lands_the_erps_truth(
    rt: Runtime, clean_db: str
) -> None:
    """A first load writes without looking rows up. A row of a page still to come, stored
    meanwhile (another write, or a record the ERP listed twice), makes that write fail
    as a whole; the engine writes it again with the lookup, and the ERP's version wins."""
    with start_sandbox(products=600, customers=2, orders=2, latency_ms=30) as sb:
        await add_tenant(rt, "acme", sandbox=sb)
        last_id = min(truth(sb, "products"), key=lambda t: int(t["externalId"]))["externalId"]
        planted = False

        async def plant(progress: dict[str, Any]) -> None:
            # After the first write (the highest ids: Bling lists are read downwards).
            nonlocal planted
            if progress["stream"] == "products" and not planted:
                planted = True
                with psycopg.connect(clean_db) as c:
                    c.execute(
                        'INSERT INTO "Product" ("tenantId", "connectionId", "externalId", '
                        'sku, name, active, raw, "contentHash", "syncedAt") '
                        "SELECT \"tenantId\", id, %s, 'OLD', 'Stale copy', true, '{}', "
                        "'\\x00', now() FROM \"ErpConnection\" WHERE \"tenantId\" = 'acme'",
                        (last_id,),
                    )

        result = await sync_tenant(rt, "acme", streams=["products"], mode="full", progress=plant)
        products = result["streams"]["products"]
        assert planted and products["complete"], products
        assert (products["inserted"], products["updated"]) == (599, 1), products
        assert stored_products(clean_db) == expected_products(sb)


async def test_a_sync_never_holds_two_pooled_connections_at_once(
    rt: Runtime, clean_db: str
) -> None:
    """A first load keeps one connection while its writes follow each other, and gives it
    back before anything else takes one (planner statistics, the job's bookkeeping): a
    sync that held one while waiting for another would, ten at once, drain the pool
    (5 + 5) and wait for each other until the pool's timeout failed them all."""
    held = peak = 0

    def checkout(*_: Any) -> None:
        nonlocal held, peak
        held += 1
        peak = max(peak, held)

    def checkin(*_: Any) -> None:
        nonlocal held
        held -= 1

    pool = rt.engine.sync_engine.pool
    with start_sandbox(products=3000, customers=2, orders=2) as sb:
        await add_tenant(rt, "acme", sandbox=sb)
        event.listen(pool, "checkout", checkout)
        event.listen(pool, "checkin", checkin)
        try:
            result = await sync(rt, "full")
        finally:
            event.remove(pool, "checkout", checkout)
            event.remove(pool, "checkin", checkin)
    assert result["streams"]["products"]["inserted"] == 3000  # ANALYZEd at 1,000 rows
    assert (peak, held) == (1, 0)


async def test_a_kill_between_pages_resumes_without_duplicates_or_gaps(
    rt: Runtime, fast: Settings, queues: JobQueues, clean_db: str, start_worker: Any
) -> None:
    with start_sandbox(products=900, customers=5, orders=5, latency_ms=40) as sb:
        await add_tenant(rt, "acme", sandbox=sb)
        proc = subprocess.Popen(
            [sys.executable, "-m", "erp_sync.cli.main", "worker"], cwd=ROOT, env=worker_env(fast),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            job = await trigger_sync(rt, queues, "acme", full=True)

            async def some_pages() -> bool:
                return 0 < count(clean_db, "Product") < 900

            await wait_until(some_pages, timeout=60, what="the first pages to land")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            with contextlib.suppress(Exception):
                proc.kill()
        landed_before = count(clean_db, "Product")
        assert 0 < landed_before < 900
        await start_worker()

        async def done() -> bool:
            return await queues.job_state(SYNC_QUEUE, job.job_id) == "completed"

        await wait_until(done, timeout=90, what="the recovered job to finish")
        assert stored_products(clean_db) == expected_products(sb)
        with psycopg.connect(clean_db) as c:
            dupes = c.execute(
                'SELECT count(*) - count(DISTINCT "externalId") FROM "Product" '
                'WHERE "tenantId" = %s',
                ("acme",),
            ).fetchone()[0]
        assert dupes == 0


@pytest.mark.parametrize("mode", ["full", "incremental"])
async def test_jobs_that_stop_after_every_write_read_each_record_once(
    rt: Runtime, sb: RunningSandbox, clean_db: str, mode: str
) -> None:
    """Fairness without waste: with no time budget at all, each job still writes one
    batch (so a sync always moves on), and a job that stops right after a stream's last
    page does not leave its continuation a new read of the whole stream (stock, which
    Bling cannot filter by change, is read whole by incremental syncs too)."""
    await add_tenant(rt, "acme", sandbox=sb)
    if mode == "incremental":
        await sync(rt, "full")
    streams: list[str] | None = None
    fetched: dict[str, int] = {}
    jobs = 0
    while jobs < 40:
        jobs += 1
        result = await sync_tenant(
            rt, "acme", streams=streams, mode=mode, progress=_noop, budget_seconds=0
        )
        for name, got in result["streams"].items():
            fetched[name] = fetched.get(name, 0) + got["fetched"]
        streams = result.get("continues")
        if not streams:
            break
    assert not streams, f"the full sync did not end in {jobs} jobs; read so far: {fetched}"
    assert fetched["stock_levels"] == len(truth(sb, "stock_levels")), fetched
    if mode == "full":
        products = len(truth(sb, "products"))
        assert fetched["products"] == products, fetched  # every product read once, no more
    assert stored_products(clean_db) == expected_products(sb)
    # One write per job, plus one job per stream to find its read over at most.
    assert jobs <= sum(-(-n // 100) for n in fetched.values()) + len(fetched), (jobs, fetched)


async def test_a_large_tenant_yields_to_the_others(
    rt: Runtime, queues: JobQueues, clean_db: str, start_worker: Any
) -> None:
    """Fairness: a job works for its time budget, saves its cursor and re-enqueues the rest
    behind the tenants already waiting; the large tenant still ends up complete."""
    with (
        start_sandbox(products=400, customers=2, orders=2, latency_ms=60) as big,
        start_sandbox(products=5, customers=2, orders=2) as small,
    ):
        await add_tenant(rt, "big", sandbox=big)
        await add_tenant(rt, "small", sandbox=small)
        await start_worker(worker_concurrency=1, sync_job_budget_seconds=1.0)
        first = await trigger_sync(rt, queues, "big", full=True)
        await asyncio.sleep(0.2)
        other = await trigger_sync(rt, queues, "small")

        async def big_done() -> bool:
            async with rt.unit_of_work() as s:
                rows = (
                    (await s.execute(select(JobRun).where(JobRun.tenantId == "big")))
                    .scalars()
                    .all()
                )
            return (
                bool(rows)
                and all(r.status == "COMPLETED" for r in rows)
                and not any((r.stats or {}).get("continues") for r in rows[-1:])
            )

        await wait_until(big_done, timeout=120, what="the big tenant to finish in several jobs")
        async with rt.unit_of_work() as s:
            runs = (await s.execute(select(JobRun).order_by(JobRun.startedAt))).scalars().all()
        order = [(r.tenantId, r.jobId) for r in runs]
        assert order[0] == ("big", first.job_id)
        assert runs[0].stats and runs[0].stats.get("continues"), runs[0].stats
        assert runs[0].stats.get("continuation")
        # the small tenant ran before the big one's continuation
        assert order[1] == ("small", other.job_id), order
        assert sum(1 for t, _ in order if t == "big") >= 2
        assert count(clean_db, "Product", tenant="big") == 400
        assert stored_products(clean_db, "big") == expected_products(big)


# ---------------------------------------------------------------- group commit


def _pages(n: int, size: int, error: Exception | None = None) -> Any:
    async def gen() -> Any:
        for i in range(n):
            yield Page([{"id": i * size + j} for j in range(size)], {"page": i})
            await asyncio.sleep(0)
        if error is not None:
            raise error

    return gen()


def _as_mapped(page: Any) -> Any:
    return MappedPage([], [], page.cursor, len(page.records))


async def test_pages_waiting_behind_a_slow_write_share_one_transaction() -> None:
    """When the ERP answers faster than the database writes, the pages already read go
    in one write (capped), in order, and the last cursor is the last page's."""
    feed = PageFeed(_pages(12, 100), _as_mapped, depth=10)
    try:
        await asyncio.sleep(0.05)  # a slow write: the reader fills the read-ahead
        first = await feed.batch(max_records=500)
        assert first is not None
        assert [p.cursor for p in first] == [{"page": i} for i in range(5)]
        batches = [first]
        while (batch := await feed.batch(max_records=500)) is not None:
            assert sum(p.fetched for p in batch) <= 500
            batches.append(batch)
    finally:
        await feed.aclose()
    cursors = [p.cursor for b in batches for p in b]
    assert cursors == [{"page": i} for i in range(12)]  # every page once, in order


async def test_an_error_after_some_pages_comes_after_those_pages_are_written() -> None:
    feed = PageFeed(_pages(3, 10, error=RuntimeError("ERP broke")), _as_mapped, depth=10)
    try:
        await asyncio.sleep(0.05)
        batch = await feed.batch()
        assert batch is not None and [p.cursor for p in batch] == [{"page": i} for i in range(3)]
        with pytest.raises(RuntimeError, match="ERP broke"):
            await feed.batch()
    finally:
        await feed.aclose()


async def test_a_slow_erp_commits_every_page_alone() -> None:
    """Pages that arrive one at a time are written one at a time (a crash then repeats
    at most one page)."""

    async def slow() -> Any:
        for i in range(4):
            await asyncio.sleep(0.02)
            yield Page([{"id": i}], {"page": i})

    feed = PageFeed(slow(), _as_mapped)
    sizes = []
    try:
        while (batch := await feed.batch()) is not None:
            sizes.append(len(batch))
    finally:
        await feed.aclose()
    assert sizes == [1, 1, 1, 1]
