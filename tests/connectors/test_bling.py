"""The Bling connector over real HTTP against the Bling sandbox, with a real Redis for the
governor and the refresh lock; credentials live in memory as the engine would store them.

Besides the shared contract: tokens rotate and the new pair is what gets stored and
used; a refused refresh stops the sync at once with a message saying to re-authorise;
expired tokens cost one refresh; a 429 storm and 5xx bursts are survived; broken
records fail in ``to_canonical`` while the rest map; mapped values equal the sandbox's
truth to the cent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from erp_sync.canonical import Customer, Product, SalesOrder, StockLevel
from erp_sync.connectors.base import Connector, ConnectorContext, Cursor, RateLimits
from erp_sync.connectors.bling import BlingConnector
from erp_sync.connectors.bling import cursor as bling_cursor
from erp_sync.connectors.governor import Governor
from erp_sync.connectors.registry import get_connector
from erp_sync.errors import ConfigError, ContractError
from erp_sync.kit.locks import redis_lock
from erp_sync.sandbox.bling import BlingSandboxConfig, RunningSandbox, running
from tests.connectors.contract import (
    ConnectorContract,
    Harness,
    closing,
    ids_of,
    read_all,
)

CLIENT_ID = "merxios-sandbox"
SECRET = "sandbox-secret"
STREAMS = ("products", "stock_levels", "customers", "sales_orders")
SIZES = {"products": 250, "customers": 120, "orders": 150}


# ----------------------------------------------------------------------- sandbox


@contextlib.contextmanager
def sandbox(**overrides: Any) -> Iterator[RunningSandbox]:
    config = {"port": 0, "rate_limit": 0, **SIZES, **overrides}
    with running(BlingSandboxConfig(**config)) as sb:
        yield sb


def tokens(sb: RunningSandbox) -> dict[str, Any]:
    r = httpx.post(
        f"{sb.base_url}/oauth/token",
        auth=(CLIENT_ID, SECRET),
        data={"grant_type": "authorization_code", "code": sb.config.auth_code},
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def refresh_directly(sb: RunningSandbox, refresh_token: str) -> httpx.Response:
    return httpx.post(
        f"{sb.base_url}/oauth/token",
        auth=(CLIENT_ID, SECRET),
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
    )


def admin(sb: RunningSandbox, method: str, path: str, body: Any = None) -> Any:
    r = httpx.request(method, f"{sb.root_url}/__sandbox/{path}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def faults(sb: RunningSandbox, **knobs: Any) -> None:
    admin(sb, "POST", "faults", knobs)


def stats(sb: RunningSandbox) -> dict[str, Any]:
    result: dict[str, Any] = admin(sb, "GET", "stats")
    return result


def endpoint_requests(sb: RunningSandbox, endpoint: str) -> int:
    return int(stats(sb)["by_endpoint"].get(endpoint, {}).get("requests", 0))


def truth(sb: RunningSandbox, stream: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{sb.root_url}/__sandbox/truth", params={"stream": stream}, timeout=60)
    assert r.status_code == 200
    return [orjson.loads(line) for line in r.content.splitlines() if line]


def truth_ids(sb: RunningSandbox, stream: str) -> set[str]:
    if stream == "stock_levels":
        return {f"{t['productExternalId']}:{t['warehouseExternalId']}" for t in truth(sb, stream)}
    return {t["externalId"] for t in truth(sb, stream)}


# ------------------------------------------------------------------- credentials


class CredentialStore:
    """The engine's encrypted credential column, in memory: shared by every 'process'."""

    def __init__(self, credentials: dict[str, Any]) -> None:
        self.current = dict(credentials)
        self.saves: list[dict[str, Any]] = []

    async def save(self, credentials: dict[str, Any]) -> None:
        self.saves.append(dict(credentials))
        self.current = dict(credentials)

    async def reload(self) -> dict[str, Any]:
        return dict(self.current)


def sandbox_credentials(sb: RunningSandbox) -> dict[str, Any]:
    pair = tokens(sb)
    return {
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "access_token": pair["access_token"],
        "refresh_token": pair["refresh_token"],
        "expires_at": None,
    }


