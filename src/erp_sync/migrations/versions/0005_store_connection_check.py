"""store rows keyed to their tenant's connection, checked once per statement

Migration 0004 gave each store table one composite foreign key, (tenantId, connectionId)
-> ErpConnection (tenantId, id). PostgreSQL checks a foreign key row by row: one lookup
and one row lock per written row, ~25 % of a first load's speed (bench/RESULTS.md). The
writer writes one connection's rows per statement, so the same guarantees are kept here
with one check per statement:

- INSERT (and COPY): a statement trigger reads the statement's new rows (a transition
  table), locks their distinct (tenant, connection) pairs in "ErpConnection" (FOR KEY
  SHARE, as a foreign key does, so the connection cannot be deleted before we commit)
  and refuses the whole statement if one of them is not a connection of that tenant;
- UPDATE of a row's tenantId or connectionId: the same check, for that row;
- deleting a connection (or its tenant) deletes its rows; changing a connection's id or
  tenant while it has rows is refused.

A refusal is SQLSTATE 23503 (foreign_key_violation), as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("Product", "StockLevel", "Customer", "SalesOrder")

# (No percent signs or colons in these bodies: the driver would read them as parameters.)
_REFUSE = """
    RAISE EXCEPTION USING
      MESSAGE = 'insert or update on table "' || TG_TABLE_NAME || '" violates its connection key',
      ERRCODE = 'foreign_key_violation',
      DETAIL = '("tenantId", "connectionId")=(' || coalesce(bad_tenant, 'null') || ', '
               || coalesce(bad_connection, 'null') || ') is not a connection of that tenant.',
      TABLE = TG_TABLE_NAME;
"""

CHECK_STATEMENT = f"""
CREATE FUNCTION erp_sync_store_rows_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  bad_tenant text;
  bad_connection text;
BEGIN
  -- Lock first: a connection deleted meanwhile is waited for, and then found missing.
  PERFORM 1 FROM "ErpConnection" c
    WHERE (c."tenantId", c.id) IN (SELECT DISTINCT "tenantId", "connectionId" FROM new_rows)
    FOR KEY SHARE OF c;
  SELECT n."tenantId", n."connectionId" INTO bad_tenant, bad_connection
    FROM (SELECT DISTINCT "tenantId", "connectionId" FROM new_rows) n
    WHERE NOT EXISTS (SELECT 1 FROM "ErpConnection" c
                      WHERE c."tenantId" = n."tenantId" AND c.id = n."connectionId")
    LIMIT 1;
  IF FOUND THEN{_REFUSE}  END IF;
  RETURN NULL;
END $$
"""

CHECK_ROW = f"""
CREATE FUNCTION erp_sync_store_row_key_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  bad_tenant text := NEW."tenantId";
  bad_connection text := NEW."connectionId";
BEGIN
  PERFORM 1 FROM "ErpConnection" c
    WHERE c."tenantId" = NEW."tenantId" AND c.id = NEW."connectionId" FOR KEY SHARE OF c;
  IF NOT FOUND THEN{_REFUSE}  END IF;
  RETURN NULL;
END $$
"""

CASCADE = """
CREATE FUNCTION erp_sync_connection_rows_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{deletes}
  RETURN NULL;
END $$
"""

RESTRICT = """
CREATE FUNCTION erp_sync_connection_key_restrict() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF {exists} THEN
    RAISE EXCEPTION USING
      MESSAGE = 'update on table "ErpConnection" would orphan its store rows',
      ERRCODE = 'foreign_key_violation',
      DETAIL = 'Connection ' || OLD.id || ' of tenant ' || OLD."tenantId"
               || ' still has synced rows.',
      TABLE = 'ErpConnection';
  END IF;
  RETURN NEW;
END $$
"""

_KEY_CHANGED = (
    'OLD."tenantId" IS DISTINCT FROM NEW."tenantId" '
    'OR OLD."connectionId" IS DISTINCT FROM NEW."connectionId"'
)


def _of_connection(table: str) -> str:
    return f'"{table}" WHERE "tenantId" = OLD."tenantId" AND "connectionId" = OLD.id'


def upgrade() -> None:
    op.execute(CHECK_STATEMENT)
    op.execute(CHECK_ROW)
    deletes = "\n".join(f"  DELETE FROM {_of_connection(t)};" for t in TABLES)
    op.execute(CASCADE.format(deletes=deletes))
    exists = " OR ".join(f"EXISTS (SELECT 1 FROM {_of_connection(t)})" for t in TABLES)
    op.execute(RESTRICT.format(exists=exists))
    for table in TABLES:
        op.drop_constraint(f"{table}_connection_fkey", table, type_="foreignkey")
        op.execute(
            f'CREATE TRIGGER "{table}_connection_check" AFTER INSERT ON "{table}" '
            "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
            "EXECUTE FUNCTION erp_sync_store_rows_check()"
        )
        op.execute(
            f'CREATE TRIGGER "{table}_connection_key_update" '
            f'AFTER UPDATE OF "tenantId", "connectionId" ON "{table}" FOR EACH ROW '
            f"WHEN ({_KEY_CHANGED}) EXECUTE FUNCTION erp_sync_store_row_key_check()"
        )
    op.execute(
        'CREATE TRIGGER "ErpConnection_store_rows_cascade" AFTER DELETE ON "ErpConnection" '
        "FOR EACH ROW EXECUTE FUNCTION erp_sync_connection_rows_cascade()"
    )
    op.execute(
        'CREATE TRIGGER "ErpConnection_store_rows_restrict" '
        'BEFORE UPDATE OF id, "tenantId" ON "ErpConnection" FOR EACH ROW '
        'WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD."tenantId" IS DISTINCT FROM NEW."tenantId") '
        "EXECUTE FUNCTION erp_sync_connection_key_restrict()"
    )


def downgrade() -> None:
    op.execute('DROP TRIGGER "ErpConnection_store_rows_restrict" ON "ErpConnection"')
    op.execute('DROP TRIGGER "ErpConnection_store_rows_cascade" ON "ErpConnection"')
    for table in TABLES:
        op.execute(f'DROP TRIGGER "{table}_connection_key_update" ON "{table}"')
        op.execute(f'DROP TRIGGER "{table}_connection_check" ON "{table}"')
        op.create_foreign_key(
            f"{table}_connection_fkey",
            table,
            "ErpConnection",
            ["tenantId", "connectionId"],
            ["tenantId", "id"],
            ondelete="CASCADE",
        )
    for function in (
        "erp_sync_connection_key_restrict",
        "erp_sync_connection_rows_cascade",
        "erp_sync_store_row_key_check",
        "erp_sync_store_rows_check",
    ):
        op.execute(f"DROP FUNCTION {function}()")
