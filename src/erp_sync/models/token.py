"""Tenant-scoped API tokens. Only a SHA-256 of each token is stored: a dump of the
database opens nothing."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from erp_sync.models.base import Base, created_at, new_id


class ApiToken(Base):
    __tablename__ = "ApiToken"
    __table_args__ = (Index("ApiToken_tenantId_createdAt_idx", "tenantId", "createdAt"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    tenantId: Mapped[str] = mapped_column("tenantId", ForeignKey("Tenant.id", ondelete="CASCADE"))
    # The operator's label, e.g. "storefront production".
    name: Mapped[str] = mapped_column(String(200))
    # Hex SHA-256 of the whole token: the key a request is authenticated by.
    tokenHash: Mapped[str] = mapped_column("tokenHash", String(64), unique=True)
    # The first characters after "mxs_", not secret: lets an operator tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    createdAt: Mapped[datetime] = created_at()
    # Written at most once a minute per token (a cheap conditional UPDATE).
    lastUsedAt: Mapped[datetime | None] = mapped_column("lastUsedAt")
    revokedAt: Mapped[datetime | None] = mapped_column("revokedAt")
    expiresAt: Mapped[datetime | None] = mapped_column("expiresAt")
