"""a full sync that began on an empty table needs no deletion sweep

A full sync records every id it reads (SyncSeen) so that, once it has read the whole
list, what it did not see gets deletedAt. When the connection had no rows at all in the
stream's table as the full sync began, every row there was written by that sync: none
can be missing from what it read, and the ids need not be recorded. The flag keeps that
fact across the jobs of one full sync (a full sync may resume in a later job).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "SyncState",
        sa.Column(
            "fullRunFromEmpty", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_column("SyncState", "fullRunFromEmpty")
