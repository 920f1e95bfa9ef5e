"""tenant-scoped API tokens

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ApiToken",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenantId", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("tokenHash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column(
            "createdAt", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("lastUsedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revokedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expiresAt", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenantId"], ["Tenant.id"], name=op.f("ApiToken_tenantId_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("ApiToken_pkey")),
        sa.UniqueConstraint("tokenHash", name=op.f("ApiToken_tokenHash_key")),
    )
    op.create_index(
        "ApiToken_tenantId_createdAt_idx", "ApiToken", ["tenantId", "createdAt"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ApiToken_tenantId_createdAt_idx", table_name="ApiToken")
    op.drop_table("ApiToken")
