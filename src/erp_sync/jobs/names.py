"""Queue and job names: a contract with Node BullMQ producers and Bull Board."""

from __future__ import annotations

SYNC_QUEUE = "sync"
SYNC_JOB = "sync-tenant"
MAINTENANCE_QUEUE = "maintenance"
PRUNE_JOB = "jobrun-prune"
QUEUES = (SYNC_QUEUE, MAINTENANCE_QUEUE)

# Backoff strategy name stored in job options; our workers compute it (capped exponential
# with jitter, or the ERP's Retry-After).
BACKOFF_TYPE = "erp-sync"
PRUNE_SCHEDULER_ID = "jobrun-prune"
PRUNE_CRON = "30 3 * * *"


def dedup_id(tenant_id: str) -> str:
    """At most one sync job per tenant waits or runs: BullMQ deduplication on this id."""
    return f"sync:{tenant_id}"


def scheduler_id(tenant_id: str) -> str:
    return f"sync:{tenant_id}"
