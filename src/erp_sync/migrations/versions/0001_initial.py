"""tenants, connections and the job run ledger

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "Tenant",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("document", sa.String(length=14), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("schedule", sa.String(length=120), server_default="*/15 * * * *", nullable=False),
        sa.Column(
            "createdAt", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "updatedAt", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("Tenant_pkey")),
    )
    op.create_table(
        "ErpConnection",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenantId", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column(
            "settings",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("credentials", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=20), server_default="ACTIVE", nullable=False),
        sa.Column("lastError", sa.Text(), nullable=True),
        sa.Column(
            "createdAt", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "updatedAt", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint(
            "status IN ('ACTIVE', 'NEEDS_REAUTH', 'DISABLED')",
            name=op.f("ErpConnection_status_check"),
        ),
        sa.ForeignKeyConstraint(
            ["tenantId"],
            ["Tenant.id"],
            name=op.f("ErpConnection_tenantId_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("ErpConnection_pkey")),
        sa.UniqueConstraint("tenantId", name=op.f("ErpConnection_tenantId_key")),
    )
    op.create_table(
        "JobRun",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenantId", sa.String(length=64), nullable=True),
        sa.Column("jobName", sa.String(length=100), nullable=False),
        sa.Column("jobId", sa.String(length=200), nullable=True),
        sa.Column("queue", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("trigger", sa.String(length=20), server_default="manual", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("durationMs", sa.Integer(), nullable=True),
        sa.Column(
            "startedAt", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("finishedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stats", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("workerId", sa.String(length=100), nullable=True),
        sa.CheckConstraint(
            "status IN ('RUNNING', 'COMPLETED', 'FAILED')", name=op.f("JobRun_status_check")
        ),
        sa.CheckConstraint(
            "trigger IN ('cron', 'manual', 'api')", name=op.f("JobRun_trigger_check")
        ),
        sa.ForeignKeyConstraint(
            ["tenantId"], ["Tenant.id"], name=op.f("JobRun_tenantId_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("JobRun_pkey")),
    )
    op.create_index("JobRun_startedAt_idx", "JobRun", ["startedAt"], unique=False)
    op.create_index("JobRun_status_startedAt_idx", "JobRun", ["status", "startedAt"], unique=False)
    op.create_index(
        "JobRun_tenantId_startedAt_idx", "JobRun", ["tenantId", "startedAt"], unique=False
    )


def downgrade() -> None:
    op.drop_index("JobRun_tenantId_startedAt_idx", table_name="JobRun")
    op.drop_index("JobRun_status_startedAt_idx", table_name="JobRun")
    op.drop_index("JobRun_startedAt_idx", table_name="JobRun")
    op.drop_table("JobRun")
    op.drop_table("ErpConnection")
    op.drop_table("Tenant")
