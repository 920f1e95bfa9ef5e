"""canonical store, sync state, quarantine, tenant auto-pause

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "SyncSeen",
        sa.Column("fullRunId", sa.String(length=64), nullable=False),
        sa.Column("externalId", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("fullRunId", "externalId", name=op.f("SyncSeen_pkey")),
        prefixes=["UNLOGGED"],
    )
    op.create_table(
        "Customer",
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("document", sa.String(length=14), nullable=True),
        sa.Column("personType", sa.String(length=120), nullable=True),
        sa.Column("email", sa.String(length=120), nullable=True),
        sa.Column("phone", sa.String(length=120), nullable=True),
        sa.Column("street", sa.String(length=1000), nullable=True),
        sa.Column("number", sa.String(length=120), nullable=True),
        sa.Column("complement", sa.String(length=1000), nullable=True),
        sa.Column("district", sa.String(length=120), nullable=True),
        sa.Column("city", sa.String(length=120), nullable=True),
        sa.Column("state", sa.String(length=120), nullable=True),
        sa.Column("zipCode", sa.String(length=120), nullable=True),
        sa.Column("country", sa.String(length=120), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("externalId", sa.String(length=200), nullable=False),
        sa.Column("raw", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("contentHash", sa.LargeBinary(length=16), nullable=False),
        sa.Column("sourceUpdatedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "syncedAt", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("deletedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tenantId", sa.String(length=64), nullable=False),
        sa.Column("connectionId", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["connectionId"],
            ["ErpConnection.id"],
            name=op.f("Customer_connectionId_fkey"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenantId"], ["Tenant.id"], name=op.f("Customer_tenantId_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint(
            "tenantId", "connectionId", "externalId", name=op.f("Customer_pkey")
        ),
    )
    op.create_index(
        "Customer_tenantId_document_idx", "Customer", ["tenantId", "document"], unique=False
    )
    op.create_table(
        "Product",
        sa.Column("sku", sa.String(length=120), nullable=True),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("gtin", sa.String(length=120), nullable=True),
        sa.Column("ncm", sa.String(length=120), nullable=True),
        sa.Column("unit", sa.String(length=120), nullable=True),
        sa.Column("brand", sa.String(length=120), nullable=True),
        sa.Column("listPrice", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("costPrice", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("externalId", sa.String(length=200), nullable=False),
        sa.Column("raw", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("contentHash", sa.LargeBinary(length=16), nullable=False),
        sa.Column("sourceUpdatedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "syncedAt", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("deletedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tenantId", sa.String(length=64), nullable=False),
        sa.Column("connectionId", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["connectionId"],
            ["ErpConnection.id"],
            name=op.f("Product_connectionId_fkey"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenantId"], ["Tenant.id"], name=op.f("Product_tenantId_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint(
            "tenantId", "connectionId", "externalId", name=op.f("Product_pkey")
        ),
    )
    op.create_index("Product_tenantId_sku_idx", "Product", ["tenantId", "sku"], unique=False)
    op.create_table(
        "QuarantinedRecord",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenantId", sa.String(length=64), nullable=False),
        sa.Column("connectionId", sa.String(length=64), nullable=False),
        sa.Column("stream", sa.String(length=40), nullable=False),
        sa.Column("recordKey", sa.String(length=200), nullable=False),
        sa.Column("externalId", sa.String(length=200), nullable=True),
        sa.Column("raw", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "firstSeenAt",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "lastSeenAt",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("occurrences", sa.Integer(), server_default="1", nullable=False),
        sa.ForeignKeyConstraint(
            ["connectionId"],
            ["ErpConnection.id"],
            name=op.f("QuarantinedRecord_connectionId_fkey"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenantId"],
            ["Tenant.id"],
            name=op.f("QuarantinedRecord_tenantId_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("QuarantinedRecord_pkey")),
    )
    op.create_index(
        "QuarantinedRecord_key",
        "QuarantinedRecord",
        ["tenantId", "connectionId", "stream", "recordKey"],
        unique=True,
    )
    op.create_table(
        "SalesOrder",
        sa.Column("number", sa.String(length=120), nullable=True),
        sa.Column("customerExternalId", sa.String(length=120), nullable=True),
        sa.Column("customerName", sa.String(length=1000), nullable=True),
        sa.Column("status", sa.String(length=120), nullable=True),
        sa.Column("orderDate", sa.Date(), nullable=True),
        sa.Column("currency", sa.String(length=120), nullable=True),
        sa.Column("totalProducts", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("discount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("shipping", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("total", sa.Numeric(precision=18, scale=4), nullable=False),
        sa.Column("externalId", sa.String(length=200), nullable=False),
        sa.Column("raw", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("contentHash", sa.LargeBinary(length=16), nullable=False),
        sa.Column("sourceUpdatedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "syncedAt", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("deletedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tenantId", sa.String(length=64), nullable=False),
        sa.Column("connectionId", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["connectionId"],
            ["ErpConnection.id"],
            name=op.f("SalesOrder_connectionId_fkey"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenantId"], ["Tenant.id"], name=op.f("SalesOrder_tenantId_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint(
            "tenantId", "connectionId", "externalId", name=op.f("SalesOrder_pkey")
        ),
    )
    op.create_index(
        "SalesOrder_tenantId_orderDate_idx", "SalesOrder", ["tenantId", "orderDate"], unique=False
    )
    op.create_table(
        "StockLevel",
        sa.Column("productExternalId", sa.String(length=200), nullable=False),
        sa.Column("warehouseId", sa.String(length=200), nullable=False),
        sa.Column("warehouseName", sa.String(length=120), nullable=True),
        sa.Column("quantity", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("reserved", sa.Numeric(precision=18, scale=6), nullable=True),
        sa.Column("available", sa.Numeric(precision=18, scale=6), nullable=True),
        sa.Column("externalId", sa.String(length=200), nullable=False),
        sa.Column("raw", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("contentHash", sa.LargeBinary(length=16), nullable=False),
        sa.Column("sourceUpdatedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "syncedAt", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("deletedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tenantId", sa.String(length=64), nullable=False),
        sa.Column("connectionId", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["connectionId"],
            ["ErpConnection.id"],
            name=op.f("StockLevel_connectionId_fkey"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenantId"], ["Tenant.id"], name=op.f("StockLevel_tenantId_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint(
            "tenantId", "connectionId", "externalId", name=op.f("StockLevel_pkey")
        ),
    )
    op.create_index(
        "StockLevel_tenantId_productExternalId_idx",
        "StockLevel",
        ["tenantId", "productExternalId"],
        unique=False,
    )
    op.create_table(
        "SyncState",
        sa.Column("tenantId", sa.String(length=64), nullable=False),
        sa.Column("stream", sa.String(length=40), nullable=False),
        sa.Column("connectionId", sa.String(length=64), nullable=False),
        sa.Column("cursor", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("fullRunId", sa.String(length=64), nullable=True),
        sa.Column("fullCursor", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("lastSuccessAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lastFullSyncAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lastErrorAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lastError", sa.Text(), nullable=True),
        sa.Column("lastStats", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "updatedAt", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["connectionId"],
            ["ErpConnection.id"],
            name=op.f("SyncState_connectionId_fkey"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenantId"], ["Tenant.id"], name=op.f("SyncState_tenantId_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenantId", "stream", name=op.f("SyncState_pkey")),
    )
    op.create_table(
        "SalesOrderLine",
        sa.Column("tenantId", sa.String(length=64), nullable=False),
        sa.Column("connectionId", sa.String(length=64), nullable=False),
        sa.Column("orderExternalId", sa.String(length=200), nullable=False),
        sa.Column("lineNumber", sa.Integer(), nullable=False),
        sa.Column("productExternalId", sa.String(length=120), nullable=True),
        sa.Column("sku", sa.String(length=120), nullable=True),
        sa.Column("description", sa.String(length=1000), nullable=True),
        sa.Column("quantity", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("unitPrice", sa.Numeric(precision=18, scale=4), nullable=False),
        sa.Column("discount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("total", sa.Numeric(precision=18, scale=4), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenantId", "connectionId", "orderExternalId"],
            ["SalesOrder.tenantId", "SalesOrder.connectionId", "SalesOrder.externalId"],
            name="SalesOrderLine_order_fkey",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tenantId",
            "connectionId",
            "orderExternalId",
            "lineNumber",
            name=op.f("SalesOrderLine_pkey"),
        ),
    )
    op.add_column("Tenant", sa.Column("pausedAt", sa.DateTime(timezone=True), nullable=True))
    op.add_column("Tenant", sa.Column("pausedReason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("Tenant", "pausedReason")
    op.drop_column("Tenant", "pausedAt")
    op.drop_table("SalesOrderLine")
    op.drop_table("SyncState")
    op.drop_index("StockLevel_tenantId_productExternalId_idx", table_name="StockLevel")
    op.drop_table("StockLevel")
    op.drop_index("SalesOrder_tenantId_orderDate_idx", table_name="SalesOrder")
    op.drop_table("SalesOrder")
    op.drop_index("QuarantinedRecord_key", table_name="QuarantinedRecord")
    op.drop_table("QuarantinedRecord")
    op.drop_index("Product_tenantId_sku_idx", table_name="Product")
    op.drop_table("Product")
    op.drop_index("Customer_tenantId_document_idx", table_name="Customer")
    op.drop_table("Customer")
    op.drop_table("SyncSeen")
