"""The canonical store: one table per stream, keyed by (tenantId, connectionId, externalId),
each row with the raw ERP payload, a content hash, sourceUpdatedAt, syncedAt, deletedAt."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from erp_sync.models.base import Base

MONEY = Numeric(18, 4)
QTY = Numeric(18, 6)


class SyncedRow:
    """Columns every canonical table has.

    A row's (tenantId, connectionId) must be a connection *of that tenant*, and deleting
    the connection (or its tenant) deletes the row. PostgreSQL's foreign keys check this
    row by row; migration 0005 checks it once per statement with triggers (same
    guarantees, same SQLSTATE 23503; a first load ~30 % faster, see bench/)."""

    tenantId: Mapped[str] = mapped_column("tenantId", String(64))
    connectionId: Mapped[str] = mapped_column("connectionId", String(64))
    externalId: Mapped[str] = mapped_column("externalId", String(200))
    raw: Mapped[dict[str, Any]] = mapped_column()
    contentHash: Mapped[bytes] = mapped_column("contentHash", LargeBinary(16))
    sourceUpdatedAt: Mapped[datetime | None] = mapped_column("sourceUpdatedAt")
    syncedAt: Mapped[datetime] = mapped_column("syncedAt", server_default=func.now())
    deletedAt: Mapped[datetime | None] = mapped_column("deletedAt")


class Product(SyncedRow, Base):
    __tablename__ = "Product"
    __table_args__ = (
        PrimaryKeyConstraint("tenantId", "connectionId", "externalId"),
        Index("Product_tenantId_sku_idx", "tenantId", "sku"),
    )

    sku: Mapped[str | None] = mapped_column(String(120))
    name: Mapped[str] = mapped_column(String(500))
    gtin: Mapped[str | None] = mapped_column(String(120))
    ncm: Mapped[str | None] = mapped_column(String(120))
    unit: Mapped[str | None] = mapped_column(String(120))
    brand: Mapped[str | None] = mapped_column(String(120))
    listPrice: Mapped[Decimal | None] = mapped_column("listPrice", MONEY)
    costPrice: Mapped[Decimal | None] = mapped_column("costPrice", MONEY)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))


class StockLevel(SyncedRow, Base):
    __tablename__ = "StockLevel"
    __table_args__ = (
        PrimaryKeyConstraint("tenantId", "connectionId", "externalId"),
        Index("StockLevel_tenantId_productExternalId_idx", "tenantId", "productExternalId"),
    )

    productExternalId: Mapped[str] = mapped_column("productExternalId", String(200))
    warehouseId: Mapped[str] = mapped_column("warehouseId", String(200))
    warehouseName: Mapped[str | None] = mapped_column("warehouseName", String(120))
    quantity: Mapped[Decimal] = mapped_column(QTY)
    reserved: Mapped[Decimal | None] = mapped_column(QTY)
    available: Mapped[Decimal | None] = mapped_column(QTY)


class Customer(SyncedRow, Base):
    __tablename__ = "Customer"
    __table_args__ = (
        PrimaryKeyConstraint("tenantId", "connectionId", "externalId"),
        Index("Customer_tenantId_document_idx", "tenantId", "document"),
    )

    name: Mapped[str] = mapped_column(String(500))
    document: Mapped[str | None] = mapped_column(String(14))
    personType: Mapped[str | None] = mapped_column("personType", String(120))
    email: Mapped[str | None] = mapped_column(String(120))
    phone: Mapped[str | None] = mapped_column(String(120))
    street: Mapped[str | None] = mapped_column(String(1000))
    number: Mapped[str | None] = mapped_column(String(120))
    complement: Mapped[str | None] = mapped_column(String(1000))
    district: Mapped[str | None] = mapped_column(String(120))
    city: Mapped[str | None] = mapped_column(String(120))
    state: Mapped[str | None] = mapped_column(String(120))
    zipCode: Mapped[str | None] = mapped_column("zipCode", String(120))
    country: Mapped[str | None] = mapped_column(String(120))
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))


class SalesOrder(SyncedRow, Base):
    __tablename__ = "SalesOrder"
    __table_args__ = (
        PrimaryKeyConstraint("tenantId", "connectionId", "externalId"),
        Index("SalesOrder_tenantId_orderDate_idx", "tenantId", "orderDate"),
    )

    number: Mapped[str | None] = mapped_column(String(120))
    customerExternalId: Mapped[str | None] = mapped_column("customerExternalId", String(120))
    customerName: Mapped[str | None] = mapped_column("customerName", String(1000))
    status: Mapped[str | None] = mapped_column(String(120))
    orderDate: Mapped[date | None] = mapped_column("orderDate", Date)
    currency: Mapped[str | None] = mapped_column(String(120))
    totalProducts: Mapped[Decimal | None] = mapped_column("totalProducts", MONEY)
    discount: Mapped[Decimal | None] = mapped_column(MONEY)
    shipping: Mapped[Decimal | None] = mapped_column(MONEY)
    total: Mapped[Decimal] = mapped_column(MONEY)


class SalesOrderLine(Base):
    """Lines are replaced with their order: a changed order rewrites its lines."""

    __tablename__ = "SalesOrderLine"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenantId", "connectionId", "orderExternalId"],
            ["SalesOrder.tenantId", "SalesOrder.connectionId", "SalesOrder.externalId"],
            ondelete="CASCADE",
            name="SalesOrderLine_order_fkey",
        ),
    )

    tenantId: Mapped[str] = mapped_column("tenantId", String(64), primary_key=True)
    connectionId: Mapped[str] = mapped_column("connectionId", String(64), primary_key=True)
    orderExternalId: Mapped[str] = mapped_column("orderExternalId", String(200), primary_key=True)
    lineNumber: Mapped[int] = mapped_column("lineNumber", Integer, primary_key=True)
    productExternalId: Mapped[str | None] = mapped_column("productExternalId", String(120))
    sku: Mapped[str | None] = mapped_column(String(120))
    description: Mapped[str | None] = mapped_column(String(1000))
    quantity: Mapped[Decimal] = mapped_column(QTY)
    unitPrice: Mapped[Decimal] = mapped_column("unitPrice", MONEY)
    discount: Mapped[Decimal | None] = mapped_column(MONEY)
    total: Mapped[Decimal] = mapped_column(MONEY)


class SyncState(Base):
    """Where each stream of a tenant stands: cursor, last success, last error."""

    __tablename__ = "SyncState"

    tenantId: Mapped[str] = mapped_column(
        "tenantId", ForeignKey("Tenant.id", ondelete="CASCADE"), primary_key=True
    )
    stream: Mapped[str] = mapped_column(String(40), primary_key=True)
    connectionId: Mapped[str] = mapped_column(
        "connectionId", ForeignKey("ErpConnection.id", ondelete="CASCADE")
    )
    cursor: Mapped[dict[str, Any] | None] = mapped_column()
    # A full sync in progress (resumable): its id keys the ids seen so far.
    fullRunId: Mapped[str | None] = mapped_column("fullRunId", String(64))
    fullCursor: Mapped[dict[str, Any] | None] = mapped_column("fullCursor")
    # The full sync in progress began with no row of this connection in the stream's
    # table: every row there is its own, so it records no seen ids and sweeps nothing.
    fullRunFromEmpty: Mapped[bool] = mapped_column(
        "fullRunFromEmpty", Boolean, server_default=text("false")
    )
    lastSuccessAt: Mapped[datetime | None] = mapped_column("lastSuccessAt")
    lastFullSyncAt: Mapped[datetime | None] = mapped_column("lastFullSyncAt")
    lastErrorAt: Mapped[datetime | None] = mapped_column("lastErrorAt")
    lastError: Mapped[str | None] = mapped_column("lastError", Text)
    lastStats: Mapped[dict[str, Any] | None] = mapped_column("lastStats")
    updatedAt: Mapped[datetime] = mapped_column(
        "updatedAt", server_default=func.now(), onupdate=func.now()
    )


class SyncSeen(Base):
    """Ids seen by a full sync in progress; what a finished full sync did not see was
    deleted in the ERP. Unlogged: it is scratch data, rebuilt by re-running the sync."""

    __tablename__ = "SyncSeen"
    __table_args__ = {"prefixes": ["UNLOGGED"]}

    fullRunId: Mapped[str] = mapped_column("fullRunId", String(64), primary_key=True)
    externalId: Mapped[str] = mapped_column("externalId", String(200), primary_key=True)


class QuarantinedRecord(Base):
    """A record that failed validation, with the reason; the rest of its page landed."""

    __tablename__ = "QuarantinedRecord"
    __table_args__ = (
        Index(
            "QuarantinedRecord_key",
            "tenantId",
            "connectionId",
            "stream",
            "recordKey",
            unique=True,
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    tenantId: Mapped[str] = mapped_column("tenantId", ForeignKey("Tenant.id", ondelete="CASCADE"))
    connectionId: Mapped[str] = mapped_column(
        "connectionId", ForeignKey("ErpConnection.id", ondelete="CASCADE")
    )
    stream: Mapped[str] = mapped_column(String(40))
    # The ERP id when the record has one, else a hash of the payload.
    recordKey: Mapped[str] = mapped_column("recordKey", String(200))
    externalId: Mapped[str | None] = mapped_column("externalId", String(200))
    raw: Mapped[dict[str, Any]] = mapped_column()
    reason: Mapped[str] = mapped_column(Text)
    firstSeenAt: Mapped[datetime] = mapped_column("firstSeenAt", server_default=func.now())
    lastSeenAt: Mapped[datetime] = mapped_column("lastSeenAt", server_default=func.now())
    occurrences: Mapped[int] = mapped_column(Integer, server_default="1")
