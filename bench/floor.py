"""Floor benchmark: the least any Python worker must do to land N products from the Bling
sandbox, against the same plain binary COPY as ``bench.e2e``, same run.

    .venv/bin/python -m bench.floor [--products 1000000]

"The least" is one process on uvloop that fetches the list pages with one httpx client
(``criterio=5``, active and inactive products, four pages in flight, as the connector
does), parses them with orjson and COPYs each record straight into ``"Product"``
(binary, psycopg, 2,500 rows a transaction, beside the reads, as the writer does) with
its sorted raw payload and a blake2b hash of it: no queue, no JobRun, no governor, no
validation, no canonical model, no stored-hash lookup, no cursor. The real worker does
all of this and more for each record, in one process too: this ratio is how much of the
end-to-end target a Python worker can reach on this machine at this hour.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson
import psycopg
import uvloop

from bench.common import (
    add_connection,
    checkpoint,
    cpu_of,
    drop_database,
    fresh_database,
    micros_per_row,
    record,
    tokens,
    unlimited_sandbox,
)
from bench.e2e import copy_baseline
from erp_sync.connectors.raw import number_to_decimal
from erp_sync.sync.writer import canonical_json, serialized_jsonb

DB = "erp_sync_bench_floor"
PAGE = 100
WRITE = 2_500
IN_FLIGHT = 4
COLUMNS = (
    '"tenantId", "connectionId", "externalId", sku, name, "listPrice", "costPrice", active, '
    'raw, "contentHash", "syncedAt"'
)
TYPES = ["text", "text", "text", "text", "text", "numeric", "numeric", "bool", "jsonb",
         "bytea", "timestamptz"]  # fmt: skip


def _money(value: Any) -> Decimal | None:
    return None if value is None else number_to_decimal(value)


async def land(
    root: str, token: str, url: str, measure: Callable[[], tuple[float, ...]]
) -> tuple[int, tuple[float, ...]]:
    """Land every product; also ``measure()`` once the last write is in, while this
    run's PostgreSQL backend still lives (an ended backend's CPU is no longer counted)."""
    ended = False  # a short page was read: schedule no more
    async with (
        httpx.AsyncClient(
            base_url=f"{root}/Api/v3", headers={"Authorization": f"Bearer {token}"}
        ) as http,
        await psycopg.AsyncConnection.connect(url) as db,
    ):

        async def fetch(number: int) -> list[dict[str, Any]]:
            resp = await http.get(
                "/produtos", params={"criterio": 5, "pagina": number, "limite": PAGE}
            )
            resp.raise_for_status()
            data: list[dict[str, Any]] = orjson.loads(resp.content)["data"]
            return data

        async def write(batches: asyncio.Queue[list[tuple[Any, ...]] | None]) -> int:
            written = 0
            while (batch := await batches.get()) is not None:
                async with (
                    db.transaction(),
                    db.cursor() as cur,
                    cur.copy(
                        f'COPY "Product" ({COLUMNS}) FROM STDIN (FORMAT BINARY)'.encode()
                    ) as copy,
                ):
                    copy.set_types(TYPES)
                    for row in batch:
                        await copy.write_row(row)
                written += len(batch)
            return written

        # The writes run beside the reads (as the engine's page feed does): parsing goes
        # on while PostgreSQL takes a COPY and commits it.
        batches: asyncio.Queue[list[tuple[Any, ...]] | None] = asyncio.Queue(maxsize=2)
        writer = asyncio.ensure_future(write(batches))
        ahead = [asyncio.ensure_future(fetch(n)) for n in range(1, IN_FLIGHT + 1)]
        following = IN_FLIGHT + 1
        batch: list[tuple[Any, ...]] = []
        now = datetime.now(UTC)
        while ahead:
            items = await ahead.pop(0)
            ended = ended or len(items) < PAGE
            if not ended:
                ahead.append(asyncio.ensure_future(fetch(following)))
                following += 1
            for item in items:
                raw = canonical_json(item)  # as Row.of serialises it
                batch.append(
                    (
                        "bench",
                        "bench",
                        str(item["id"]),
                        item.get("codigo"),
                        item["nome"],
                        _money(item.get("preco")),
                        _money(item.get("precoCusto")),
                        item.get("situacao") == "A",
                        serialized_jsonb(raw),
                        hashlib.blake2b(raw, digest_size=16).digest(),
                        now,
                    )
                )
            if len(batch) >= WRITE or (batch and not ahead):
                await batches.put(batch)
                batch = []
        await batches.put(None)
        landed = await writer
        measured = measure()
    return landed, measured


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=1_000_000)
    args = ap.parse_args()
    url = fresh_database(DB)
    with unlimited_sandbox(args.products) as sandbox:
        token = tokens(sandbox.root)["access_token"]
        add_connection(url)
        checkpoint(url)
        pids = (os.getpid(), sandbox.pid)
        cpu_before = cpu_of(*pids)
        started = time.perf_counter()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            rows, (elapsed, *cpu_after) = runner.run(
                land(
                    sandbox.root,
                    token,
                    url,
                    lambda: (time.perf_counter() - started, *cpu_of(*pids)),
                )
            )
    checkpoint(url)
    copied, t_copy = copy_baseline(url)
    assert copied == rows, (copied, rows)
    floor_rate = rows / elapsed
    copy_rate = rows / t_copy
    worker_us, sandbox_us, postgres_us = micros_per_row(cpu_before, tuple(cpu_after), rows)
    record(
        "floor",
        f"{rows:,} products, Bling sandbox (limits off) → fetch, parse, COPY only (one process)",
        f"floor {floor_rate:,.0f} rows/s ({elapsed:.0f} s); COPY {copy_rate:,.0f} rows/s; "
        f"CPU per row: fetching process {worker_us:.0f} µs, PostgreSQL {postgres_us:.0f} µs, "
        f"sandbox {sandbox_us:.0f} µs",
        f"floor ÷ COPY = **{floor_rate / copy_rate:.2f}** (the end-to-end target is ≥ 0.4)",
    )
    drop_database(DB)


if __name__ == "__main__":
    main()
