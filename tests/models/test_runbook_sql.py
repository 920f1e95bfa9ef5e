"""The runbook's SQL (sections 5 and 7), run verbatim against a migrated database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

# Byte for byte as in the runbook, trailing spaces included.
RUNBOOK_SECTION_5 = (
    'SELECT "tenantId", "status", "jobName", "error", "durationMs" \n'
    'FROM "JobRun" \n'
    "WHERE status = 'FAILED' \n"
    'ORDER BY "startedAt" DESC LIMIT 50;'
)

RUNBOOK_SECTION_7 = """DELETE FROM "JobRun" WHERE "startedAt" < NOW() - INTERVAL '30 days';"""


@pytest.fixture
def conn(clean_db: str) -> psycopg.Connection:
    with psycopg.connect(clean_db, autocommit=True) as c:
        c.execute("""INSERT INTO "Tenant" (id, name) VALUES ('acme', 'Acme'), ('beta', 'Beta')""")
        yield c


def _insert(
    conn: psycopg.Connection, tenant: str, status: str, days_ago: float, error: str | None
) -> None:
    started = datetime.now(UTC) - timedelta(days=days_ago)
    conn.execute(
        """INSERT INTO "JobRun" ("tenantId", "jobName", "jobId", queue, status, attempt, trigger,
               error, "durationMs", "startedAt", "finishedAt")
           VALUES (%s, 'sync-tenant', %s, 'sync', %s, 1, 'cron', %s, 1234, %s, %s)""",
        (tenant, f"sync:{tenant}", status, error, started, started + timedelta(seconds=1)),
    )


def test_section_5_lists_the_newest_failures_first(conn: psycopg.Connection) -> None:
    for i in range(60):
        _insert(conn, "acme", "FAILED", i / 24, f"boom {i}")
    _insert(conn, "beta", "COMPLETED", 0, None)
    _insert(conn, "beta", "FAILED", 0.001, "bling said 401")
    rows = conn.execute(RUNBOOK_SECTION_5).fetchall()
    assert len(rows) == 50
    assert rows[0] == ("acme", "FAILED", "sync-tenant", "boom 0", 1234)
    assert rows[1] == ("beta", "FAILED", "sync-tenant", "bling said 401", 1234)
    assert all(r[1] == "FAILED" for r in rows)
    assert [r[3] for r in rows[2:]] == [f"boom {i}" for i in range(1, 49)]


def test_section_5_is_served_by_an_index(conn: psycopg.Connection) -> None:
    for i in range(2000):
        _insert(conn, "acme", "COMPLETED" if i % 10 else "FAILED", i / 100, None)
    conn.execute('ANALYZE "JobRun"')
    conn.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + RUNBOOK_SECTION_5).fetchall())
    assert "JobRun_status_startedAt_idx" in plan


def test_section_7_removes_exactly_the_rows_older_than_30_days(conn: psycopg.Connection) -> None:
    for days in (1, 10, 29.9, 30.1, 45, 400):
        _insert(conn, "acme", "COMPLETED", days, None)
    deleted = conn.execute(RUNBOOK_SECTION_7).rowcount
    assert deleted == 3
    left = conn.execute(
        """SELECT count(*), max(now() - "startedAt") < interval '30 days' FROM "JobRun" """
    ).fetchone()
    assert left == (3, True)
