from __future__ import annotations

import httpx

from erp_sync.api.app import create_app
from erp_sync.settings import Settings
from tests.conftest import closed_port, make_settings


async def test_liveness_touches_no_dependency(settings: Settings) -> None:
    # Both dependencies unreachable: liveness still answers.
    broken = make_settings(
        f"postgresql://postgres@127.0.0.1:{closed_port()}/x",
        redis_url=f"redis://127.0.0.1:{closed_port()}/0",
    )
    app = create_app(broken)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        r = await c.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_ready_reports_each_dependency_with_its_latency(
    api_client: httpx.AsyncClient,
) -> None:
    r = await api_client.get("/health/ready")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["checks"]["postgres"]["status"] == "up"
    assert body["checks"]["redis"]["status"] == "up"
    assert body["checks"]["postgres"]["latencyMs"] >= 0


async def _ready(settings: Settings) -> httpx.Response:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        return await c.get("/health/ready")


async def test_ready_names_an_unreachable_postgres(clean_db: str) -> None:
    r = await _ready(make_settings(f"postgresql://postgres@127.0.0.1:{closed_port()}/x"))
    assert r.status_code == 503
    body = r.json()
    assert body["checks"]["postgres"]["status"] == "down"
    assert body["checks"]["redis"]["status"] == "up"
    assert body["detail"].startswith("postgres is down")


async def test_ready_names_an_unreachable_redis(clean_db: str) -> None:
    r = await _ready(make_settings(clean_db, redis_url=f"redis://127.0.0.1:{closed_port()}/0"))
    assert r.status_code == 503
    body = r.json()
    assert body["checks"]["redis"]["status"] == "down"
    assert body["checks"]["postgres"]["status"] == "up"
    assert "redis is down" in body["detail"]


async def test_ready_answers_within_the_timeout_when_a_dependency_hangs(clean_db: str) -> None:
    # A loopback socket that accepts connections and never answers: PING hangs.
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        started = time.monotonic()
        r = await _ready(make_settings(clean_db, redis_url=f"redis://127.0.0.1:{port}/0"))
        elapsed = time.monotonic() - started
    assert r.status_code == 503
    assert "no answer within 2 s" in r.json()["detail"]
    assert elapsed < 4, elapsed