def make_connector(
    sb: RunningSandbox,
    store: CredentialStore,
    redis: aioredis.Redis,
    prefix: str,
    *,
    limits: RateLimits | None = None,
    **settings: Any,
) -> BlingConnector:
    """What the engine builds for one worker process: its own Governor and connector."""
    config = {"base_url": sb.base_url, **settings}
    account = BlingConnector.account_key(config, store.current)
    governor = Governor(
        redis,
        prefix=prefix,
        provider="bling",
        account=account,
        limits=limits if limits is not None else RateLimits(),
    )

    def lock(name: str) -> contextlib.AbstractAsyncContextManager[None]:
        return redis_lock(redis, f"{prefix}:lock:{name}", ttl=30, wait=30)

    ctx = ConnectorContext(
        settings=config,
        credentials=dict(store.current),
        governor=governor,
        save_credentials=store.save,
        reload_credentials=store.reload,
        lock=lock,
    )
    return BlingConnector(ctx)


def fast(connector: BlingConnector) -> BlingConnector:
    """Fewer attempts, same waits (Bling's Retry-After: 1 is honoured, not shortened)."""
    connector.http.attempts = 3
    return connector


# ---------------------------------------------------------------------- contract


class BlingHarness(Harness):
    streams = STREAMS
    incremental_streams = ("products", "customers", "sales_orders")
    paged_stream = "products"

    def __init__(self, sb: RunningSandbox, redis: aioredis.Redis, prefix: str) -> None:
        self.sb = sb
        self.redis = redis
        self.prefix = prefix
        self.store = CredentialStore(sandbox_credentials(sb))

    async def connector(
        self, *, valid_credentials: bool = True, fast_retries: bool = False
    ) -> Connector:
        store = self.store
        if not valid_credentials:
            store = CredentialStore(
                self.store.current | {"access_token": "wrong", "refresh_token": "wrong"}
            )
        connector = make_connector(self.sb, store, self.redis, self.prefix)
        return fast(connector) if fast_retries else connector

    async def expected_ids(self, stream: str) -> set[str]:
        return truth_ids(self.sb, stream)

    async def change(self, stream: str) -> set[str]:
        counts = {
            "products": {"price_changes": 4, "status_changes": 2, "new_products": 3},
            "stock_levels": {"stock_changes": 5},
            "customers": {"customer_changes": 4},
            "sales_orders": {"new_orders": 3, "order_status_changes": 2},
        }[stream]
        done = admin(self.sb, "POST", "mutate", counts)[stream]
        if stream == "stock_levels":
            return {f"{c['product_id']}:{c['warehouse_id']}" for c in done["changed"]}
        return {str(i) for ids in done.values() for i in ids}

    def cursor_position(self, cursor: Cursor | None) -> Any:
        return bling_cursor.position(cursor)

    @contextlib.asynccontextmanager
    async def server_errors(self) -> AsyncIterator[None]:
        faults(self.sb, error_rate=1.0)
        try:
            yield
        finally:
            faults(self.sb, error_rate=0.0)

    @contextlib.asynccontextmanager
    async def credentials_refused(self) -> AsyncIterator[None]:
        faults(self.sb, reject_refresh=True, expire_tokens=True)
        try:
            yield
        finally:
            faults(self.sb, reject_refresh=False)

    async def refused_request(self, connector: Connector) -> None:
        # A window over a year, as a corrupted stored cursor would ask: Bling says 400.
        until = bling_cursor.fmt(bling_cursor.now())
        cursor = {
            "window_start": "2020-01-01 00:00:00",
            "window_end": until,
            "page": 1,
            "until": until,
        }
        await read_all(connector, "products", cursor, full=False)

    async def requests_seen(self) -> int:
        return int(stats(self.sb)["requests"])


class TestBlingContract(ConnectorContract):
    @pytest.fixture
    async def harness(self, redis: aioredis.Redis, key_prefix: str) -> AsyncIterator[Harness]:
        with sandbox() as sb:
            yield BlingHarness(sb, redis, key_prefix)


# ------------------------------------------------------------------- fixtures


@pytest.fixture
def sb() -> Iterator[RunningSandbox]:
    with sandbox() as served:
        yield served


