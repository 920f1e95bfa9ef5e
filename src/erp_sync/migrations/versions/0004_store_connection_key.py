"""store rows keyed to their tenant's connection by one composite foreign key

Each store table had two foreign keys (tenantId -> Tenant, connectionId -> ErpConnection),
two checks per written row. One composite key (tenantId, connectionId) ->
ErpConnection (tenantId, id) checks both at once, and also that the connection belongs
to the row's tenant. Deleting a tenant still deletes its rows (tenant -> connection ->
rows).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("Product", "StockLevel", "Customer", "SalesOrder")


def upgrade() -> None:
    op.create_unique_constraint(
        "ErpConnection_tenantId_id_key", "ErpConnection", ["tenantId", "id"]
    )
    for table in TABLES:
        op.drop_constraint(f"{table}_tenantId_fkey", table, type_="foreignkey")
        op.drop_constraint(f"{table}_connectionId_fkey", table, type_="foreignkey")
        op.create_foreign_key(
            f"{table}_connection_fkey",
            table,
            "ErpConnection",
            ["tenantId", "connectionId"],
            ["tenantId", "id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    for table in TABLES:
        op.drop_constraint(f"{table}_connection_fkey", table, type_="foreignkey")
        op.create_foreign_key(
            f"{table}_connectionId_fkey",
            table,
            "ErpConnection",
            ["connectionId"],
            ["id"],
            ondelete="CASCADE",
        )
        op.create_foreign_key(
            f"{table}_tenantId_fkey", table, "Tenant", ["tenantId"], ["id"], ondelete="CASCADE"
        )
    op.drop_constraint("ErpConnection_tenantId_id_key", "ErpConnection", type_="unique")
