"""What the admin templates show: BullMQ jobs and JobRun rows as plain, masked values.

Nothing here writes: reading only, so the templates stay dumb and the routes stay short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from bullmq import Job

from erp_sync.kit.logging import redact_processor, redact_text

# Operators and customers are in Brazil; every time also shows its UTC offset.
DISPLAY_TZ = ZoneInfo("America/Sao_Paulo")
STATES = ("waiting", "active", "delayed", "prioritized", "completed", "failed")
PAGE_SIZE = 50


def fmt_time(value: datetime | int | float | None) -> str:
    """``2026-03-01 14:05:09 -03:00`` in São Paulo time; '-' for nothing."""
    if value is None or value == 0:
        return "-"
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value / 1000, UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    local = value.astimezone(DISPLAY_TZ)
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {offset[:3]}:{offset[3:]}"


def fmt_duration(ms: int | float | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    if seconds < 1:
        return f"{int(ms)} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 120:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def mask(value: Any) -> Any:
    """Job data as the logs would show it: values under secret-looking keys and every
    registered secret replaced by ***."""
    return redact_processor(None, "admin", {"value": value})["value"]


def pretty(value: Any) -> str:
    """Masked, indented JSON (or the masked text itself when it is a string)."""
    masked = mask(value)
    if isinstance(masked, str):
        return masked
    try:
        return json.dumps(masked, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return redact_text(repr(masked))


def short(text: str | None, limit: int = 160) -> str:
    if not text:
        return ""
    first = redact_text(text).strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


@dataclass
class JobView:
    id: str
    name: str
    queue: str
    state: str
    tenant: str | None
    data: str
    opts: str
    attempts_made: int
    attempts_started: int
    attempts_max: int
    progress: str
    progress_percent: float | None
    created: str
    processed: str
    finished: str
    delay_ms: int
    failed_reason: str
    stacktrace: list[str]
    returnvalue: str
    logs: list[str] = field(default_factory=list)
    logs_total: int = 0

    @property
    def retryable(self) -> bool:
        return self.state in ("failed", "completed")

    @property
    def removable(self) -> bool:
        return self.state != "active"


def job_view(job: Job, queue: str, state: str) -> JobView:
    data = job.data
    tenant = data.get("tenantId") if isinstance(data, dict) else None
    progress = job.progress
    percent: float | None = None
    if isinstance(progress, int | float) and not isinstance(progress, bool):
        percent = float(progress)
    elif isinstance(progress, dict) and isinstance(progress.get("percent"), int | float):
        percent = float(progress["percent"])
    opts = {k: v for k, v in (job.opts or {}).items() if k not in ("jobId",)}
    stack = job.stacktrace if isinstance(job.stacktrace, list) else []
    return JobView(
        id=str(job.id),
        name=str(job.name),
        queue=queue,
        state=state,
        tenant=str(tenant) if tenant is not None else None,
        data=pretty(data),
        opts=pretty(opts),
        attempts_made=int(job.attemptsMade or 0),
        attempts_started=int(job.attemptsStarted or 0),
        attempts_max=int((job.opts or {}).get("attempts") or 1),
        progress="" if progress in (None, 0, {}) else pretty(progress),
        progress_percent=percent,
        created=fmt_time(job.timestamp),
        processed=fmt_time(job.processedOn),
        finished=fmt_time(job.finishedOn),
        delay_ms=int(job.delay or 0),
        failed_reason=redact_text(str(job.failedReason)) if job.failedReason else "",
        stacktrace=[redact_text(str(s)) for s in stack if s],
        returnvalue="" if job.returnvalue is None else pretty(job.returnvalue),
    )


def worker_view(worker: dict[str, Any], now: float) -> dict[str, Any]:
    started = worker.get("startedAt")
    last = worker.get("lastBeat")
    running = worker.get("running") or []
    return {
        "id": str(worker.get("id", "?")),
        "host": str(worker.get("host", "?")),
        "pid": worker.get("pid", "?"),
        "queues": ", ".join(str(q) for q in worker.get("queues") or []),
        "concurrency": worker.get("concurrency", "?"),
        "running": [str(r) for r in running],
        "started": fmt_time(float(started) * 1000) if isinstance(started, int | float) else "-",
        "last_beat_ago": (
            f"{max(0.0, now - float(last)):.0f} s ago" if isinstance(last, int | float) else "-"
        ),
    }
