"""The batch writer against real PostgreSQL: inserts, updates, unchanged rows, the
older-timestamp guard, order lines, deletion sweep, tenant isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from erp_sync.canonical import Product, SalesOrder, SalesOrderLine
from erp_sync.models import ErpConnection
from erp_sync.runtime import Runtime
from erp_sync.sync import writer
from tests.jobs.helpers import add_tenant

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def product(i: int, price: str = "10.00", updated: datetime = T0, **extra: Any) -> writer.Row:
    raw = {"id": i, "nome": f"Produto {i}", "preco": price, **extra}
    record = Product(
        externalId=str(i), sku=f"SKU{i}", name=f"Produto {i}", listPrice=Decimal(price),
        sourceUpdatedAt=updated,
    )  # fmt: skip
    return writer.Row(record, raw, writer.content_hash(raw))


async def connection_id(rt: Runtime, tenant: str) -> str:
    async with rt.unit_of_work() as session:
        from sqlalchemy import select

        return (
            await session.execute(select(ErpConnection.id).where(ErpConnection.tenantId == tenant))
        ).scalar_one()


@pytest.fixture
async def acme(rt: Runtime) -> str:
    await add_tenant(rt, "acme")
    return await connection_id(rt, "acme")


async def write(
    rt: Runtime, stream: str, tenant: str, conn: str, rows: list[writer.Row]
) -> writer.WriteCounts:
    async with rt.unit_of_work() as session:
        return await writer.upsert(session, stream, tenant, conn, rows)


def products(db: str, tenant: str = "acme") -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(db) as c:
        rows = c.execute(
            'SELECT "externalId", name, "listPrice", "deletedAt" IS NOT NULL, '
            "jsonb_typeof(raw), raw->>'nome' "
            'FROM "Product" WHERE "tenantId" = %s',
            (tenant,),
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


async def test_insert_update_unchanged_counts(rt: Runtime, acme: str, clean_db: str) -> None:
    counts = await write(rt, "products", "acme", acme, [product(i) for i in range(1, 6)])
    assert (counts.inserted, counts.updated, counts.unchanged) == (5, 0, 0)
    rows = [product(i) for i in range(1, 6)]
    rows[2] = product(3, price="12.34", updated=T0 + timedelta(hours=1))
    rows.append(product(6))
    counts = await write(rt, "products", "acme", acme, rows)
    assert (counts.inserted, counts.updated, counts.unchanged) == (1, 1, 4)
    stored = products(clean_db)
    assert len(stored) == 6
    assert stored["3"][1] == Decimal("12.3400")
    # the raw payload is stored as a JSON object, not a JSON string
    assert stored["1"][3] == "object" and stored["1"][4] == "Produto 1"


async def test_an_older_source_timestamp_never_overwrites_a_newer_one(
    rt: Runtime, acme: str, clean_db: str
) -> None:
    await write(rt, "products", "acme", acme, [product(1, "20.00", T0 + timedelta(days=1))])
    counts = await write(rt, "products", "acme", acme, [product(1, "10.00", T0)])
    assert (counts.updated, counts.unchanged) == (0, 1)
    assert products(clean_db)["1"][1] == Decimal("20.0000")


async def test_duplicate_ids_in_one_batch_are_written_once(
    rt: Runtime, acme: str, clean_db: str
) -> None:
    counts = await write(rt, "products", "acme", acme, [product(1, "1.00"), product(1, "2.00")])
    assert counts.inserted == 1
    assert products(clean_db)["1"][1] == Decimal("2.0000")


async def test_tenants_never_see_each_others_rows(rt: Runtime, acme: str, clean_db: str) -> None:
    await add_tenant(rt, "beta")
    beta = await connection_id(rt, "beta")
    await write(rt, "products", "acme", acme, [product(1, "1.00")])
    await write(rt, "products", "beta", beta, [product(1, "9.99")])
    assert products(clean_db, "acme")["1"][1] == Decimal("1.0000")
    assert products(clean_db, "beta")["1"][1] == Decimal("9.9900")


async def test_order_lines_are_replaced_with_their_order(
    rt: Runtime, acme: str, clean_db: str
) -> None:
    def order(lines: int, total: str) -> writer.Row:
        raw = {"id": 7, "lines": lines, "total": total}
        record = SalesOrder(
            externalId="7", number="N7", total=Decimal(total),
            lines=[
                SalesOrderLine(
                    lineNumber=n, sku=f"S{n}", quantity=Decimal("2"),
                    unitPrice=Decimal("1.50"), total=Decimal("3.00"),
                )
                for n in range(1, lines + 1)
            ],
        )  # fmt: skip
        return writer.Row(record, raw, writer.content_hash(raw))

    await write(rt, "sales_orders", "acme", acme, [order(3, "9.00")])
    await write(rt, "sales_orders", "acme", acme, [order(2, "6.00")])
    with psycopg.connect(clean_db) as c:
        lines = c.execute(
            'SELECT "lineNumber", quantity FROM "SalesOrderLine" ORDER BY 1'
        ).fetchall()
    assert lines == [(1, Decimal("2.000000")), (2, Decimal("2.000000"))]


async def test_full_sync_sweep_marks_unseen_rows_deleted(
    rt: Runtime, acme: str, clean_db: str
) -> None:
    await write(rt, "products", "acme", acme, [product(i) for i in range(1, 6)])
    async with rt.unit_of_work() as session:
        await writer.mark_seen(session, "run-1", ["1", "2", "4"])
        await writer.mark_seen(session, "run-1", ["4", "5"])  # a repeated page is harmless
        deleted = await writer.sweep_deleted(session, "products", "acme", acme, "run-1")
    assert deleted == 1
    stored = products(clean_db)
    assert [k for k, v in sorted(stored.items()) if v[2]] == ["3"]
    # a deleted record that reappears is undeleted
    await write(rt, "products", "acme", acme, [product(3)])
    assert products(clean_db)["3"][2] is False


async def test_a_first_load_without_lookups_refuses_a_stored_row_and_keeps_nothing(
    rt: Runtime, acme: str, clean_db: str
) -> None:
    """A first load skips the stored-hash lookup and the savepoint: a row already stored
    aborts the whole write (Collision, nothing of it kept), and the same rows written
    again with the lookup land, changing only what changed."""
    writes = writer.PageWriter(rt.engine)

    def upsert(rows: list[writer.Row], *, prefilter: bool) -> Any:
        return lambda session: writer.upsert(
            session, "products", "acme", acme, rows, prefilter=prefilter
        )

    try:
        first = await writes.transaction(upsert([product(1), product(2)], prefilter=False))
        assert first.inserted == 2

        async def first_new_then_stored(session: Any) -> None:
            await upsert([product(3)], prefilter=False)(session)  # new: goes in
            await upsert([product(1)], prefilter=False)(session)  # stored: aborts all

        with pytest.raises(writer.Collision):
            await writes.transaction(first_new_then_stored)
        assert sorted(products(clean_db)) == ["1", "2"]  # product 3 not kept either
        page = [product(3), product(1), product(2, "5.55")]
        assert products(clean_db)["2"][1] == Decimal("10.0000")
        again = await writes.transaction(upsert(page, prefilter=True))
    finally:
        await writes.release()
    assert (again.inserted, again.updated, again.unchanged) == (1, 1, 1)
    assert products(clean_db)["2"][1] == Decimal("5.5500")


async def test_a_kept_connection_that_died_is_replaced_and_the_write_runs_again(
    rt: Runtime, acme: str, clean_db: str
) -> None:
    """PostgreSQL restarted (here: the backend killed) while the sync read the ERP: the
    next write runs on a new connection, once, with nothing lost or doubled."""
    writes = writer.PageWriter(rt.engine)
    runs = 0

    async def write_rows(session: Any, rows: list[writer.Row]) -> writer.WriteCounts:
        nonlocal runs
        runs += 1
        return await writer.upsert(session, "products", "acme", acme, rows)

    try:
        pid = await writes.transaction(
            lambda s: _backend_pid(s)  # the connection the writer keeps
        )
        await writes.transaction(lambda s: write_rows(s, [product(1)]))
        assert await writes.transaction(_backend_pid) == pid  # kept between writes
        with psycopg.connect(clean_db, autocommit=True) as c:
            assert c.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        runs = 0
        counts = await writes.transaction(lambda s: write_rows(s, [product(2), product(3)]))
        assert await writes.transaction(_backend_pid) != pid
    finally:
        await writes.release()
    assert counts.inserted == 2 and runs == 1  # found dead before its body ran
    assert sorted(products(clean_db)) == ["1", "2", "3"]


async def _backend_pid(session: Any) -> int:
    from sqlalchemy import text

    return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
