from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from erp_sync.tenants.schemas import Name

TokenStatus = Literal["active", "revoked", "expired"]


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="A label for people, e.g. 'storefront production'")
    expiresInDays: int | None = Field(
        default=None, ge=1, le=3650, description="Days until the token stops working; omit: never"
    )


class TokenOut(BaseModel):
    """A token as operators see it: never the token itself, never its hash."""

    id: str
    tenantId: str
    name: str
    prefix: str = Field(description="The token's first characters, to recognise it")
    status: TokenStatus
    createdAt: datetime
    lastUsedAt: datetime | None = Field(description="Updated at most once a minute")
    expiresAt: datetime | None
    revokedAt: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The bearer token. Shown this once: only its hash is kept")


class TokenList(BaseModel):
    items: list[TokenOut]