@pytest.fixture
def store(sb: RunningSandbox) -> CredentialStore:
    return CredentialStore(sandbox_credentials(sb))


async def read_stream(
    connector: Connector, stream: str, cursor: Cursor | None = None, *, full: bool = True
) -> list[dict[str, Any]]:
    return (await read_all(connector, stream, cursor, full=full)).records


# ----------------------------------------------------------------- registration


def test_registered_under_the_bling_entry_point() -> None:
    assert get_connector("bling") is BlingConnector
    assert BlingConnector.limits == RateLimits(per_second=3, per_day=120_000)


def test_config_is_validated_with_a_readable_message() -> None:
    good = {"client_id": "a", "client_secret": "b"}
    BlingConnector.validate_config({}, good)
    with pytest.raises(ConfigError, match="base_url"):
        BlingConnector.validate_config({"base_url": "api.bling.com.br"}, good)
    with pytest.raises(ConfigError, match="client_secret"):
        BlingConnector.validate_config({}, {"client_id": "a"})
    with pytest.raises(ConfigError, match="detail_concurrency"):
        BlingConnector.validate_config({"detail_concurrency": 0}, good)


# ------------------------------------------------------------------ truth


def money(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(str(value))


async def test_mapped_values_equal_the_sandbox_truth(
    sb: RunningSandbox, store: CredentialStore, redis: aioredis.Redis, key_prefix: str
) -> None:
    async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
        mapped: dict[str, dict[str, Any]] = {}
        for stream in STREAMS:
            records = await read_stream(connector, stream)
            canon = [connector.to_canonical(stream, raw) for raw in records]
            mapped[stream] = {c.externalId: c for c in canon}

    products = truth(sb, "products")
    assert len(products) == SIZES["products"] == len(mapped["products"])
    assert any(not t["active"] for t in products), "the sandbox should have inactive products"
    for t in products:
        p = mapped["products"][t["externalId"]]
        assert isinstance(p, Product)
        assert (p.sku, p.name, p.gtin, p.ncm, p.unit, p.brand, p.active) == (
            t["sku"], t["name"], t["gtin"], t["ncm"], t["unit"], t["brand"], t["active"]
        )  # fmt: skip
        assert p.listPrice == money(t["listPrice"]) and p.costPrice == money(t["costPrice"])
        assert p.listPrice is not None and p.listPrice.as_tuple().exponent >= -2

    stock = truth(sb, "stock_levels")
    assert len(stock) == len(mapped["stock_levels"]) == SIZES["products"] * 3
    for t in stock:
        s = mapped["stock_levels"][f"{t['productExternalId']}:{t['warehouseExternalId']}"]
        assert isinstance(s, StockLevel)
        assert s.productExternalId == t["productExternalId"]
        assert s.warehouseName == t["warehouseName"]
        assert s.quantity == Decimal(str(t["quantity"]))
        assert s.available == Decimal(str(t["available"]))
        assert s.reserved == s.quantity - s.available

    customers = truth(sb, "customers")
    assert len(customers) == len(mapped["customers"])
    for t in customers:
        c = mapped["customers"][t["externalId"]]
        assert isinstance(c, Customer)
        assert (c.name, c.document, c.personType, c.email, c.active) == (
            t["name"], t["document"], t["personType"], t["email"], t["active"]
        )  # fmt: skip
        assert c.phone == (t["phone"] or t["mobile"])
        assert (c.street, c.number, c.district, c.city, c.state) == (
            t["street"], t["number"], t["district"], t["city"], t["state"]
        )  # fmt: skip
        assert c.zipCode == t["zipCode"].replace("-", "")
        assert c.country == "BR"

    orders = truth(sb, "sales_orders")
    assert len(orders) == len(mapped["sales_orders"])
    for t in orders:
        o = mapped["sales_orders"][t["externalId"]]
        assert isinstance(o, SalesOrder)
        assert (o.number, o.customerExternalId, o.status) == (
            t["number"], t["customerExternalId"], t["status"]
        )  # fmt: skip
        assert o.orderDate is not None and o.orderDate.isoformat() == t["orderDate"]
        assert o.total == money(t["total"])
        assert o.totalProducts == money(t["totalProducts"])
        assert o.shipping == money(t["freight"])
        assert len(o.lines) == len(t["lines"])
        for line, tl in zip(o.lines, t["lines"], strict=True):
            assert line.productExternalId == tl["productExternalId"]
            assert line.sku == tl["sku"]
            assert line.quantity == Decimal(str(tl["quantity"]))
            assert line.unitPrice == money(tl["unitPrice"])
            assert line.total == money(tl["total"])
        assert sum((line.total for line in o.lines), Decimal(0)) == o.totalProducts


async def test_an_incremental_read_sees_a_product_turned_inactive(
    sb: RunningSandbox, store: CredentialStore, redis: aioredis.Redis, key_prefix: str
) -> None:
    async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
        first = await read_all(connector, "products", None, full=True)
        changed = admin(sb, "POST", "mutate", {"status_changes": 6, "price_changes": 3})
        second = await read_stream(connector, "products", first.last_cursor, full=False)
        mapped = {p.externalId: p for p in (connector.to_canonical("products", r) for r in second)}
    now = {t["externalId"]: t for t in truth(sb, "products")}
    status_changed = {str(i) for i in changed["products"]["status_changed"]}
    assert set(mapped) == status_changed | {str(i) for i in changed["products"]["price_changed"]}
    turned_off = [i for i in status_changed if not now[i]["active"]]
    assert turned_off, "some product should have been deactivated"
    for i in status_changed:
        assert isinstance(mapped[i], Product)
        assert mapped[i].active == now[i]["active"]  # type: ignore[attr-defined]
    for i, p in mapped.items():
        assert p.listPrice == money(now[i]["listPrice"])  # type: ignore[attr-defined]


# ---------------------------------------------------------------- malformed


async def test_malformed_records_fail_in_to_canonical_and_the_rest_map(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    with sandbox(malformed_rate=0.1) as sb:
        store = CredentialStore(sandbox_credentials(sb))
        async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
            for stream in STREAMS:
                records = await read_stream(connector, stream)
                lines = truth(sb, stream)
                good: set[str] = set()
                bad: list[str | None] = []
                reasons: list[str] = []
                for raw in records:
                    try:
                        good.add(connector.to_canonical(stream, raw).externalId)
                    except (ValidationError, ValueError) as exc:
                        reasons.append(str(exc))
                        bad.append(connector.external_id(stream, raw))
                assert all(reasons), "every refusal says why"
                if stream == "stock_levels":
                    listed_products = {
                        t["externalId"]
                        for t in truth(sb, "products")
                        if t["malformedKind"] != "missing_id"
                    }
                    lines = [t for t in lines if t["productExternalId"] in listed_products]
                    want_good = {
                        f"{t['productExternalId']}:{t['warehouseExternalId']}"
                        for t in lines
                        if not t["malformed"]
                    }
                    # A broken entry fails once per warehouse, under each row's own key
                    # (so a deletion sweep keeps the stored rows); without a product id,
                    # once, with no key.
                    broken = {
                        t["productExternalId"]: t["malformedKind"] for t in lines if t["malformed"]
                    }
                    keyed = {
                        f"{t['productExternalId']}:{t['warehouseExternalId']}"
                        for t in lines
                        if t["malformed"] and t["malformedKind"] != "missing_produto"
                    }
                    assert good == want_good
                    assert {b for b in bad if b} == keyed
                    assert len(bad) == len(keyed) + bad.count(None)
                    assert bad.count(None) == list(broken.values()).count("missing_produto")
                    continue
                want_good = {t["externalId"] for t in lines if not t["malformed"]}
                broken = [t for t in lines if t["malformed"]]
                assert broken and want_good
                assert good == want_good, stream
                assert len(bad) == len(broken), stream
                assert {b for b in bad if b} == {
                    t["externalId"] for t in broken if t["malformedKind"] != "missing_id"
                }


def test_malformed_values_are_refused_not_guessed() -> None:
    base = {"id": 1, "nome": "Parafuso", "preco": 12.5, "situacao": "A"}
    connector_map = BlingConnector.to_canonical.__get__(object.__new__(BlingConnector))
    assert connector_map("products", base).listPrice == Decimal("12.5")  # type: ignore[attr-defined]
    for broken in ({"preco": "12,50"}, {"preco": {"valor": 12.5}}, {"preco": True}, {"nome": None}):
        with pytest.raises(ValidationError):
            connector_map("products", base | broken)
    with pytest.raises(ValidationError):
        connector_map("products", {k: v for k, v in base.items() if k != "id"})


# ------------------------------------------------------------------- tokens


async def test_rotated_tokens_are_stored_before_use_and_reused(
    sb: RunningSandbox, store: CredentialStore, redis: aioredis.Redis, key_prefix: str
) -> None:
    first_refresh = store.current["refresh_token"]
    first_access = store.current["access_token"]
    # The stored token expires in 2 minutes: refreshed ahead of expiry, before any call.
    store.current["expires_at"] = (bling_cursor.now() + timedelta(minutes=2)).isoformat()
    async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
        await connector.check()
    assert len(store.saves) == 1
    saved = store.saves[0]
    assert saved["refresh_token"] != first_refresh
    assert saved["access_token"] != first_access
    assert saved["expires_at"] is not None
    # The old refresh token is dead; the stored one is the live one.
    assert refresh_directly(sb, first_refresh).json()["error"]["type"] == "invalid_grant"
    # A later process uses the stored pair, and its next refresh uses the new token.
    faults(sb, expire_tokens=True)
    async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
        await connector.check()
    assert len(store.saves) == 2
    assert store.saves[1]["refresh_token"] not in (first_refresh, saved["refresh_token"])
    assert refresh_directly(sb, saved["refresh_token"]).status_code == 400


async def test_expired_tokens_cost_exactly_one_refresh(
    sb: RunningSandbox, store: CredentialStore, redis: aioredis.Redis, key_prefix: str
) -> None:
    async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
        await connector.check()
        faults(sb, expire_tokens=True)
        admin(sb, "POST", "stats/reset")
        # Eight detail calls in flight all meet the 401: one refresh serves them all.
        records = await read_stream(connector, "products")
    assert len(records) == SIZES["products"]
    assert endpoint_requests(sb, "POST /oauth/token") == 1
    assert len(store.saves) == 1
    assert stats(sb)["unauthorized"] >= 1


async def test_two_processes_meeting_an_expired_token_refresh_once(
    sb: RunningSandbox, store: CredentialStore, redis: aioredis.Redis, key_prefix: str
) -> None:
    one = make_connector(sb, store, redis, key_prefix)
    two = make_connector(sb, store, redis, key_prefix)
    try:
        faults(sb, expire_tokens=True)
        admin(sb, "POST", "stats/reset")
        await asyncio.gather(read_stream(one, "customers"), read_stream(two, "sales_orders"))
    finally:
        await one.aclose()
        await two.aclose()
    # The second process found the first one's new token in the store, under the lock.
    assert endpoint_requests(sb, "POST /oauth/token") == 1
    assert len(store.saves) == 1


async def test_a_refused_refresh_is_a_config_error_without_retries(
    sb: RunningSandbox, store: CredentialStore, redis: aioredis.Redis, key_prefix: str
) -> None:
    async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
        await connector.check()
        faults(sb, reject_refresh=True, expire_tokens=True)
        admin(sb, "POST", "stats/reset")
        started = time.monotonic()
        with pytest.raises(ConfigError) as info:
            await read_stream(connector, "products")
    message = str(info.value)
    assert "refused the refresh token" in message and "re-authorised" in message
    assert store.current["refresh_token"] not in message
    assert store.current["access_token"] not in message
    assert endpoint_requests(sb, "POST /oauth/token") == 1
    assert time.monotonic() - started < 2
    assert store.saves == []


async def test_wrong_client_secret_says_so(
    sb: RunningSandbox, store: CredentialStore, redis: aioredis.Redis, key_prefix: str
) -> None:
    store.current.update(client_secret="not-the-secret", access_token=None)
    async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
        with pytest.raises(ConfigError, match="client_id/client_secret"):
            await connector.check()


# ------------------------------------------------------------- rate limits


@pytest.mark.slow
async def test_a_429_storm_is_avoided_by_the_shared_governor(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    """Three worker processes read the same account at once with Bling's real limit on:
    the governor spaces them so Bling never answers 429, and uses most of the budget."""
    with sandbox(rate_limit=3, products=16, customers=16, orders=16) as sb:
        store = CredentialStore(sandbox_credentials(sb))
        connectors = [
            make_connector(sb, store, redis, key_prefix, limits=BlingConnector.limits)
            for _ in range(3)
        ]
        await connectors[0].check()  # as each worker does first; the server is warm too
        await asyncio.sleep(1.1)  # let the check leave Bling's one-second window
        admin(sb, "POST", "stats/reset")
        try:
            results = await asyncio.gather(
                read_stream(connectors[0], "products"),
                read_stream(connectors[1], "customers"),
                read_stream(connectors[2], "sales_orders"),
            )
        finally:
            for c in connectors:
                await c.aclose()
        seen = stats(sb)
    assert [len(r) for r in results] == [16, 16, 16]
    assert seen["rate_limited"] == 0
    assert seen["ok"] >= 3 * (16 + 1)  # a list page and 16 details each, plus probes
    # At least 90 % of what 3 req/s allows over the run.
    assert seen["ok"] >= 0.9 * (3 * seen["first_to_last_seconds"] + 1)


@pytest.mark.slow
async def test_a_429_storm_is_survived_when_the_limits_are_unknown(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    """Without published limits the governor learns from 429s: every worker pauses and
    the read still completes."""
    with sandbox(rate_limit=3, products=20) as sb:
        store = CredentialStore(sandbox_credentials(sb))
        connector = make_connector(sb, store, redis, key_prefix, limits=RateLimits())
        admin(sb, "POST", "stats/reset")
        async with closing(connector):
            records = await read_stream(connector, "products")
        seen = stats(sb)
    assert len(records) == 20
    assert seen["rate_limited"] > 0
    assert connector.ctx.governor.stats.penalties == seen["rate_limited"]


async def test_5xx_bursts_are_survived(redis: aioredis.Redis, key_prefix: str) -> None:
    with sandbox(error_rate=0.3, products=150, customers=60, orders=60) as sb:
        store = CredentialStore(sandbox_credentials(sb))
        connector = make_connector(sb, store, redis, key_prefix)
        async with closing(connector):
            got = {
                stream: set(ids_of(connector, stream, await read_stream(connector, stream)))
                for stream in STREAMS
            }
        injected = stats(sb)["injected_errors"]
        faults(sb, error_rate=0.0)
        for stream in STREAMS:
            assert got[stream] == truth_ids(sb, stream), stream
    assert injected > 50


# ------------------------------------------------------------------ cursors


async def test_a_backfill_is_split_into_windows_bling_accepts(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    with sandbox(products=400, history_days=730) as sb:
        store = CredentialStore(sandbox_credentials(sb))
        since = bling_cursor.now() - timedelta(days=600)
        async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
            result = await read_all(
                connector, "products", {"since": bling_cursor.fmt(since)}, full=False
            )
        starts = {c["window_start"] for c in result.cursors if "window_start" in c}
        ids = ids_of(connector, "products", result.records)
        lower = bling_cursor.fmt(since - bling_cursor.OVERLAP)
        want = {t["externalId"] for t in truth(sb, "products") if t["sourceUpdatedAt"] >= lower}
        seen = stats(sb)
    assert len(starts) == 2, "600 days are read in two windows of at most a year"
    assert len(ids) == len(set(ids))
    assert set(ids) == want and 0 < len(want) < 400
    assert all(s == "200" for s in seen["by_endpoint"]["GET /produtos"]["statuses"])


async def test_a_window_read_resumes_from_its_page_cursor(
    sb: RunningSandbox, store: CredentialStore, redis: aioredis.Redis, key_prefix: str
) -> None:
    async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
        first = await read_all(connector, "products", None, full=True)
        done = admin(sb, "POST", "mutate", {"price_changes": 120, "new_products": 60})
        changed = {str(i) for ids in done["products"].values() for i in ids}
        crashed = await read_all(connector, "products", first.last_cursor, full=False, stop_after=1)
        cursor = crashed.last_cursor
        assert cursor is not None and cursor["page"] == 2 and "window_start" in cursor
        rest = await read_all(connector, "products", cursor, full=False)
    before = ids_of(connector, "products", crashed.records)
    after = ids_of(connector, "products", rest.records)
    assert len(before) == 100
    assert not set(before) & set(after)
    assert set(before) | set(after) == changed
    assert rest.last_cursor == {"since": cursor["until"]}


def test_stored_cursors_of_another_shape_are_refused() -> None:
    with pytest.raises(ContractError, match="not a Bling cursor"):
        bling_cursor.load({"offset": 10})
    with pytest.raises(ContractError, match="YYYY-MM-DD"):
        bling_cursor.load({"since": "2025-13-01T00:00"})
    with pytest.raises(ContractError, match="page"):
        bling_cursor.load({"full": True, "page": 0, "until": "2025-01-01 00:00:00"})


# ------------------------------------------------------------------- errors


async def test_a_bling_error_body_reads_as_one_sentence(
    sb: RunningSandbox, store: CredentialStore, redis: aioredis.Redis, key_prefix: str
) -> None:
    harness = BlingHarness(sb, redis, key_prefix)
    async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
        with pytest.raises(ContractError) as info:
            await harness.refused_request(connector)
    message = str(info.value)
    assert "HTTP 400" in message and "VALIDATION_ERROR" in message
    assert "dataAlteracaoInicial: O intervalo entre as datas" in message


async def test_without_details_a_page_costs_one_request(
    sb: RunningSandbox, store: CredentialStore, redis: aioredis.Redis, key_prefix: str
) -> None:
    async with closing(
        make_connector(sb, store, redis, key_prefix, fetch_details=False)
    ) as connector:
        admin(sb, "POST", "stats/reset")
        records = await read_stream(connector, "products")
        products = [connector.to_canonical("products", r) for r in records]
    assert len(products) == SIZES["products"]
    seen = stats(sb)
    assert set(seen["by_endpoint"]) == {"GET /produtos"}
    # Three pages, plus the one-record probes that find the last page (~2 log2 n).
    assert seen["requests"] <= 3 + 2 * math.ceil(math.log2(SIZES["products"])) + 1
    assert all(p.gtin is None and p.costPrice is not None for p in products)  # type: ignore[attr-defined]


async def test_deletions_during_a_full_read_skip_no_record(
    sb: RunningSandbox, store: CredentialStore, redis: aioredis.Redis, key_prefix: str
) -> None:
    """Bling pages by offset: a deletion shifts the records after it. A full read must
    still see every record that exists, or a deletion sweep would drop live products."""
    async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
        done = await read_all(connector, "products", None, full=True, stop_after=1)
        deleted = admin(sb, "POST", "mutate", {"deleted_products": 40})["products"]["deleted"]
        rest = await read_all(connector, "products", done.last_cursor, full=True)
        seen = set(ids_of(connector, "products", done.records + rest.records))
    assert len(deleted) == 40
    alive = truth_ids(sb, "products")
    assert alive <= seen
    assert seen <= alive | {str(i) for i in deleted}
    # Some deletions hit the pages still to read, shifting the records after them.
    boundary = min(int(i) for i in ids_of(connector, "products", done.records))
    assert any(i < boundary for i in deleted)


async def test_an_authorization_code_is_exchanged_once_and_dropped(
    sb: RunningSandbox, redis: aioredis.Redis, key_prefix: str
) -> None:
    """What an operator stores right after authorising the app in Bling: the client and
    the one-time code. The first call exchanges it; the pair is stored, the code dropped."""
    store = CredentialStore(
        {"client_id": CLIENT_ID, "client_secret": SECRET, "code": sb.config.auth_code}
    )
    async with closing(make_connector(sb, store, redis, key_prefix)) as connector:
        await connector.check()
    assert len(store.saves) == 1
    saved = store.current
    assert "code" not in saved
    assert saved["access_token"] and saved["refresh_token"]
    wrong = CredentialStore({"client_id": CLIENT_ID, "client_secret": SECRET, "code": "not-a-code"})
    async with closing(make_connector(sb, wrong, redis, key_prefix)) as connector:
        with pytest.raises(ConfigError) as info:
            await connector.check()
    assert "refused the authorization code" in str(info.value)
    assert wrong.saves == []
