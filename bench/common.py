"""Shared by the benchmarks: a sandbox ERP in its own process, a scratch database,
appending a line to RESULTS.md."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

from erp_sync.migrations import upgrade
from erp_sync.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
SERVER = os.environ.get("BENCH_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
ERP_SYNC = str(Path(sys.executable).parent / "erp-sync")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time used so far by every PostgreSQL process on this machine (backends,
    WAL writer, checkpointer, autovacuum), ended ones excepted: take it around a run."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "postgres":
                total += cpu_seconds(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # ended meanwhile
    return total


@dataclass(frozen=True)
class SandboxProcess:
    root: str  # the root URL
    pid: int


@contextlib.contextmanager
def sandbox_process(*args: str) -> Iterator[SandboxProcess]:
    """`erp-sync sandbox bling ...` in its own process, once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [ERP_SYNC, "sandbox", "bling", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{root}/__sandbox/truth/summary", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the sandbox did not start")
            time.sleep(0.2)
        yield SandboxProcess(root, proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)


def unlimited_sandbox(products: int) -> contextlib.AbstractContextManager[SandboxProcess]:
    """A Bling sandbox of ``products`` products (and a few customers and orders) with its
    rate and daily limits off: what the throughput benchmarks read."""
    return sandbox_process("--products", str(products), "--customers", "10", "--orders",
                           "10", "--rate-limit", "0", "--daily-limit", "0")  # fmt: skip


def add_connection(url: str, settings: dict[str, Any] | None = None, credentials: str = "") -> None:
    """The tenant ``bench`` and its Bling connection ``bench`` (credentials as stored:
    encrypted)."""
    with psycopg.connect(url) as c:
        c.execute("""INSERT INTO "Tenant" (id, name) VALUES ('bench', 'Bench')""")
        c.execute(
            """INSERT INTO "ErpConnection" (id, "tenantId", provider, settings, credentials)
               VALUES ('bench', 'bench', 'bling', %s, %s)""",
            (Jsonb(settings or {}), credentials),
        )


def cpu_of(*pids: int) -> tuple[float, ...]:
    """CPU seconds used so far by each process in ``pids``, then by PostgreSQL's."""
    return (*(cpu_seconds(pid) for pid in pids), postgres_cpu_seconds())


def micros_per_row(before: tuple[float, ...], after: tuple[float, ...], rows: int) -> list[float]:
    """What each process of ``cpu_of`` used between two readings, in µs of CPU a row."""
    return [(b - a) / rows * 1e6 for a, b in zip(before, after, strict=True)]


def tokens(root: str) -> dict[str, str]:
    r = httpx.post(
        f"{root}/Api/v3/oauth/token",
        auth=("merxios-sandbox", "sandbox-secret"),
        data={"grant_type": "authorization_code", "code": "sandbox-code"},
        timeout=10,
    )
    r.raise_for_status()
    body = r.json()
    return {
        "client_id": "merxios-sandbox",
        "client_secret": "sandbox-secret",
        "access_token": body["access_token"],
        "refresh_token": body["refresh_token"],
    }


def fresh_database(name: str) -> str:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        c.execute(f'CREATE DATABASE "{name}"'.encode())
    url = f"{SERVER}/{name}"
    upgrade(Settings(_env_file=None, database_url=url), create_database=False)
    return url


def checkpoint(url: str) -> None:
    """Write out what earlier phases left in PostgreSQL's buffers before a timed phase, so
    no phase pays for the checkpoint of another (a 1M-row load writes ~1 GB of WAL, the
    default max_wal_size)."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CHECKPOINT")


def drop_database(name: str) -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def record(bench: str, data: str, throughput: str, ratios: str) -> str:
    line = (
        f"| {datetime.now(UTC):%Y-%m-%d %H:%M} | {bench} | {data} | {throughput} | {ratios} "
        f"| {platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} |"
    )
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nAdded to the table by the scripts in bench/ (newest "
            "last; notes by hand below it). Ratios "
            "are against a baseline measured in the same run; `load` is the 1-minute load "
            "average when the run ended.\n\n"
            "| when (UTC) | bench | data | throughput | ratios | machine |\n"
            "|---|---|---|---|---|---|\n"
        )
    # The row goes at the end of the table, above the notes written under it.
    lines = RESULTS.read_text().splitlines(keepends=True)
    last_row = max(i for i, text in enumerate(lines) if text.startswith("|"))
    lines.insert(last_row + 1, line + "\n")
    RESULTS.write_text("".join(lines))
    print(line)
    return line
