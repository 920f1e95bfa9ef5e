"""Prometheus metrics: every definition, and how a process serves them.

Two kinds:

- **Counted** where things happen (jobs, records, ERP requests, governor waits, token
  refreshes): ``prometheus_client`` counters and histograms in each process. With
  PROMETHEUS_MULTIPROC_DIR set (before ``prometheus_client`` is first imported: see
  ``erp_sync.settings.export_metrics_environment``) every process writes its values to
  files in that directory and the API's ``/metrics`` adds them up.
- **Sampled** when scraped (queue depth, paused queues, live workers, tenant health,
  sync lag): computed by the API from Redis and PostgreSQL at each scrape, never stored
  per process, so they cannot go stale or be double counted.

No label ever holds a tenant id (unbounded cardinality): per-tenant detail lives in
``GET /api/v1/status``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# `*_created` series double the output and are not aggregated in multiprocess mode.
disable_created_metrics()  # type: ignore[no-untyped-call]

# The classic text format, which every Prometheus and agent reads (what prometheus_client
# itself answers a scraper that asks for nothing in particular).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# -- counted where it happens ---------------------------------------------------------

JOB_LABELS = ("queue", "job")
JOBS_STARTED = Counter("erp_sync_jobs_started", "Job attempts started.", JOB_LABELS)
JOBS_COMPLETED = Counter("erp_sync_jobs_completed", "Job attempts that completed.", JOB_LABELS)
JOBS_FAILED = Counter(
    "erp_sync_jobs_failed",
    "Job attempts that failed (retried or not, and those cut short by a worker stop).",
    JOB_LABELS,
)
JOB_DURATION = Histogram(
    "erp_sync_job_duration_seconds",
    "Duration of job attempts, whatever their outcome.",
    JOB_LABELS,
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)

RECORD_LABELS = ("provider", "stream")
RECORDS_FETCHED = Counter(
    "erp_sync_records_fetched", "Records read from ERPs (pages written).", RECORD_LABELS
)
RECORDS_INSERTED = Counter("erp_sync_records_inserted", "Rows inserted.", RECORD_LABELS)
RECORDS_UPDATED = Counter("erp_sync_records_updated", "Rows whose content changed.", RECORD_LABELS)
RECORDS_UNCHANGED = Counter(
    "erp_sync_records_unchanged", "Records identical to the stored row.", RECORD_LABELS
)
RECORDS_QUARANTINED = Counter(
    "erp_sync_records_quarantined", "Records rejected by validation.", RECORD_LABELS
)
RECORDS_DELETED = Counter(
    "erp_sync_records_deleted", "Rows marked deleted by full syncs.", RECORD_LABELS
)

ERP_REQUESTS = Counter(
    "erp_sync_erp_requests",
    "HTTP requests to ERPs by outcome: 2xx..5xx, timeout, unreachable.",
    ("provider", "status_class"),
)
ERP_RATE_LIMITED = Counter(
    "erp_sync_erp_rate_limited",
    "Rate-limit answers from ERPs (429 or Retry-After): each holds the whole account.",
    ("provider",),
)
GOVERNOR_WAIT = Histogram(
    "erp_sync_governor_wait_seconds",
    "Time requests waited for their ERP account's rate budget.",
    ("provider",),
    buckets=(0.005, 0.05, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
GOVERNOR_REFUSALS = Counter(
    "erp_sync_governor_refusals",
    "Requests not sent: daily quota used up, or the account busy for minutes.",
    ("provider", "reason"),
)
TOKEN_REFRESHES = Counter(
    "erp_sync_token_refreshes", "OAuth access tokens refreshed.", ("provider",)
)
TOKEN_REFRESH_FAILURES = Counter(
    "erp_sync_token_refresh_failures", "OAuth token refreshes that failed.", ("provider",)
)


@contextlib.contextmanager
def job_attempt(queue: str, job: str) -> Iterator[None]:
    """Count one job attempt: started now; completed, or failed when it raises."""
    JOBS_STARTED.labels(queue, job).inc()
    started = time.monotonic()
    try:
        yield
    except BaseException:
        JOBS_FAILED.labels(queue, job).inc()
        raise
    else:
        JOBS_COMPLETED.labels(queue, job).inc()
    finally:
        JOB_DURATION.labels(queue, job).observe(time.monotonic() - started)


def count_records(
    provider: str,
    stream: str,
    *,
    fetched: int = 0,
    inserted: int = 0,
    updated: int = 0,
    unchanged: int = 0,
    quarantined: int = 0,
    deleted: int = 0,
) -> None:
    for counter, n in (
        (RECORDS_FETCHED, fetched),
        (RECORDS_INSERTED, inserted),
        (RECORDS_UPDATED, updated),
        (RECORDS_UNCHANGED, unchanged),
        (RECORDS_QUARANTINED, quarantined),
        (RECORDS_DELETED, deleted),
    ):
        # Touch every series even at 0, so rates and dashboards start from a known zero.
        counter.labels(provider, stream).inc(n)


def count_erp_request(provider: str, outcome: int | str) -> None:
    """``outcome``: the HTTP status, or "timeout" / "unreachable" when none came."""
    status_class = f"{outcome // 100}xx" if isinstance(outcome, int) else outcome
    ERP_REQUESTS.labels(provider, status_class).inc()


# -- sampled at scrape time -----------------------------------------------------------


@dataclass(frozen=True)
class Sampled:
    """A gauge the API computes at each scrape."""

    name: str
    help: str
    labels: tuple[str, ...] = ()

    def family(self, samples: Mapping[tuple[str, ...], float]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(self.name, self.help, labels=list(self.labels))
        for label_values, value in samples.items():
            family.add_metric(list(label_values), value)
        return family


QUEUE_JOBS = Sampled("erp_sync_queue_jobs", "Jobs in the queue per state.", ("queue", "state"))
QUEUE_PAUSED = Sampled("erp_sync_queue_paused", "1 while the queue is paused.", ("queue",))
WORKERS_LIVE = Sampled("erp_sync_workers_live", "Worker processes with a live heartbeat.")
TENANTS = Sampled(
    "erp_sync_tenants",
    "Tenants per sync health: ok, stale, failing, paused, needs_reauth, never_synced, inactive.",
    ("health",),
)
SYNC_LAG_MAX = Sampled(
    "erp_sync_sync_lag_max_seconds",
    "Largest time since the last complete sync of a tenant's least fresh stream, over "
    "active, unpaused tenants that have synced (0 when there are none).",
)
SOURCE_UP = Sampled(
    "erp_sync_metrics_source_up",
    "1 when the API could read this source (queues: Redis, database: PostgreSQL) for "
    "this scrape; 0 means the sampled gauges of that source are missing.",
    ("source",),
)


# -- serving --------------------------------------------------------------------------


def multiprocess_active() -> bool:
    """True when this process writes its values to PROMETHEUS_MULTIPROC_DIR."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class _Scrape:
    def __init__(self, collectors: Iterable[Collector], sampled: Iterable[Metric]) -> None:
        self.collectors = list(collectors)
        self.sampled = list(sampled)

    def collect(self) -> Iterable[Metric]:
        for collector in self.collectors:
            yield from collector.collect()
        yield from self.sampled


def render(sampled: Iterable[Metric], multiproc_dir: Path | None) -> bytes:
    """The text exposition: the counted metrics of every process writing to
    ``multiproc_dir`` (or, without one, this process's own), then the sampled gauges."""
    collector: Collector = REGISTRY
    if multiproc_dir is not None:
        path = str(multiproc_dir)
        collector = multiprocess.MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(_Scrape([collector], sampled))


@contextlib.contextmanager
def serving(
    port: int | None, host: str = "0.0.0.0", error: Callable[[str], Exception] = OSError
) -> Iterator[None]:
    """Serve this process's own metrics on ``port`` (a thread) while the block runs;
    ``error(message)`` is raised when the port cannot be bound."""
    if port is None:
        yield
        return
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise error(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
            "choose a free METRICS_PORT or unset it."
        ) from None
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def forget_process(multiproc_dir: Path | None) -> None:
    """At a clean exit: drop this process's live-gauge files from the shared directory,
    so that no per-process gauge outlives its process (none exists today: the gauges are
    sampled by the API). Its counters stay: they are cumulative."""
    if multiproc_dir is not None and multiprocess_active():
        multiprocess.mark_process_dead(os.getpid(), str(multiproc_dir))  # type: ignore[no-untyped-call]
