"""tenant auto-pause

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("Tenant", sa.Column("pausedAt", sa.DateTime(timezone=True), nullable=True))
    op.add_column("Tenant", sa.Column("pausedReason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("Tenant", "pausedReason")
    op.drop_column("Tenant", "pausedAt")
