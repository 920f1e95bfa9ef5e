from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from erp_sync.models.base import Base, created_at, new_id, updated_at

CONNECTION_STATUSES = ("ACTIVE", "NEEDS_REAUTH", "DISABLED")


class Tenant(Base):
    __tablename__ = "Tenant"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    # CNPJ (companies) or CPF, digits only.
    document: Mapped[str | None] = mapped_column(String(14))
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    schedule: Mapped[str] = mapped_column(String(120), server_default="*/15 * * * *")
    # Auto-pause: set after too many failed syncs in a row; the schedule stops until resumed.
    pausedAt: Mapped[datetime | None] = mapped_column("pausedAt")
    pausedReason: Mapped[str | None] = mapped_column("pausedReason", Text)
    createdAt: Mapped[datetime] = created_at()
    updatedAt: Mapped[datetime] = updated_at()

    connection: Mapped[ErpConnection | None] = relationship(
        back_populates="tenant", uselist=False, cascade="all, delete-orphan", lazy="raise"
    )


class ErpConnection(Base):
    __tablename__ = "ErpConnection"
    __table_args__ = (
        CheckConstraint("status IN ('ACTIVE', 'NEEDS_REAUTH', 'DISABLED')", name="status"),
        # The target of the store tables' composite (tenantId, connectionId) key.
        UniqueConstraint("tenantId", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    tenantId: Mapped[str] = mapped_column(
        "tenantId", ForeignKey("Tenant.id", ondelete="CASCADE"), unique=True
    )
    provider: Mapped[str] = mapped_column(String(40))
    settings: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # Fernet token of the credentials JSON; never returned by the API, never logged.
    credentials: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), server_default="ACTIVE")
    lastError: Mapped[str | None] = mapped_column("lastError", Text)
    createdAt: Mapped[datetime] = created_at()
    updatedAt: Mapped[datetime] = updated_at()

    tenant: Mapped[Tenant] = relationship(back_populates="connection", lazy="raise")
