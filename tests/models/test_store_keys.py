"""The store's keys, as migrated: a row belongs to a connection *of its tenant*, and
deleting a tenant (or its connection) deletes its rows. Checked once per statement by
triggers (migration 0005), with a foreign key's guarantees and SQLSTATE."""

from __future__ import annotations

import threading
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


def _products(conn: psycopg.Connection, rows: list[tuple[str, str, str]]) -> None:
    """One COPY, as the writer loads."""
    with conn.cursor().copy(
        'COPY "Product" ("tenantId", "connectionId", "externalId", name, raw, "contentHash") '
        "FROM STDIN"
    ) as copy:
        for tenant, connection, external_id in rows:
            copy.write_row((tenant, connection, external_id, "Parafuso", "{}", b"\x00"))


def _count(conn: psycopg.Connection, table: str = "Product") -> int:
    return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])


def test_one_bad_row_refuses_the_whole_statement(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as refused:
        _products(
            conn, [("acme", "conn-a", str(i)) for i in range(500)] + [("acme", "conn-b", "x")]
        )
    assert "conn-b" in str(refused.value.diag.message_detail)
    assert _count(conn) == 0
    _products(conn, [("acme", "conn-a", str(i)) for i in range(500)])
    assert _count(conn) == 500


@pytest.mark.parametrize("table", TABLES)
def test_every_store_table_refuses_a_foreign_connection(
    conn: psycopg.Connection, table: str
) -> None:
    columns = {
        "Product": "name, ",
        "StockLevel": '"productExternalId", "warehouseId", quantity, ',
        "Customer": "name, ",
        "SalesOrder": "total, ",
    }[table]
    values = {
        "Product": "'x', ",
        "StockLevel": "'1', '1', 1, ",
        "Customer": "'x', ",
        "SalesOrder": "1, ",
    }
    sql = (
        f'INSERT INTO "{table}" ("tenantId", "connectionId", "externalId", {columns}raw, '
        f"\"contentHash\") VALUES (%s, 'conn-a', '1', {values[table]}'{{}}', '\\x00')"
    )
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute(sql, ("beta",))
    conn.execute(sql, ("acme",))
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute(f'UPDATE "{table}" SET "connectionId" = \'conn-b\'')
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute(f'UPDATE "{table}" SET "tenantId" = \'beta\'')
    conn.execute("""DELETE FROM "ErpConnection" WHERE id = 'conn-a'""")
    assert _count(conn, table) == 0


def test_an_upsert_that_changes_no_key_is_not_checked_again(conn: psycopg.Connection) -> None:
    _product(conn, "acme", "conn-a", "1")
    conn.execute(
        """INSERT INTO "Product" ("tenantId", "connectionId", "externalId", name, raw,
               "contentHash") VALUES ('acme', 'conn-a', '1', 'Porca', '{}', '\\x01')
           ON CONFLICT ("tenantId", "connectionId", "externalId") DO UPDATE SET name = 'Porca'"""
    )
    assert conn.execute('SELECT name FROM "Product"').fetchone() == ("Porca",)


def test_deleting_a_connection_deletes_its_rows_only(conn: psycopg.Connection) -> None:
    conn.execute("""INSERT INTO "Tenant" (id, name) VALUES ('gama', 'Gama')""")
    conn.execute(
        """INSERT INTO "ErpConnection" (id, "tenantId", provider)
           VALUES ('conn-g', 'gama', 'omie')"""
    )
    _products(conn, [("acme", "conn-a", "1"), ("acme", "conn-a", "2")])
    _products(conn, [("gama", "conn-g", "1")])
    conn.execute("""DELETE FROM "ErpConnection" WHERE id = 'conn-a'""")
    assert conn.execute('SELECT "tenantId", "externalId" FROM "Product"').fetchall() == [
        ("gama", "1")
    ]


def test_a_connection_with_rows_cannot_move_to_another_tenant(conn: psycopg.Connection) -> None:
    conn.execute("""INSERT INTO "Tenant" (id, name) VALUES ('gama', 'Gama')""")
    _product(conn, "acme", "conn-a", "1")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("""UPDATE "ErpConnection" SET "tenantId" = 'gama' WHERE id = 'conn-a'""")
    conn.execute("""UPDATE "ErpConnection" SET provider = 'omie' WHERE id = 'conn-a'""")
    conn.execute("""UPDATE "ErpConnection" SET "tenantId" = 'gama' WHERE id = 'conn-b'""")
    assert _count(conn) == 1


def test_a_connection_deleted_while_rows_are_written_takes_them_along(
    clean_db: str, conn: psycopg.Connection
) -> None:
    """The writer's check locks the connection as a foreign key would: a delete waits
    for the write to commit, then deletes the rows it wrote."""
    with psycopg.connect(clean_db) as writer:
        _products(writer, [("acme", "conn-a", "1")])  # transaction still open
        conn.execute("SET lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute("""DELETE FROM "ErpConnection" WHERE id = 'conn-a'""")
        conn.execute("SET lock_timeout = '10s'")
        deleter = threading.Thread(
            target=conn.execute, args=("""DELETE FROM "ErpConnection" WHERE id = 'conn-a'""",)
        )
        deleter.start()
        writer.commit()
        deleter.join(15)
    assert _count(conn) == 0


def test_rows_written_for_a_connection_being_deleted_are_refused(
    clean_db: str, conn: psycopg.Connection
) -> None:
    with psycopg.connect(clean_db) as deleter, psycopg.connect(clean_db) as writer:
        deleter.execute("""DELETE FROM "ErpConnection" WHERE id = 'conn-a'""")  # not committed
        outcome: list[BaseException | None] = []

        def write() -> None:
            try:
                _products(writer, [("acme", "conn-a", "1")])
                writer.commit()
                outcome.append(None)
            except psycopg.Error as exc:
                outcome.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive(), "the write should wait for the delete"
        deleter.commit()
        thread.join(15)
    assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.ForeignKeyViolation)
    assert _count(conn) == 0


def test_store_tables_hold_no_row_by_row_connection_key(conn: psycopg.Connection) -> None:
    """The per-statement check replaced the foreign keys (one lookup and lock per row)."""
    for table in TABLES:
        keys = conn.execute(
            """SELECT count(*) FROM pg_constraint
               WHERE conrelid = %s::regclass AND contype = 'f'""",
            (f'"{table}"',),
        ).fetchone()
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
            "ORDER BY tgname",
            (f'"{table}"',),
        ).fetchall()
        assert keys == (0,), table
        assert triggers == [
            (f"{table}_connection_check",),
            (f"{table}_connection_key_update",),
        ], table
