from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.worker import Handler, WorkerService
from erp_sync.settings import Settings
from tests.jobs.helpers import fast_settings


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return fast_settings(settings)


@pytest.fixture
async def queues(fast: Settings) -> AsyncIterator[JobQueues]:
    q = JobQueues(fast)
    yield q
    await q.close()


@pytest.fixture
async def start_worker(fast: Settings) -> AsyncIterator[Callable[..., object]]:
    started: list[WorkerService] = []

    async def start(
        handlers: dict[tuple[str, str], Handler] | None = None, **overrides: object
    ) -> WorkerService:
        s = fast.model_copy(update=overrides) if overrides else fast
        service = WorkerService(s, handlers=handlers) if handlers else WorkerService(s)
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop(grace=5)
