"""ErpHttp's outcome table over real HTTP (uvicorn on loopback), with a real Redis governor.

What a user would notice: a sync that retries a bad password forever, gives up on one
502, hammers an ERP that asked for a pause, or crashes with an httpx traceback.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from erp_sync.connectors.base import RateLimits
from erp_sync.connectors.governor import Governor
from erp_sync.connectors.http import ErpHttp, parse_retry_after
from erp_sync.errors import (
    ConfigError,
    ContractError,
    RateLimited,
    RetryableError,
    Timeout,
    UpstreamUnavailable,
)
from tests.conftest import closed_port
from tests.connectors.servers import Served, resetting_server, serve_app

HITS: Counter[str] = Counter()


def _key(request: Request) -> str:
    return request.query_params.get("key", "")


async def status(request: Request) -> Response:
    """/status/{code}?fail=n&retry_after=x: answer ``code`` n times (default: always),
    then 200."""
    key = _key(request)
    HITS[key] += 1
    fail = int(request.query_params.get("fail", "1000000"))
    if HITS[key] > fail:
        return JSONResponse({"ok": True, "hits": HITS[key]})
    code = int(request.path_params["code"])
    headers = {}
    if "retry_after" in request.query_params:
        headers["Retry-After"] = request.query_params["retry_after"]
    if code in (301, 302):
        headers["Location"] = "/elsewhere"
    return JSONResponse({"error": f"status {code}"}, status_code=code, headers=headers)


async def slow(request: Request) -> Response:
    HITS[_key(request)] += 1
    await asyncio.sleep(float(request.query_params["seconds"]))
    return JSONResponse({"ok": True})


async def big(request: Request) -> Response:
    size = int(request.query_params["size"])
    if request.query_params.get("chunked"):

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(size // 100):
                yield b"x" * 100

        return StreamingResponse(chunks(), media_type="application/octet-stream")
    return Response(b"x" * size, media_type="application/octet-stream")


async def not_json(request: Request) -> Response:
    return PlainTextResponse("<html>maintenance</html>")


async def bad_gzip(request: Request) -> Response:
    return Response(
        b"this is not gzip at all",
        headers={"Content-Encoding": "gzip"},
        media_type="application/json",
    )


async def good_gzip(request: Request) -> Response:
    return Response(
        gzip.compress(b'{"ok": true}'),
        headers={"Content-Encoding": "gzip"},
        media_type="application/json",
    )


APP = Starlette(
    routes=[
        Route("/status/{code:int}", status),
        Route("/slow", slow),
        Route("/big", big),
        Route("/not-json", not_json),
        Route("/bad-gzip", bad_gzip),
        Route("/good-gzip", good_gzip),
    ]
)


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    with serve_app(APP) as served:
        yield served


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    return request.node.name


def governor(redis: aioredis.Redis, prefix: str, limits: RateLimits | None = None) -> Governor:
    return Governor(
        redis, prefix=prefix, provider="test", account="acct", limits=limits or RateLimits()
    )


@pytest.fixture
async def http(server: Served, redis: aioredis.Redis, key_prefix: str) -> AsyncIterator[ErpHttp]:
    client = ErpHttp(
        server.url, governor(redis, key_prefix), provider="TestERP", max_retry_wait_s=0.05
    )
    yield client
    await client.aclose()


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (401, ConfigError),
        (403, ConfigError),
        (400, ContractError),
        (404, ContractError),
        (409, ContractError),
        (422, ContractError),
        (302, ContractError),
    ],
)
async def test_permanent_outcomes_are_not_retried(
    http: ErpHttp, key: str, code: int, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        await http.request("GET", f"/status/{code}", params={"key": key})
    assert HITS[key] == 1
    assert f"HTTP {code}" in str(info.value)
    assert not isinstance(info.value, RetryableError)


@pytest.mark.parametrize("code", [408, 425, 500, 502, 503, 504, 599])
async def test_retryable_outcomes_are_retried_then_raised(
    http: ErpHttp, key: str, code: int
) -> None:
    with pytest.raises(UpstreamUnavailable) as info:
        await http.request("GET", f"/status/{code}", params={"key": key})
    assert HITS[key] == http.attempts == 4
    assert f"HTTP {code}" in str(info.value)


async def test_a_blip_is_invisible(http: ErpHttp, key: str) -> None:
    resp = await http.request("GET", "/status/502", params={"key": key, "fail": 2})
    assert resp.status == 200
    assert resp.json() == {"ok": True, "hits": 3}


async def test_ok_statuses_are_returned(http: ErpHttp, key: str) -> None:
    resp = await http.request("GET", "/status/404", params={"key": key}, ok=(404,))
    assert resp.status == 404
    assert resp.json() == {"error": "status 404"}


async def test_retry_after_is_honoured(
    server: Served, redis: aioredis.Redis, key_prefix: str, key: str
) -> None:
    http = ErpHttp(server.url, governor(redis, key_prefix), provider="TestERP")
    try:
        started = time.monotonic()
        resp = await http.request(
            "GET", "/status/503", params={"key": key, "fail": 1, "retry_after": "1"}
        )
        elapsed = time.monotonic() - started
    finally:
        await http.aclose()
    assert resp.status == 200
    # Our own first backoff would be 0.5 s: the server's 1 s wins.
    assert 1.0 <= elapsed < 2.0


async def test_a_wait_beyond_the_inline_budget_goes_to_the_job(
    server: Served, redis: aioredis.Redis, key_prefix: str, key: str
) -> None:
    http = ErpHttp(server.url, governor(redis, key_prefix), provider="TestERP", max_retry_wait_s=5)
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable) as info:
            await http.request("GET", "/status/503", params={"key": key, "retry_after": "120"})
    finally:
        await http.aclose()
    assert HITS[key] == 1
    assert info.value.retry_after == 120
    assert time.monotonic() - started < 2


async def test_429_holds_every_worker_on_the_account(
    server: Served, redis: aioredis.Redis, key_prefix: str, key: str
) -> None:
    http = ErpHttp(server.url, governor(redis, key_prefix), provider="TestERP", attempts=1)
    try:
        with pytest.raises(RateLimited) as info:
            await http.request("GET", "/status/429", params={"key": key})
    finally:
        await http.aclose()
    assert info.value.retry_after == 1.0
    # Another process on the same account (its own Governor instance) is held too.
    other = governor(redis, key_prefix)
    waited = await other.acquire()
    assert 0.8 <= waited <= 1.05


async def test_429_retry_after_penalizes_for_that_long(
    server: Served, redis: aioredis.Redis, key_prefix: str, key: str
) -> None:
    http = ErpHttp(server.url, governor(redis, key_prefix), provider="TestERP", attempts=1)
    try:
        with pytest.raises(RateLimited):
            await http.request("GET", "/status/429", params={"key": key, "retry_after": "2"})
    finally:
        await http.aclose()
    waited = await governor(redis, key_prefix).acquire()
    assert 1.8 <= waited <= 2.05


async def test_daily_quota_is_not_slept_inline(
    server: Served, redis: aioredis.Redis, key_prefix: str, key: str
) -> None:
    gov = governor(redis, key_prefix, RateLimits(per_day=1))
    http = ErpHttp(server.url, gov, provider="TestERP")
    try:
        await http.request("GET", "/status/200", params={"key": key})
        started = time.monotonic()
        with pytest.raises(RateLimited) as info:
            await http.request("GET", "/status/200", params={"key": key})
    finally:
        await http.aclose()
    assert time.monotonic() - started < 1
    assert HITS[key] == 1
    assert info.value.retry_after is not None and info.value.retry_after > 60


async def test_timeout(server: Served, redis: aioredis.Redis, key_prefix: str, key: str) -> None:
    http = ErpHttp(
        server.url,
        governor(redis, key_prefix),
        provider="TestERP",
        timeout=httpx.Timeout(0.2),
        attempts=2,
        max_retry_wait_s=0.01,
    )
    try:
        with pytest.raises(Timeout, match="timed out"):
            await http.request("GET", "/slow", params={"key": key, "seconds": 1})
    finally:
        await http.aclose()
    assert HITS[key] == 2


async def test_connection_refused(redis: aioredis.Redis, key_prefix: str) -> None:
    http = ErpHttp(
        f"http://127.0.0.1:{closed_port()}",
        governor(redis, key_prefix),
        provider="TestERP",
        max_retry_wait_s=0.01,
    )
    try:
        with pytest.raises(UpstreamUnavailable, match="cannot reach TestERP"):
            await http.request("GET", "/anything")
    finally:
        await http.aclose()


async def test_connection_reset(redis: aioredis.Redis, key_prefix: str) -> None:
    with resetting_server() as url:
        http = ErpHttp(url, governor(redis, key_prefix), provider="TestERP", max_retry_wait_s=0.01)
        try:
            with pytest.raises(UpstreamUnavailable, match="cannot reach TestERP"):
                await http.request("GET", "/anything")
        finally:
            await http.aclose()


async def test_unusable_base_url_is_a_config_error(redis: aioredis.Redis, key_prefix: str) -> None:
    http = ErpHttp("ftp://erp.example", governor(redis, key_prefix), provider="TestERP")
    try:
        with pytest.raises(ConfigError, match="base URL"):
            await http.request("GET", "/anything")
    finally:
        await http.aclose()


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_size_limit(
    server: Served, redis: aioredis.Redis, key_prefix: str, chunked: bool
) -> None:
    http = ErpHttp(server.url, governor(redis, key_prefix), provider="TestERP", max_body_bytes=1000)
    params: dict[str, Any] = {"size": 5000}
    if chunked:
        params["chunked"] = 1
    try:
        with pytest.raises(ContractError, match="1000 byte"):
            await http.request("GET", "/big", params=params)
        small = await http.request("GET", "/big", params={"size": 900})
    finally:
        await http.aclose()
    assert len(small.body) == 900


async def test_body_that_is_not_json(http: ErpHttp) -> None:
    resp = await http.request("GET", "/not-json")
    with pytest.raises(ContractError, match="not valid JSON"):
        resp.json()


async def test_corrupt_compressed_body(http: ErpHttp) -> None:
    with pytest.raises(ContractError, match="cannot be decoded"):
        await http.request("GET", "/bad-gzip")
    assert (await http.request("GET", "/good-gzip")).json() == {"ok": True}


async def test_error_message_carries_the_erp_explanation(http: ErpHttp, key: str) -> None:
    with pytest.raises(ContractError, match="status 422"):
        await http.request("GET", "/status/422", params={"key": key})


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("inf") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    parsed = parse_retry_after(future)
    assert parsed is not None and 25 <= parsed <= 31
