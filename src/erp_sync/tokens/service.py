"""Tenant-scoped API tokens: minted here, shown once, stored as a SHA-256 only.

A token is ``mxs_`` and 43 url-safe characters (32 random bytes): recognisable in a
leaked log or a secret scanner, and far beyond guessing, so an unsalted SHA-256 is a
safe lookup key. Services flush, never commit.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from erp_sync.errors import NotFound
from erp_sync.kit.logging import get_logger, register_secret_pattern
from erp_sync.kit.time import utcnow
from erp_sync.models import ApiToken
from erp_sync.tenants.service import get_tenant
from erp_sync.tokens.schemas import TokenCreate, TokenCreated, TokenOut, TokenStatus

log = get_logger(__name__)

MARKER = "mxs_"
# Characters after the marker kept as the token's display prefix (not secret: 48 of its
# 256 bits, the rest still out of reach).
PREFIX_CHARS = 8
# lastUsedAt is written at most this often per token: one conditional UPDATE a minute,
# not one per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)

# Tokens are never registered one by one (we do not keep them): every log line is
# scanned for their shape instead. A display prefix (12 characters) stays readable.
register_secret_pattern(MARKER, r"\bmxs_[A-Za-z0-9_-]{20,}")


def mint() -> str:
    return MARKER + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(value: str) -> bool:
    return value.startswith(MARKER)


def status_of(token: ApiToken, now: datetime | None = None) -> TokenStatus:
    if token.revokedAt is not None:
        return "revoked"
    if token.expiresAt is not None and token.expiresAt <= (now or utcnow()):
        return "expired"
    return "active"


def token_out(token: ApiToken) -> TokenOut:
    return TokenOut(
        id=token.id,
        tenantId=token.tenantId,
        name=token.name,
        prefix=token.prefix,
        status=status_of(token),
        createdAt=token.createdAt,
        lastUsedAt=token.lastUsedAt,
        expiresAt=token.expiresAt,
        revokedAt=token.revokedAt,
    )


def token_not_found(token_id: str) -> NotFound:
    return NotFound(f"token {token_id!r} does not exist")


async def create_token(session: AsyncSession, tenant_id: str, data: TokenCreate) -> TokenCreated:
    """A new token for the tenant; the only moment its plain text exists on our side."""
    tenant = await get_tenant(session, tenant_id)
    plain = mint()
    row = ApiToken(
        tenantId=tenant.id,
        name=data.name,
        tokenHash=hash_token(plain),
        prefix=plain[: len(MARKER) + PREFIX_CHARS],
        expiresAt=utcnow() + timedelta(days=data.expiresInDays) if data.expiresInDays else None,
    )
    session.add(row)
    await session.flush()
    await session.refresh(row, attribute_names=["createdAt"])
    log.info("api_token.created", tenant_id=tenant.id, token_id=row.id, prefix=row.prefix)
    return TokenCreated(**token_out(row).model_dump(), token=plain)


async def list_tokens(session: AsyncSession, tenant_id: str | None = None) -> Sequence[ApiToken]:
    """One tenant's tokens (NotFound for an unknown tenant), or every tenant's."""
    stmt = select(ApiToken).order_by(ApiToken.tenantId, ApiToken.createdAt, ApiToken.id)
    if tenant_id is not None:
        await get_tenant(session, tenant_id)
        stmt = stmt.where(ApiToken.tenantId == tenant_id)
    return (await session.execute(stmt)).scalars().all()


async def revoke_token(
    session: AsyncSession, token_id: str, *, tenant_id: str | None = None
) -> tuple[ApiToken, bool]:
    """Revoke a token (of ``tenant_id`` when given); (token, False) if it already was."""
    stmt = select(ApiToken).where(ApiToken.id == token_id).with_for_update()
    if tenant_id is not None:
        stmt = stmt.where(ApiToken.tenantId == tenant_id)
    token = (await session.execute(stmt)).scalar_one_or_none()
    if token is None:
        raise token_not_found(token_id)
    if token.revokedAt is not None:
        return token, False
    token.revokedAt = utcnow()
    await session.flush()
    log.info("api_token.revoked", tenant_id=token.tenantId, token_id=token.id, prefix=token.prefix)
    return token, True


async def authenticate(session: AsyncSession, presented: str) -> ApiToken | None:
    """The live token ``presented`` is, or None (unknown, revoked or expired)."""
    now = utcnow()
    token = (
        await session.execute(
            select(ApiToken).where(
                ApiToken.tokenHash == hash_token(presented),
                ApiToken.revokedAt.is_(None),
                or_(ApiToken.expiresAt.is_(None), ApiToken.expiresAt > now),
            )
        )
    ).scalar_one_or_none()
    if token is None:
        return None
    stale = now - LAST_USED_RESOLUTION
    if token.lastUsedAt is None or token.lastUsedAt < stale:
        # Conditional: of concurrent requests, one writes and the others match nothing.
        await session.execute(
            update(ApiToken)
            .where(
                ApiToken.id == token.id,
                or_(ApiToken.lastUsedAt.is_(None), ApiToken.lastUsedAt < stale),
            )
            .values(lastUsedAt=now)
            .execution_options(synchronize_session=False)
        )
    return token
