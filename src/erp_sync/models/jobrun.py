from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from erp_sync.models.base import Base

JOB_STATUSES = ("RUNNING", "COMPLETED", "FAILED")
TRIGGERS = ("cron", "manual", "api")


class JobRun(Base):
    """One row per job *attempt*; the runbook's section 5 and 7 SQL run against it."""

    __tablename__ = "JobRun"
    __table_args__ = (
        CheckConstraint("status IN ('RUNNING', 'COMPLETED', 'FAILED')", name="status"),
        CheckConstraint("trigger IN ('cron', 'manual', 'api')", name="trigger"),
        # Runbook section 5: WHERE status = 'FAILED' ORDER BY "startedAt" DESC LIMIT 50.
        Index("JobRun_status_startedAt_idx", "status", "startedAt"),
        # Runbook section 7 and the prune job: WHERE "startedAt" < ...
        Index("JobRun_startedAt_idx", "startedAt"),
        Index("JobRun_tenantId_startedAt_idx", "tenantId", "startedAt"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    tenantId: Mapped[str | None] = mapped_column(
        "tenantId", ForeignKey("Tenant.id", ondelete="CASCADE")
    )
    jobName: Mapped[str] = mapped_column("jobName", String(100))
    jobId: Mapped[str | None] = mapped_column("jobId", String(200))
    queue: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer, server_default="1")
    trigger: Mapped[str] = mapped_column(String(20), server_default="manual")
    error: Mapped[str | None] = mapped_column(Text)
    durationMs: Mapped[int | None] = mapped_column("durationMs", Integer)
    startedAt: Mapped[datetime] = mapped_column("startedAt", server_default=func.now())
    finishedAt: Mapped[datetime | None] = mapped_column("finishedAt")
    stats: Mapped[dict[str, Any] | None] = mapped_column()
    # The worker that owns a RUNNING row: lets a recovered job close its dead attempt.
    workerId: Mapped[str | None] = mapped_column("workerId", String(100))
