"""``GET /metrics``: Prometheus text exposition.

The counted metrics of every process sharing PROMETHEUS_MULTIPROC_DIR (or of this
process alone), plus gauges sampled now from BullMQ and the database. A source that is
down costs its gauges (``erp_sync_metrics_source_up`` says which), never the scrape:
the metrics matter most exactly then.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.core import Metric

from erp_sync.api.deps import RuntimeDep
from erp_sync.jobs import heartbeat
from erp_sync.jobs.queues import JobQueues
from erp_sync.kit import metrics
from erp_sync.kit.logging import get_logger
from erp_sync.runtime import Runtime
from erp_sync.status import service

router = APIRouter(tags=["metrics"])
log = get_logger(__name__)

# Each source gets this long per scrape (Prometheus' default scrape timeout is 10 s).
SOURCE_TIMEOUT_S = 4.0
QUEUE_STATES = ("waiting", "active", "delayed", "prioritized", "completed", "failed")
HEALTH_STATES = ("ok", "stale", "failing", "paused", "needs_reauth", "never_synced", "inactive")


async def sample_queues(rt: Runtime, queues: JobQueues) -> list[Metric]:
    status = await queues.status()
    live = await heartbeat.live_workers(rt.redis, rt.settings.queue_prefix)
    depth: dict[tuple[str, ...], float] = {}
    paused: dict[tuple[str, ...], float] = {}
    for q in status:
        name = str(q["queue"])
        counts: dict[str, Any] = q["counts"]
        for state in QUEUE_STATES:
            depth[(name, state)] = float(counts.get(state, 0) or 0)
        paused[(name,)] = 1.0 if q["paused"] else 0.0
    return [
        metrics.QUEUE_JOBS.family(depth),
        metrics.QUEUE_PAUSED.family(paused),
        metrics.WORKERS_LIVE.family({(): float(len(live))}),
    ]


async def sample_tenants(rt: Runtime) -> list[Metric]:
    s = rt.settings
    health = dict.fromkeys(HEALTH_STATES, 0)
    max_lag = 0.0
    async with rt.unit_of_work() as session:
        tenants = await service.all_tenant_health(
            session, tz=s.schedule_tz, stale_factor=s.stale_factor
        )
    for t in tenants:
        health[t.health] = health.get(t.health, 0) + 1
        if t.running and t.lag is not None:
            max_lag = max(max_lag, t.lag)
    return [
        metrics.TENANTS.family({(h,): float(n) for h, n in health.items()}),
        metrics.SYNC_LAG_MAX.family({(): max_lag}),
    ]


async def _sample(
    source: str, sampler: Callable[[], Awaitable[list[Metric]]]
) -> tuple[str, list[Metric]]:
    try:
        async with asyncio.timeout(SOURCE_TIMEOUT_S):
            return source, await sampler()
    except Exception as exc:
        log.warning("metrics.source_down", source=source, error=f"{type(exc).__name__}: {exc}")
        return source, []


@functools.cache
def _warn_not_multiprocess() -> None:
    log.warning(
        "metrics.not_multiprocess",
        detail="PROMETHEUS_MULTIPROC_DIR is set but reached this process after "
        "prometheus_client was imported: its own counts are not served. Start it with "
        "`erp-sync api`, or set the variable in the environment.",
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def prometheus_metrics(request: Request, rt: RuntimeDep) -> Response:
    queues: JobQueues = request.app.state.queues
    results = await asyncio.gather(
        _sample("queues", lambda: sample_queues(rt, queues)),
        _sample("database", lambda: sample_tenants(rt)),
    )
    sampled: list[Metric] = []
    up: dict[tuple[str, ...], float] = {}
    for source, families in results:
        sampled.extend(families)
        up[(source,)] = 1.0 if families else 0.0
    sampled.append(metrics.SOURCE_UP.family(up))
    if rt.settings.prometheus_multiproc_dir and not metrics.multiprocess_active():
        _warn_not_multiprocess()
    body = await asyncio.to_thread(metrics.render, sampled, rt.settings.prometheus_multiproc_dir)
    return Response(body, media_type=metrics.CONTENT_TYPE)
