"""Writer benchmark: our batch upsert vs plain binary COPY, same rows, same run.

    .venv/bin/python -m bench.writer --rows 1000000 [--batch 1000]

Creates its own database (erp_sync_bench), migrates it, and appends the figures to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from bench.common import checkpoint, drop_database, fresh_database, record
from erp_sync.canonical import Product
from erp_sync.models import ErpConnection, Tenant
from erp_sync.runtime import open_runtime
from erp_sync.settings import Settings
from erp_sync.sync import writer
from erp_sync.sync.engine import WRITE_BATCH_RECORDS

DB = "erp_sync_bench"


def make_rows(start: int, count: int) -> list[writer.Row]:
    rows = []
    for i in range(start, start + count):
        raw = {
            "id": i, "codigo": f"SKU-{i:08d}",
            "nome": f"Parafuso Sextavado Inox M{i % 20} lote {i}",
            "preco": round(10 + (i % 1000) / 7, 2), "precoCusto": round(5 + (i % 500) / 9, 2),
            "situacao": "A", "tipo": "P", "formato": "S", "unidade": "UN", "gtin": f"789{i:010d}",
            "marca": "Marca Boa", "tributacao": {"ncm": "73181500", "origem": 0},
            "descricaoCurta": "Parafuso de aço inoxidável para uso geral em montagens",
            "dimensoes": {"largura": 1.5, "altura": 2.5, "profundidade": 3.5},
        }  # fmt: skip
        record = Product(
            externalId=str(i), sku=raw["codigo"], name=raw["nome"], gtin=raw["gtin"],
            ncm="73181500",
            unit="UN", brand="Marca Boa", listPrice=Decimal(str(raw["preco"])),
            costPrice=Decimal(str(raw["precoCusto"])), active=True,
            sourceUpdatedAt=datetime(2026, 1, 1, tzinfo=UTC),
        )  # fmt: skip
        # As the engine hands them over: the raw payload serialised once, when mapped.
        rows.append(writer.Row.of(record, raw))
    return rows


def reset_db() -> str:
    return fresh_database(DB)


def copy_baseline(url: str, batches: list[list[writer.Row]]) -> float:
    """Plain binary COPY of the same rows into an empty table shaped like "Product"."""
    spec = writer.SPECS["products"]
    cols = spec.all_columns
    with psycopg.connect(url) as c:
        c.execute('CREATE TABLE "ProductCopy" (LIKE "Product" INCLUDING ALL)')
        c.commit()
        now = datetime.now(UTC)
        started = time.perf_counter()
        # One plain COPY of every row, one transaction: the fastest PostgreSQL loads.
        with c.cursor() as cur:
            col_list = ", ".join(f'"{x}"' for x in cols)
            with cur.copy(
                f'COPY "ProductCopy" ({col_list}) FROM STDIN (FORMAT BINARY)'.encode()
            ) as cp:
                cp.set_types(spec.all_types)
                for batch in batches:
                    for r in batch:
                        d = r.record.__dict__
                        cp.write_row(
                            ("t", "c", r.record.externalId, *(d[n] for n in spec.names),
                             writer.serialized_jsonb(r.raw_json), r.hash, r.record.sourceUpdatedAt,
                             now, None)
                        )  # fmt: skip
        c.commit()
        return time.perf_counter() - started


async def upsert_all(url: str, batches: list[list[writer.Row]]) -> tuple[float, writer.WriteCounts]:
    rt = open_runtime(Settings(_env_file=None, database_url=url), name="bench")
    total = writer.WriteCounts()
    try:
        async with rt.unit_of_work() as s:
            if await s.get(Tenant, "t") is None:
                s.add(Tenant(id="t", name="Bench"))
                await s.flush()
                s.add(ErpConnection(id="c", tenantId="t", provider="bling"))
        async with rt.unit_of_work() as s:
            first_load = not (
                await s.execute(text('SELECT EXISTS (SELECT 1 FROM "Product")'))
            ).scalar()
        started = time.perf_counter()
        analyzed = 0
        # As the engine: one transaction per write through a PageWriter (no WAL flush
        # wait, the connection kept while writes follow each other), and a first load
        # into an empty table skips the hash lookup.
        writes = writer.PageWriter(rt.engine)
        try:
            for batch in batches:

                async def write(
                    session: AsyncSession, batch: list[writer.Row] = batch
                ) -> writer.WriteCounts:
                    return await writer.upsert(
                        session, "products", "t", "c", batch, prefilter=not first_load
                    )

                counts = await writes.transaction(write)
                total.inserted += counts.inserted
                # As the engine: fresh planner statistics as a first load grows (x4 steps).
                if total.inserted >= max(1000, analyzed * 4):
                    analyzed = total.inserted
                    await writes.release()
                    await writer.analyze(rt.engine, "products")
                total.updated += counts.updated
                total.unchanged += counts.unchanged
            elapsed = time.perf_counter() - started
        finally:
            await writes.release()
        return elapsed, total
    finally:
        await rt.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    # The engine's write size: one transaction per WRITE_BATCH_RECORDS records at most.
    ap.add_argument("--batch", type=int, default=WRITE_BATCH_RECORDS)
    args = ap.parse_args()
    url = reset_db()
    print(f"generating {args.rows} rows ...", flush=True)
    batches = [
        make_rows(i, min(args.batch, args.rows - i)) for i in range(0, args.rows, args.batch)
    ]
    gc.collect()
    gc.freeze()
    checkpoint(url)
    t_copy = copy_baseline(url, batches)
    print(f"COPY baseline: {args.rows / t_copy:,.0f} rows/s", flush=True)
    checkpoint(url)
    t_first, c1 = asyncio.run(upsert_all(url, batches))
    print(f"first load: {args.rows / t_first:,.0f} rows/s ({c1.inserted} inserted)", flush=True)
    checkpoint(url)
    t_again, c2 = asyncio.run(upsert_all(url, batches))
    print(
        f"unchanged re-sync: {args.rows / t_again:,.0f} rows/s ({c2.unchanged} unchanged)",
        flush=True,
    )
    assert c1.inserted == args.rows and c2.unchanged == args.rows
    r1 = t_copy / t_first
    r2 = t_first / t_again
    record(
        "writer",
        f"{args.rows:,} products, batch {args.batch:,}",
        f"COPY {args.rows / t_copy:,.0f}/s; first load {args.rows / t_first:,.0f}/s; "
        f"unchanged {args.rows / t_again:,.0f}/s",
        f"first load ÷ COPY = **{r1:.2f}** (target ≥ 0.7); "
        f"unchanged ÷ first load = **{r2:.2f}** (target ≥ 3)",
    )
    drop_database(DB)


if __name__ == "__main__":
    main()
