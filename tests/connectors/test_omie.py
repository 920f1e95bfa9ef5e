"""The Omie connector over real HTTP against the Omie sandbox, with a real Redis for the
governors, the redundancy guard and the block marker (and a real PostgreSQL for the
engine tests).

Besides the shared contract: mapped values equal the sandbox's truth; incremental reads
return exactly the changes; four workers on one app key keep Omie's per-method rate and
concurrency limits and the per-IP limit, and never make Omie answer "consumo
redundante"; a block is a clear permanent error after which nothing more is sent; an
outage never escalates into a block; a wrong app_secret marks the connection
NEEDS_REAUTH.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from sqlalchemy import select

from erp_sync.canonical import Customer, Product, SalesOrder, StockLevel
from erp_sync.connectors.base import Connector, ConnectorContext, Cursor, RateLimits
from erp_sync.connectors.governor import Governor
from erp_sync.connectors.omie import OmieBlocked, OmieConnector
from erp_sync.connectors.omie import cursor as omie_cursor
from erp_sync.connectors.omie.mapping import FaultKind, fault_of
from erp_sync.connectors.registry import get_connector
from erp_sync.errors import (
    ConfigError,
    ContractError,
    PermanentError,
    RateLimited,
    RetryableError,
    Timeout,
)
from erp_sync.models import ErpConnection, SyncState
from erp_sync.models import store as models
from erp_sync.runtime import Runtime
from erp_sync.sandbox.omie import (
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    OmieSandboxConfig,
    RunningOmieSandbox,
    running,
)
from erp_sync.sync.engine import sync_tenant
from erp_sync.tenants import service
from erp_sync.tenants.schemas import ConnectionIn, TenantCreate
from tests.connectors.contract import ConnectorContract, Harness, closing, ids_of, read_all

STREAMS = ("products", "stock_levels", "customers", "sales_orders")
SIZES = {"products": 260, "customers": 90, "orders": 120, "warehouses": 2}
# Omie's statuses as the connector names them, for the sandbox's common ones.
STATUS = {
    "Em aberto": "Pedido de Venda",
    "Em andamento": "Separar Estoque",
    "Verificado": "Faturar",
    "Atendido": "Faturado",
    "Cancelado": "Cancelado",
}


# ----------------------------------------------------------------------- sandbox


@contextlib.contextmanager
def sandbox(**overrides: Any) -> Iterator[RunningOmieSandbox]:
    config = {"port": 0, **SIZES, "redundant_window": 5, **overrides}
    with running(OmieSandboxConfig(**config)) as sb:
        yield sb


def admin(sb: RunningOmieSandbox, method: str, path: str, body: Any = None) -> Any:
    r = httpx.request(method, f"{sb.root_url}/__sandbox/{path}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def faults(sb: RunningOmieSandbox, **knobs: Any) -> None:
    admin(sb, "POST", "faults", knobs)


def stats(sb: RunningOmieSandbox) -> dict[str, Any]:
    result: dict[str, Any] = admin(sb, "GET", "stats")
    return result


def counter(sb: RunningOmieSandbox, name: str) -> int:
    return int(stats(sb)["counters"].get(name, 0))


def truth(sb: RunningOmieSandbox, stream: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{sb.root_url}/__sandbox/truth", params={"stream": stream}, timeout=60)
    assert r.status_code == 200
    return [orjson.loads(line) for line in r.content.splitlines() if line]


def truth_ids(sb: RunningOmieSandbox, stream: str) -> set[str]:
    if stream == "stock_levels":
        return {f"{t['productExternalId']}:{t['warehouseExternalId']}" for t in truth(sb, stream)}
    return {t["externalId"] for t in truth(sb, stream)}


def make_connector(
    sb: RunningOmieSandbox,
    redis: aioredis.Redis,
    prefix: str,
    *,
    secret: str = DEMO_APP_SECRET,
    **settings: Any,
) -> OmieConnector:
    """What the engine builds for one worker process: its own Governor and connector."""
    config = {"base_url": sb.base_url, "redundant_window_s": sb.config.redundant_window, **settings}
    credentials = {"app_key": DEMO_APP_KEY, "app_secret": secret}
    governor = Governor(
        redis,
        prefix=prefix,
        provider="omie",
        account=OmieConnector.account_key(config, credentials),
        limits=OmieConnector.limits,
    )

    async def save(_: dict[str, Any]) -> None:
        raise AssertionError("Omie credentials never change")

    async def reload() -> dict[str, Any]:
        return dict(credentials)

    ctx = ConnectorContext(
        settings=config,
        credentials=credentials,
        governor=governor,
        save_credentials=save,
        reload_credentials=reload,
        lock=lambda name: contextlib.nullcontext(),
    )
    return OmieConnector(ctx)


async def read_stream(
    connector: Connector, stream: str, cursor: Cursor | None = None, *, full: bool = True
) -> list[dict[str, Any]]:
    return (await read_all(connector, stream, cursor, full=full)).records


def assert_omie_never_complained(snapshot: dict[str, Any]) -> None:
    seen = snapshot["counters"]
    for name in ("redundant", "blocks", "blocked", "method_limited", "ip_limited",
                 "concurrency_limited", "bad_requests"):  # fmt: skip
        assert seen.get(name, 0) == 0, (name, seen)


# ---------------------------------------------------------------------- contract


class OmieHarness(Harness):
    streams = STREAMS
    incremental_streams = ("products", "customers", "sales_orders")
    paged_stream = "products"

    def __init__(self, sb: RunningOmieSandbox, redis: aioredis.Redis, prefix: str) -> None:
        self.sb, self.redis, self.prefix = sb, redis, prefix

    async def connector(
        self, *, valid_credentials: bool = True, fast_retries: bool = False
    ) -> Connector:
        return make_connector(
            self.sb,
            self.redis,
            self.prefix,
            secret=DEMO_APP_SECRET if valid_credentials else "not-the-secret",
            page_size=50,
            attempts=3 if fast_retries else 4,
        )

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
        return omie_cursor.position(cursor)

    @contextlib.asynccontextmanager
    async def server_errors(self) -> AsyncIterator[None]:
        faults(self.sb, error_rate=1.0)
        try:
            yield
        finally:
            faults(self.sb, error_rate=0.0)

    @contextlib.asynccontextmanager
    async def credentials_refused(self) -> AsyncIterator[None]:
        faults(self.sb, revoke_keys=True)
        try:
            yield
        finally:
            faults(self.sb, revoke_keys=False)

    async def refused_request(self, connector: Connector) -> None:
        # A write Omie has but the sandbox refuses: a client fault, our call is wrong.
        assert isinstance(connector, OmieConnector)
        await connector.client.call("geral/produtos", "ConsultarProduto", {"codigo_produto": 1})

    async def requests_seen(self) -> int:
        return int(stats(self.sb)["requests"])


class TestOmieContract(ConnectorContract):
    @pytest.fixture
    async def harness(self, redis: aioredis.Redis, key_prefix: str) -> AsyncIterator[Harness]:
        with sandbox() as sb:
            yield OmieHarness(sb, redis, key_prefix)
            # Whatever the test did, Omie never had to refuse a redundant call.
            assert counter(sb, "redundant") == 0
            assert counter(sb, "blocks") == 0


# ------------------------------------------------------------------- fixtures


@pytest.fixture
def sb() -> Iterator[RunningOmieSandbox]:
    with sandbox() as served:
        yield served


# ----------------------------------------------------------------- registration


def test_registered_under_the_omie_entry_point_with_omies_limits() -> None:
    assert get_connector("omie") is OmieConnector
    assert OmieConnector.limits == RateLimits(per_minute=240, concurrency=4)
    assert RateLimits(per_minute=960) == OmieConnector.IP_LIMITS
    assert OmieConnector.account_key({}, {"app_key": "123", "app_secret": "x"}) == "123"


def test_config_is_validated_with_a_readable_message() -> None:
    good = {"app_key": 3417551238741, "app_secret": "b"}
    OmieConnector.validate_config({}, good)
    with pytest.raises(ConfigError, match="base_url"):
        OmieConnector.validate_config({"base_url": "app.omie.com.br"}, good)
    with pytest.raises(ConfigError, match="app_secret"):
        OmieConnector.validate_config({}, {"app_key": "a"})
    with pytest.raises(ConfigError, match="method_per_minute"):
        OmieConnector.validate_config({"method_per_minute": 300}, good)  # over Omie's 240
    with pytest.raises(ConfigError, match="page_size"):
        OmieConnector.validate_config({"page_size": 501}, good)


def test_omie_fault_texts_are_read_for_what_they_mean() -> None:
    """The texts as Omie sends them (quoted from integrators' production logs)."""
    cases = [
        (500, "SOAP-ENV:Client-6", "ERROR: Consumo redundante detectado. Aguarde 16 segundos "
         "para tentar novamente (REDUNDANT).", FaultKind.REDUNDANT, 16),
        (425, "MISUSE_API_PROCESS", "ERROR: API bloqueada por consumo indevido. Tente "
         "novamente em 1678 segundos.", FaultKind.BLOCKED, 1678),
        (200, "SOAP-ENV:Client", "API bloqueada por consumo indevido. Tente novamente em 12 "
         "minutos.", FaultKind.BLOCKED, 720),
        (500, "SOAP-ENV:Client-5113", "ERROR: Não existem registros para a página [1]!",
         FaultKind.NO_RECORDS, None),
        (403, "SOAP-ENV:Server", "A chave de acesso não está preenchida ou não é válida.",
         FaultKind.BAD_KEY, None),
        (500, "SOAP-ENV:Client-1880", "ERROR: Já existe uma requisição desse método sendo "
         "executada e você pode tentar novamente em alguns instantes. (1)", FaultKind.BUSY, None),
        (500, "SOAP-ENV:Server", "ERROR: Erro interno", FaultKind.SERVER, None),
        (500, "SOAP-ENV:Client-101", "ERROR: Cliente não cadastrado", FaultKind.REFUSED, None),
    ]  # fmt: skip
    for status, code, text, kind, wait in cases:
        fault = fault_of({"faultstring": text, "faultcode": code}, status)
        assert fault is not None and fault.kind is kind, text
        assert fault.wait_s == wait, text
    assert fault_of({"pagina": 1, "produto_servico_cadastro": []}, 200) is None
    assert fault_of(None, 425) is not None


# ------------------------------------------------------------------ values


def money(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def assert_equal_to_truth(sb: RunningOmieSandbox, stream: str, mapped: dict[str, Any]) -> None:
    """Every mapped record equals the sandbox's truth, field by field."""
    for t in truth(sb, stream):
        if stream == "stock_levels":
            s = mapped[f"{t['productExternalId']}:{t['warehouseExternalId']}"]
            assert isinstance(s, StockLevel)
            assert (s.productExternalId, s.warehouseId, s.warehouseName) == (
                t["productExternalId"], t["warehouseExternalId"], t["warehouseName"]
            )  # fmt: skip
            assert s.quantity == money(t["quantity"]) and s.available == money(t["available"])
            assert s.reserved == s.quantity - s.available
            continue
        if t["externalId"] not in mapped:
            continue
        record = mapped.pop(t["externalId"])
        when = record.sourceUpdatedAt
        assert when is not None and when.strftime("%Y-%m-%d %H:%M:%S") == t["sourceUpdatedAt"]
        if stream == "products":
            assert isinstance(record, Product)
            assert (record.sku, record.name, record.gtin, record.ncm, record.unit) == (
                t["sku"], t["name"], t["gtin"], t["ncm"], t["unit"]
            )  # fmt: skip
            assert (record.brand, record.active) == (t["brand"], t["active"])
            assert record.listPrice == money(t["listPrice"]) and record.costPrice is None
        elif stream == "customers":
            assert isinstance(record, Customer)
            assert (record.name, record.document, record.personType, record.email) == (
                t["name"], t["document"], t["personType"], t["email"]
            )  # fmt: skip
            assert record.phone == t["phone"] and record.active == t["active"]
            assert (record.street, record.number, record.district, record.city, record.state) == (
                t["street"], t["number"], t["district"], t["city"], t["state"]
            )  # fmt: skip
            assert record.zipCode == t["zipCode"].replace("-", "") and record.country == "BR"
        else:
            assert isinstance(record, SalesOrder)
            assert (record.number, record.customerExternalId) == (
                t["number"], t["customerExternalId"]
            )  # fmt: skip
            assert record.status == STATUS[t["status"]]
            assert record.orderDate is not None and record.orderDate.isoformat() == t["orderDate"]
            assert record.total == money(t["total"])
            assert record.totalProducts == money(t["totalProducts"])
            assert record.shipping == money(t["freight"])
            assert len(record.lines) == len(t["lines"])
            for line, tl in zip(record.lines, t["lines"], strict=True):
                assert (line.productExternalId, line.sku) == (tl["productExternalId"], tl["sku"])
                assert line.quantity == money(tl["quantity"])
                assert line.unitPrice == money(tl["unitPrice"])
                assert line.total == money(tl["total"])
            assert sum((line.total for line in record.lines), Decimal(0)) == record.totalProducts
    if stream != "stock_levels":
        assert not mapped, f"{stream}: records the sandbox does not have: {sorted(mapped)[:5]}"


async def test_full_reads_map_to_the_sandbox_truth(
    sb: RunningOmieSandbox, redis: aioredis.Redis, key_prefix: str
) -> None:
    async with closing(make_connector(sb, redis, key_prefix)) as connector:
        for stream in STREAMS:
            records = await read_stream(connector, stream)
            mapped = {c.externalId: c for c in (connector.to_canonical(stream, r) for r in records)}
            assert len(mapped) == len(records) == len(truth(sb, stream))
            assert_equal_to_truth(sb, stream, mapped)
    assert_omie_never_complained(stats(sb))


async def test_incremental_reads_deliver_exactly_the_changes_with_their_new_values(
    sb: RunningOmieSandbox, redis: aioredis.Redis, key_prefix: str
) -> None:
    async with closing(make_connector(sb, redis, key_prefix)) as connector:
        cursors = {s: (await read_all(connector, s, None, full=True)).last_cursor for s in STREAMS}
        done = admin(sb, "POST", "mutate", {
            "price_changes": 6, "status_changes": 4, "new_products": 3, "stock_changes": 8,
            "customer_changes": 5, "new_orders": 4, "order_status_changes": 3,
        })  # fmt: skip
        for stream in STREAMS:
            records = await read_stream(connector, stream, cursors[stream], full=False)
            mapped = {c.externalId: c for c in (connector.to_canonical(stream, r) for r in records)}
            if stream == "stock_levels":  # no change filter: a full pass with the new values
                assert set(mapped) == truth_ids(sb, stream)
            else:
                want = {str(i) for ids in done[stream].values() for i in ids}
                assert set(mapped) == want
            assert_equal_to_truth(sb, stream, mapped)
    assert_omie_never_complained(stats(sb))


async def test_malformed_records_fail_in_to_canonical_and_the_rest_map(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    with sandbox(malformed_rate=0.1) as sb:
        async with closing(make_connector(sb, redis, key_prefix)) as connector:
            for stream in STREAMS:
                good: set[str] = set()
                bad: list[str | None] = []
                reasons: list[str] = []
                for raw in await read_stream(connector, stream):
                    try:
                        good.add(connector.to_canonical(stream, raw).externalId)
                    except (ValidationError, ValueError) as exc:
                        reasons.append(str(exc))
                        bad.append(connector.external_id(stream, raw))
                assert all(reasons), "a quarantine reason must say what is wrong"
                lines = truth(sb, stream)
                if stream == "stock_levels":
                    key = "productExternalId"
                    want_good = {
                        f"{t[key]}:{t['warehouseExternalId']}" for t in lines if not t["malformed"]
                    }
                    broken = [t for t in lines if t["malformed"]]
                    named = {
                        f"{t[key]}:{t['warehouseExternalId']}"
                        for t in broken
                        if t["malformedKind"] != "missing_nCodProd"
                    }
                else:
                    want_good = {t["externalId"] for t in lines if not t["malformed"]}
                    broken = [t for t in lines if t["malformed"]]
                    named = {
                        t["externalId"]
                        for t in broken
                        if not t["malformedKind"].startswith(("missing_", "cabecalho_null"))
                    }
                assert broken and want_good
                assert good == want_good, stream
                assert len(bad) == len(broken), stream
                assert {b for b in bad if b} == named, stream


# --------------------------------------------------------------- limits


async def _read_everything(connector: OmieConnector, stream: str) -> set[str]:
    async with closing(connector):
        records = await read_stream(connector, stream)
    return set(ids_of(connector, stream, records))


@pytest.mark.slow
async def test_four_workers_on_one_app_key_keep_the_per_method_limits(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    """Four worker processes (each its own connector and Governors) read the products of
    one app key at once, each wanting 4 pages in flight. Omie's answers are slow (1 s), so
    without the shared slot 16 calls would be in flight; and the sandbox counts the rate
    in 5-second windows (20 per window = Omie's 240/min, with no burst allowed)."""
    with sandbox(
        products=600,
        latency_ms=1500,
        limit_window=5,
        method_limit=20,
        ip_limit=80,
        redundant_window=60,
    ) as sb:
        workers = [
            make_connector(sb, redis, key_prefix, page_size=100, page_concurrency=4)
            for _ in range(4)
        ]
        started = time.monotonic()
        results = await asyncio.gather(*(_read_everything(w, "products") for w in workers))
        elapsed = time.monotonic() - started
        seen = stats(sb)
        want = truth_ids(sb, "products")
    assert all(got == want for got in results)
    assert_omie_never_complained(seen)
    assert seen["rate_limited"] == 0
    # the slot was the binding limit: exactly 4 in flight at the busiest moment
    assert seen["peaks"]["in_flight ListarProdutos"] == 4
    calls = seen["by_endpoint"]["geral/produtos ListarProdutos"]["requests"]
    assert calls == sum(w.client.sent for w in workers) >= 4 * 6  # pages of <= 100
    assert calls / elapsed <= 240 / 60  # never above Omie's average rate either


@pytest.mark.slow
async def test_four_workers_on_four_methods_keep_the_ip_limit(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    """Each method has its own 240/min, but the IP has one budget: here 40 per 5 s (480/min,
    as if the other half of the IP's 960 were used by other tenants), told to the
    connectors as ip_per_minute=480. Without the IP governor four streams would send ~77."""
    with sandbox(products=600, customers=600, orders=600, limit_window=5, method_limit=20,
                 ip_limit=40, redundant_window=60) as sb:  # fmt: skip
        settings = {"page_size": 40, "ip_per_minute": 480}
        workers = {s: make_connector(sb, redis, key_prefix, **settings) for s in STREAMS}
        results = await asyncio.gather(*(_read_everything(w, s) for s, w in workers.items()))
        seen = stats(sb)
        for stream, got in zip(STREAMS, results, strict=True):
            assert got == truth_ids(sb, stream), stream
    assert_omie_never_complained(seen)
    assert seen["rate_limited"] == 0
    assert seen["requests"] > 80  # more than two windows' worth: the IP limit mattered


async def test_two_workers_asking_the_same_call_are_spaced_by_the_redundancy_window(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    """Two workers resume the same stored cursor at once (e.g. a job re-run while the old
    one still runs): every call of one is identical to the other's. Omie would refuse the
    second within the window; the guard makes it wait instead."""
    with sandbox(redundant_window=3) as sb:
        one, two = (make_connector(sb, redis, key_prefix, page_size=100) for _ in range(2))
        cursor = {"full": True, "page": 1, "size": 100, "until": "2025-01-01 00:00:00"}
        started = time.monotonic()
        async with closing(one), closing(two):
            a, b = await asyncio.gather(
                read_stream(one, "products", cursor), read_stream(two, "products", cursor)
            )
        elapsed = time.monotonic() - started
        assert_omie_never_complained(stats(sb))
    assert ids_of(one, "products", a) == ids_of(two, "products", b)
    assert len(a) == SIZES["products"]
    assert elapsed >= 3  # the second worker waited the window out


async def test_a_retry_after_a_timeout_waits_out_the_window(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    """A call that timed out on our side may have been answered on Omie's: sending it again
    at once would be redundant. Every retry here waits the window first."""
    with sandbox(redundant_window=2, latency_ms=800) as sb:
        connector = make_connector(sb, redis, key_prefix, attempts=3)
        connector.http.client.timeout = httpx.Timeout(0.3)
        started = time.monotonic()
        async with closing(connector):
            with pytest.raises(Timeout):
                await read_stream(connector, "customers")
        elapsed = time.monotonic() - started
        await asyncio.sleep(1)  # the sandbox counts a call when it has answered it
        seen = stats(sb)
    assert seen["by_endpoint"]["geral/clientes ListarClientes"]["requests"] == 3
    assert seen["counters"].get("redundant", 0) == 0
    assert elapsed >= 2 * 2


async def test_5xx_bursts_are_survived(redis: aioredis.Redis, key_prefix: str) -> None:
    with sandbox(error_rate=0.25, redundant_window=1, products=120, customers=40, orders=40) as sb:
        connector = make_connector(sb, redis, key_prefix, page_size=20, attempts=8)
        async with closing(connector):
            got = {s: set(ids_of(connector, s, await read_stream(connector, s))) for s in STREAMS}
        injected = stats(sb)["injected_errors"]
        faults(sb, error_rate=0.0)
        for stream in STREAMS:
            assert got[stream] == truth_ids(sb, stream), stream
        assert_omie_never_complained(stats(sb))
    assert injected >= 5


async def test_an_outage_never_escalates_into_a_block(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    """Omie answers 429 to almost everything (here: its limit is far below the published
    one). Omie blocks an app key after 10 faults in a row; the connector stops after 5,
    pauses the method, and later jobs wait for the pause without calling Omie."""
    with sandbox(method_limit=1, limit_window=60, block_after=10) as sb:
        connector = make_connector(
            sb, redis, key_prefix, page_size=20, attempts=10, page_concurrency=1
        )
        async with closing(connector):
            with pytest.raises(RateLimited) as info:
                await read_stream(connector, "products")
            assert info.value.retry_after is not None and 50 <= info.value.retry_after <= 61
            assert "does not block the app key" in str(info.value)
            sent = stats(sb)["requests"]
            for _ in range(3):  # the job's own retries
                with pytest.raises(RateLimited):
                    await read_stream(connector, "products")
        seen = stats(sb)
    assert sent == 6  # one answered page, then five 429s
    assert seen["requests"] == sent  # no call at all while the method is paused
    assert seen["counters"].get("blocks", 0) == 0


# --------------------------------------------------------------------- block


async def test_a_block_is_a_clear_permanent_error_and_nothing_more_is_sent(
    sb: RunningOmieSandbox, redis: aioredis.Redis, key_prefix: str
) -> None:
    faults(sb, block_for=1700)  # e.g. another program on the same app key misbehaved
    before = stats(sb)["requests"]
    async with closing(make_connector(sb, redis, key_prefix)) as connector:
        with pytest.raises(OmieBlocked) as info:
            await read_stream(connector, "products")
    error = info.value
    assert isinstance(error, PermanentError) and not isinstance(error, ConfigError)
    assert not isinstance(error, RetryableError)
    message = str(error)
    assert "API bloqueada por consumo indevido" in message and "app key" in message
    assert "Brasília time" in message and "28 min" in message
    assert 1690 <= error.blocked_for <= 1700
    assert DEMO_APP_SECRET not in message
    assert stats(sb)["requests"] - before == 1
    # Every other worker and every later job: the same answer, without calling Omie.
    for stream in STREAMS:
        async with closing(make_connector(sb, redis, key_prefix)) as other:
            with pytest.raises(OmieBlocked, match="no call is sent to Omie until"):
                await read_stream(other, stream)
    assert stats(sb)["requests"] - before == 1


# ---------------------------------------------------------------- cursors


async def test_a_stock_read_resumes_in_the_local_it_stopped_in(
    sb: RunningOmieSandbox, redis: aioredis.Redis, key_prefix: str
) -> None:
    async with closing(make_connector(sb, redis, key_prefix, page_size=100)) as connector:
        whole = await read_all(connector, "stock_levels", None, full=True)
        locals_ = [c["local"] for c in whole.cursors if "local" in c]
        assert len(set(locals_)) == SIZES["warehouses"]
        stop = next(k for k, c in enumerate(whole.cursors) if c.get("local") == locals_[-1]) + 1
        done = await read_all(connector, "stock_levels", None, full=True, stop_after=stop)
        cursor = done.last_cursor
        assert cursor is not None and cursor["local"] == locals_[-1] and cursor["page"] == 2
        rest = await read_all(connector, "stock_levels", cursor, full=True)
    before, after = (ids_of(connector, "stock_levels", r.records) for r in (done, rest))
    assert not set(before) & set(after)
    assert sorted(before + after) == sorted(ids_of(connector, "stock_levels", whole.records))
    assert rest.last_cursor == {"since": cursor["until"]}


def test_stored_cursors_of_another_shape_are_refused() -> None:
    with pytest.raises(ContractError, match="not an Omie cursor"):
        omie_cursor.load({"offset": 10})
    with pytest.raises(ContractError, match="YYYY-MM-DD"):
        omie_cursor.load({"since": "2025-13-01T00:00"})
    with pytest.raises(ContractError, match="size"):
        omie_cursor.load({"full": True, "page": 2, "size": 900, "until": "2025-01-01 00:00:00"})


# ------------------------------------------------------------------ engine


async def _omie_tenant(rt: Runtime, sb: RunningOmieSandbox, secret: str = DEMO_APP_SECRET) -> str:
    async with rt.unit_of_work() as session:
        tenant = await service.create_tenant(
            session, TenantCreate(name="Ferragens Omie Ltda"), "*/15 * * * *"
        )
        await service.set_connection(
            session,
            tenant.id,
            ConnectionIn(
                provider="omie",
                settings={"base_url": sb.base_url, "redundant_window_s": 5},
                credentials={"app_key": DEMO_APP_KEY, "app_secret": secret},
            ),
            rt.box,
        )
        return tenant.id


async def _no_progress(_: dict[str, Any]) -> None:
    return None


async def _connection(rt: Runtime, tenant_id: str) -> ErpConnection:
    async with rt.unit_of_work() as session:
        conn = (
            await session.execute(select(ErpConnection).where(ErpConnection.tenantId == tenant_id))
        ).scalar_one()
        return conn


async def test_the_engine_syncs_all_four_streams_and_then_exactly_the_changes(
    rt: Runtime, sb: RunningOmieSandbox
) -> None:
    tenant_id = await _omie_tenant(rt, sb)
    first = await sync_tenant(rt, tenant_id, streams=None, mode="full", progress=_no_progress)
    for stream in STREAMS:
        assert first["streams"][stream]["inserted"] == len(truth(sb, stream)), stream
    async with rt.unit_of_work() as session:
        query = select(models.Product).where(models.Product.tenantId == tenant_id)
        products = {p.externalId: p for p in (await session.execute(query)).scalars()}
    want = {t["externalId"]: t for t in truth(sb, "products")}
    assert set(products) == set(want)
    for external_id, row in products.items():
        assert row.listPrice == money(want[external_id]["listPrice"])
        assert row.active == want[external_id]["active"]
        assert row.raw["codigo_produto"] == int(external_id)
    done = admin(sb, "POST", "mutate", {"price_changes": 5, "new_products": 2,
                                        "customer_changes": 3, "new_orders": 2})  # fmt: skip
    second = await sync_tenant(
        rt, tenant_id, streams=None, mode="incremental", progress=_no_progress
    )
    stats_ = second["streams"]
    assert stats_["products"]["fetched"] == 7
    assert (stats_["products"]["updated"], stats_["products"]["inserted"]) == (5, 2)
    assert stats_["customers"]["updated"] == 3 and stats_["sales_orders"]["inserted"] == 2
    # stock has no change filter: a full pass; the repriced products' lines changed too
    # (price and average cost), the new products' lines are new
    assert stats_["stock_levels"]["fetched"] == len(truth(sb, "stock_levels"))
    assert stats_["stock_levels"]["updated"] == 5 * SIZES["warehouses"]
    assert stats_["stock_levels"]["inserted"] == 2 * SIZES["warehouses"]
    prices = {t["externalId"]: t["listPrice"] for t in truth(sb, "products")}
    async with rt.unit_of_work() as session:
        rows = (
            await session.execute(
                select(models.Product).where(
                    models.Product.tenantId == tenant_id,
                    models.Product.externalId.in_(
                        [str(i) for i in done["products"]["price_changed"]]
                    ),
                )
            )
        ).scalars()
        repriced = {row.externalId: row.listPrice for row in rows}
    assert len(repriced) == 5
    assert all(price == money(prices[pid]) for pid, price in repriced.items())
    assert counter(sb, "redundant") == 0


async def test_a_wrong_app_secret_marks_the_connection_needs_reauth(
    rt: Runtime, sb: RunningOmieSandbox
) -> None:
    tenant_id = await _omie_tenant(rt, sb, secret="0" * 32)
    with pytest.raises(ConfigError) as info:
        await sync_tenant(rt, tenant_id, streams=None, mode="full", progress=_no_progress)
    assert "0" * 32 not in str(info.value)
    assert "A chave de acesso não está preenchida ou não é válida" in str(info.value)
    conn = await _connection(rt, tenant_id)
    assert conn.status == "NEEDS_REAUTH"
    assert conn.lastError and "credentials" in conn.lastError
    assert stats(sb)["requests"] == 1  # refused once; nothing retried


async def test_a_block_fails_the_sync_but_keeps_the_connection(
    rt: Runtime, sb: RunningOmieSandbox
) -> None:
    tenant_id = await _omie_tenant(rt, sb)
    faults(sb, block_for=900)
    for _ in range(2):  # the failed job, then the next scheduled one
        with pytest.raises(OmieBlocked):
            await sync_tenant(rt, tenant_id, streams=None, mode="full", progress=_no_progress)
    assert stats(sb)["requests"] == 1
    conn = await _connection(rt, tenant_id)
    assert conn.status == "ACTIVE"
    async with rt.unit_of_work() as session:
        state = await session.get(SyncState, (tenant_id, "products"))
        assert state is not None and state.lastError
        assert "API bloqueada por consumo indevido" in state.lastError
