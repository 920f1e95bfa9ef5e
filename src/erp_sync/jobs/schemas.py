from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class JobRunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    tenantId: str | None
    jobName: str
    jobId: str | None
    queue: str
    status: str
    attempt: int
    trigger: str
    error: str | None
    durationMs: int | None
    startedAt: datetime
    finishedAt: datetime | None
    stats: dict[str, Any] | None


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    streams: list[str] | None = None
    full: bool = False


class SyncQueued(BaseModel):
    jobId: str
    created: bool
    message: str


class QueueStatus(BaseModel):
    queue: str
    paused: bool
    counts: dict[str, int]


class QueuesOverview(BaseModel):
    queues: list[QueueStatus]
    workers: list[dict[str, Any]]
