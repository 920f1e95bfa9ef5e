"""The store's keys, as migrated: a row belongs to a connection *of its tenant*, and
deleting a tenant (or its connection) deletes its rows."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

TABLES = ("Product", "StockLevel", "Customer", "SalesOrder")


@pytest.fixture
def conn(clean_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(clean_db, autocommit=True) as c:
        c.execute("""INSERT INTO "Tenant" (id, name) VALUES ('acme', 'Acme'), ('beta', 'Beta')""")
        c.execute(
            """INSERT INTO "ErpConnection" (id, "tenantId", provider)
               VALUES ('conn-a', 'acme', 'bling'), ('conn-b', 'beta', 'bling')"""
        )
        yield c


def _product(conn: psycopg.Connection, tenant: str, connection: str, external_id: str) -> None:
    conn.execute(
        """INSERT INTO "Product" ("tenantId", "connectionId", "externalId", name, raw,
               "contentHash")
           VALUES (%s, %s, %s, 'Parafuso', '{}', '\\x00')""",
        (tenant, connection, external_id),
    )


def test_a_row_cannot_name_another_tenants_connection(conn: psycopg.Connection) -> None:
    _product(conn, "acme", "conn-a", "1")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        _product(conn, "beta", "conn-a", "1")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        _product(conn, "acme", "no-such-connection", "2")


def test_deleting_a_tenant_deletes_its_rows_only(conn: psycopg.Connection) -> None:
    _product(conn, "acme", "conn-a", "1")
    _product(conn, "beta", "conn-b", "1")
    conn.execute("""DELETE FROM "Tenant" WHERE id = 'acme'""")
    rows = conn.execute("""SELECT "tenantId" FROM "Product" """).fetchall()
    assert rows == [("beta",)]


def test_every_store_table_has_one_composite_connection_key(conn: psycopg.Connection) -> None:
    for table in TABLES:
        keys = conn.execute(
            """SELECT pg_get_constraintdef(oid) FROM pg_constraint
               WHERE conrelid = %s::regclass AND contype = 'f'""",
            (f'"{table}"',),
        ).fetchall()
        assert keys == [
            (
                'FOREIGN KEY ("tenantId", "connectionId") REFERENCES "ErpConnection"'
                '("tenantId", id) ON DELETE CASCADE',
            )
        ], table
