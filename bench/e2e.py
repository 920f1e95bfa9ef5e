"""End-to-end benchmark: a full sync of N products from the Bling sandbox (limits off,
details off) through the real queue, worker process, connector, engine and writer;
compared with a plain binary COPY of the same rows into an empty table, same run.

    .venv/bin/python -m bench.e2e [--products 1000000]

Targets: rows/s ÷ COPY ≥ 0.4; the worker process's peak RSS ≤ 300 MB (streaming: never
the whole stream in memory). Also reported: the CPU time each process (worker, every
PostgreSQL process, sandbox) used per row during the sync, and the rows/s that would
keep every core of this machine busy at those costs: how far the run is from what the
machine can do.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import redis

from bench.common import (
    ERP_SYNC,
    ROOT,
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
from erp_sync.jobs.queues import JobQueues, SyncJobData
from erp_sync.kit.crypto import Box, generate_key
from erp_sync.settings import Settings

DB = "erp_sync_bench_e2e"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def copy_baseline(url: str) -> tuple[int, float]:
    """COPY the rows that landed out to memory, then time COPY into an empty table."""
    buf = io.BytesIO()
    with psycopg.connect(url) as c:
        with c.cursor().copy('COPY "Product" TO STDOUT (FORMAT BINARY)') as cp:
            for chunk in cp:
                buf.write(chunk)
        rows = int(c.execute('SELECT count(*) FROM "Product"').fetchone()[0])
        c.execute('CREATE TABLE "ProductCopy" (LIKE "Product" INCLUDING ALL)')
        c.commit()
        data = buf.getvalue()
        started = time.perf_counter()
        with c.cursor().copy('COPY "ProductCopy" FROM STDIN (FORMAT BINARY)') as cp:
            for i in range(0, len(data), 1 << 20):
                cp.write(data[i : i + (1 << 20)])
        c.commit()
        return rows, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=1_000_000)
    args = ap.parse_args()
    url = fresh_database(DB)
    key = generate_key()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "ENCRYPTION_KEY": key,
        "QUEUE_PREFIX": prefix,
        "SYNC_JOB_BUDGET_SECONDS": "36000",
        "WORKER_CONCURRENCY": "1",
        "LOG_LEVEL": "WARNING",
    }
    settings = Settings(_env_file=None, database_url=url, encryption_key=key, queue_prefix=prefix)
    with unlimited_sandbox(args.products) as sandbox:
        root = sandbox.root
        creds = tokens(root)
        add_connection(
            url,
            {"base_url": f"{root}/Api/v3", "fetch_details": False, "rate_limit_per_second": 0},
            Box(key).encrypt_json(creds),
        )
        worker = subprocess.Popen([ERP_SYNC, "worker"], cwd=ROOT / "bench", env=env)
        try:
            time.sleep(2)

            async def enqueue() -> str:
                queues = JobQueues(settings)
                try:
                    data = SyncJobData(tenantId="bench", streams=["products"], mode="full")
                    return (await queues.enqueue_sync(data)).job_id
                finally:
                    await queues.close()

            checkpoint(url)
            # CPU used by the three processes that share this machine's cores meanwhile.
            cpu_before = cpu_of(worker.pid, sandbox.pid)
            job_id = asyncio.run(enqueue())
            while True:
                with psycopg.connect(url) as c:
                    row = c.execute(
                        'SELECT status, "durationMs", error FROM "JobRun" WHERE "jobId" = %s '
                        "AND status <> 'RUNNING' ORDER BY id DESC LIMIT 1",
                        (job_id,),
                    ).fetchone()
                if row:
                    break
                time.sleep(1)
            cpu_after = cpu_of(worker.pid, sandbox.pid)
            rss = peak_rss_mb(worker.pid)
        finally:
            worker.terminate()
            worker.wait(60)
    status, duration_ms, error = row
    assert status == "COMPLETED", error
    checkpoint(url)
    rows, t_copy = copy_baseline(url)
    e2e_rate = rows / (duration_ms / 1000)
    copy_rate = rows / t_copy
    worker_us, sandbox_us, postgres_us = micros_per_row(cpu_before, cpu_after, rows)
    # All three run on this machine's cores: rows/s can be at most cores / CPU per row.
    cores = os.cpu_count() or 1
    ceiling = cores / ((worker_us + postgres_us + sandbox_us) / 1e6)
    record(
        "end to end",
        f"{rows:,} products, Bling sandbox (limits and detail calls off) → worker process",
        f"sync {e2e_rate:,.0f} rows/s ({duration_ms / 1000:.0f} s); COPY {copy_rate:,.0f} rows/s; "
        f"worker peak RSS {rss:.0f} MB; CPU per row: worker {worker_us:.0f} µs, PostgreSQL "
        f"{postgres_us:.0f} µs, sandbox {sandbox_us:.0f} µs (all {cores} cores busy: at most "
        f"{ceiling:,.0f} rows/s)",
        f"sync ÷ COPY = **{e2e_rate / copy_rate:.2f}** (target ≥ 0.4); "
        f"peak RSS **{rss:.0f} MB** (target ≤ 300)",
    )
    r = redis.Redis()
    keys = list(r.scan_iter(f"{prefix}:*"))
    if keys:
        r.delete(*keys)
    drop_database(DB)


if __name__ == "__main__":
    main()
