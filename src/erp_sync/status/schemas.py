from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class StreamStatus(BaseModel):
    stream: str
    lastSuccessAt: datetime | None
    lagSeconds: float | None
    cursor: dict[str, Any] | None
    fullSyncInProgress: bool
    lastFullSyncAt: datetime | None
    lastError: str | None
    lastErrorAt: datetime | None
    lastRun: dict[str, Any] | None
    quarantined: int


class ConnectionStatus(BaseModel):
    provider: str
    status: str
    reason: str | None


class LastJob(BaseModel):
    jobId: str | None
    status: str
    startedAt: datetime
    finishedAt: datetime | None
    error: str | None


class TenantStatus(BaseModel):
    tenantId: str
    name: str
    active: bool
    paused: bool
    pausedReason: str | None
    schedule: str
    nextRunAt: datetime | None
    connection: ConnectionStatus | None
    health: str  # ok, stale, failing, paused, needs_reauth, never_synced, inactive
    lagSeconds: float | None
    consecutiveFailures: int
    lastJob: LastJob | None
    streams: list[StreamStatus]


class Problem(BaseModel):
    tenantId: str
    name: str
    health: str
    severity: int
    lagSeconds: float | None
    detail: str


class Overview(BaseModel):
    tenants: int
    problems: list[Problem]


class QuarantineItem(BaseModel):
    id: int
    stream: str
    externalId: str | None
    reason: str
    firstSeenAt: datetime
    lastSeenAt: datetime
    occurrences: int
    raw: dict[str, Any]


class QuarantineList(BaseModel):
    items: list[QuarantineItem]
    total: int
