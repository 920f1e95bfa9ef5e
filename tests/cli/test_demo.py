"""The README's first command ends in `erp-sync demo`: a demo tenant synced end to end."""

from __future__ import annotations

import re

import psycopg

from erp_sync.settings import Settings
from tests.conftest import run_cli


def test_demo_syncs_a_tenant_and_reports_what_landed(settings: Settings) -> None:
    r = run_cli(
        settings,
        "demo",
        "--products",
        "150",
        "--customers",
        "20",
        "--orders",
        "20",
        "--malformed-rate",
        "0",
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    out = r.stdout
    assert "first sync (full)" in out and "second sync (incremental)" in out
    # the second sync picked up exactly the sandbox's changes: 5 new, 25 repriced products
    products = re.findall(r"products\s+│\s+(\d+)\s+│\s+(\d+)\s+│\s+(\d+)", out)
    assert products[-1] == ("30", "5", "25"), products
    with psycopg.connect(settings.database_url) as c:
        landed = c.execute(
            'SELECT count(*) FROM "Product" WHERE "tenantId" = %s', ("demo",)
        ).fetchone()[0]
        active = c.execute('SELECT active FROM "Tenant" WHERE id = %s', ("demo",)).fetchone()[0]
        runs = c.execute(
            'SELECT count(*) FROM "JobRun" WHERE "tenantId" = %s AND status = %s',
            ("demo", "COMPLETED"),
        ).fetchone()[0]
    assert landed == 155
    assert runs == 2
    assert active is False  # its sandbox ended with the command
