"""The Tryton connector against a real Tryton 8.2 server (the peer started by
``scripts/tryton-peer``, see docs/tryton-peer.md), over real HTTP, with a real Redis for
the governor.

Besides the shared contract: mapped values equal what Tryton holds (prices to the cent,
archived records read as inactive, the company's own party left out); each model a
stream follows (templates, variants' cost price, addresses, e-mails, stock moves, sale
lines) brings its changes into the next incremental read, and the overlap re-reads
only the last minutes; an expired session costs one new login; a refused login is a
ConfigError that never tries again; Tryton's 429 lockout is a RateLimited with a wait;
JSON-RPC errors (HTTP 200) land in the taxonomy.

The contract runs through a loopback TCP proxy in front of the peer, as nginx sits in
front of a production trytond: it counts the requests that reach the server and can
answer 502 itself (what a reverse proxy says while trytond is down).

Tests that edit the peer restore its seeded data afterwards (``scripts/tryton-peer
restore``, ~2 s). Logins that must fail use throwaway login names: failed logins are
counted per login name, and the ``sync`` user must never be locked out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from erp_sync.canonical import Product
from erp_sync.connectors.base import Connector, ConnectorContext, Cursor
from erp_sync.connectors.governor import Governor
from erp_sync.connectors.registry import get_connector
from erp_sync.connectors.tryton import TrytonConnector
from erp_sync.connectors.tryton import cursor as tryton_cursor
from erp_sync.connectors.tryton.connector import STREAM_SPECS
from erp_sync.connectors.tryton.rpc import LOGIN_LOCKOUT_S, decode
from erp_sync.errors import ConfigError, ContractError, RateLimited
from erp_sync.kit.locks import redis_lock
from tests.connectors.contract import ConnectorContract, Harness, closing, ids_of, read_all
from tests.tryton_peer.harness import SCRIPT, TrytonRPC, edit, peer_env

pytestmark = [pytest.mark.slow]

STREAMS = ("products", "stock_levels", "customers", "sales_orders")
ALL = {"active_test": False}
# The contract's overlap. The seed may be minutes old (a fresh CI peer): the default 10
# minutes would make the first incremental read after a full one re-read all of it.
OVERLAP_S = 1.0


# --------------------------------------------------------------------------- the peer


def peer(*args: str, **env: str) -> str:
    """Run ``scripts/tryton-peer`` (blocking; ~2 s for up/restore)."""
    proc = subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, f"tryton-peer {' '.join(args)}: {proc.stderr[-2000:]}"
    return proc.stdout


def restore() -> None:
    """The seeded data back (a snapshot copy and a restart)."""
    peer("restore")


@contextlib.contextmanager
def peer_lock(timeout: float = 900) -> Iterator[None]:
    """The peer is one server shared by every test process on this machine (another
    developer's run, xdist workers); modules that edit, restore or stop it hold this lock
    so that two runs never trip over each other."""
    home = Path(os.environ.get("TRYTON_PEER_HOME") or SCRIPT.parent.parent / ".tryton")
    home.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(home / "tests.lock", "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"another test run has held {home / 'tests.lock'} for {timeout:g} s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def tryton() -> Iterator[dict[str, str]]:
    """The peer's settings, the peer to this module alone; starts it (about 2 minutes the
    very first time)."""
    with peer_lock():
        yield peer_env()


@pytest.fixture
def restored(tryton: dict[str, str]) -> Iterator[dict[str, str]]:
    """For tests that edit the peer: its seeded data comes back afterwards."""
    yield tryton
    restore()


def sync_password(env: dict[str, str]) -> str:
    return Path(env["TRYTON_SYNC_PASSWORD_FILE"]).read_text().strip()


def admin_rpc(env: dict[str, str]) -> TrytonRPC:
    return TrytonRPC.from_env(env)


def connection_values(
    env: dict[str, str], url: str | None = None, **settings: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A connection to the peer as the read-only ``sync`` user (what an operator sets)."""
    values = {"url": url or env["TRYTON_URL"], "database": env["TRYTON_DB"], **settings}
    return values, {"login": env["TRYTON_SYNC_USER"], "password": sync_password(env)}


# ------------------------------------------------------------------------------- truth


class Truth:
    """What Tryton holds, read as admin over plain JSON-RPC (not through our code)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.rpc = admin_rpc(env)

    def search_read(
        self, model: str, domain: list[Any], fields: list[str], **context: Any
    ) -> list[dict[str, Any]]:
        ctx = {**self.rpc.context, **ALL, **context}
        rows: list[dict[str, Any]] = self.rpc.call(
            f"model.{model}.search_read", domain, 0, None, [["id", "ASC"]], fields, ctx
        )
        return rows

    def warehouses(self) -> list[dict[str, Any]]:
        ctx = self.rpc.context
        rows: list[dict[str, Any]] = self.rpc.call(
            "model.stock.location.search_read",
            [["type", "=", "warehouse"]],
            0,
            None,
            [["id", "ASC"]],
            ["code", "name"],
            ctx,
        )
        return rows

    def company_parties(self) -> set[int]:
        return {c["party"] for c in self.search_read("company.company", [], ["party"])}

    def ids(self, stream: str) -> set[str]:
        if stream == "products":
            return {str(r["id"]) for r in self.search_read("product.product", [], [])}
        if stream == "stock_levels":
            goods = self.search_read("product.product", [["type", "!=", "service"]], [])
            warehouses = self.warehouses()
            return {f"{p['id']}:{w['id']}" for p in goods for w in warehouses}
        if stream == "customers":
            companies = self.company_parties()
            parties = self.search_read("party.party", [], [])
            return {str(r["id"]) for r in parties if r["id"] not in companies}
        return {str(r["id"]) for r in self.search_read("sale.sale", [], [])}

    def product_id(self, code: str) -> int:
        (row,) = self.search_read("product.product", [["code", "=", code]], [])
        return int(row["id"])

    def party_id(self, code: str) -> int:
        (row,) = self.search_read("party.party", [["code", "=", code]], [])
        return int(row["id"])


class AdminWrites:
    """Edits as any Tryton client makes them: JSON-RPC writes as admin through the running
    server. 10-50x faster than ``edits.py`` (a proteus process per edit), which the engine
    tests and the wizard-driven edits use."""

    def __init__(self, env: dict[str, str]) -> None:
        self.rpc = admin_rpc(env)
        self.ctx = self.rpc.context

    def call(self, method: str, *args: Any) -> Any:
        return self.rpc.call(method, *args, self.ctx)

    def one(self, model: str, domain: list[Any]) -> int:
        (found,) = self.call(f"model.{model}.search", domain, 0, 2, None)
        return int(found)

    def set_template_price(self, code: str, price: Decimal) -> int:
        template = self.one("product.template", [["code", "=", code]])
        self.call("model.product.template.write", [template], {"list_price": price})
        return self.one("product.product", [["template", "=", template]])

    def create_product(self, code: str, name: str, price: Decimal, kind: str = "goods") -> int:
        unit = self.one("product.uom", [["symbol", "=", "u"]])
        values = {
            "name": name, "code": code, "type": kind, "default_uom": unit,
            "list_price": price, "products": [["create", [{}]]],
        }  # fmt: skip
        (template,) = self.call("model.product.template.create", [values])
        return self.one("product.product", [["template", "=", template]])

    def rename(self, code: str, name: str) -> int:
        template = self.one("product.template", [["code", "=", code]])
        self.call("model.product.template.write", [template], {"name": name})
        return self.one("product.product", [["template", "=", template]])

    def set_street(self, party: str, street: str, state: str) -> int:
        party_id = self.one("party.party", [["code", "=", party]])
        (address, *_) = self.call(
            "model.party.address.search", [["party", "=", party_id]], 0, None, None
        )
        subdivision = self.one("country.subdivision", [["code", "=", state]])
        values = {"street_name": street, "subdivision": subdivision}
        self.call("model.party.address.write", [address], values)
        return party_id

    def receive(self, code: str, quantity: float) -> int:
        """A done move supplier -> warehouse storage."""
        product = self.one("product.product", [["code", "=", code]])
        values = {
            "product": product,
            "unit": self.one("product.uom", [["symbol", "=", "u"]]),
            "quantity": float(quantity),
            "from_location": self.one("stock.location", [["code", "=", "SUP"]]),
            "to_location": self.one("stock.location", [["code", "=", "STO"]]),
            "company": self.ctx["company"],
            "effective_date": datetime.now().date(),
            "unit_price": Decimal("1.00"),
            "currency": self.one("currency.currency", [["code", "=", "BRL"]]),
        }
        moves = self.call("model.stock.move.create", [values])
        self.call("model.stock.move.do", moves)
        return product

    def set_city(self, party: str, city: str) -> int:
        party_id = self.one("party.party", [["code", "=", party]])
        (address, *_) = self.call(
            "model.party.address.search", [["party", "=", party_id]], 0, None, None
        )
        self.call("model.party.address.write", [address], {"city": city})
        return party_id

    def set_email(self, party: str, email: str) -> int:
        party_id = self.one("party.party", [["code", "=", party]])
        mechanism = self.one(
            "party.contact_mechanism", [["party", "=", party_id], ["type", "=", "email"]]
        )
        self.call("model.party.contact_mechanism.write", [mechanism], {"value": email})
        return party_id

    def create_sale(self, party: str, lines: list[tuple[str, float]]) -> int:
        party_id = self.one("party.party", [["code", "=", party]])
        (address, *_) = self.call(
            "model.party.address.search", [["party", "=", party_id]], 0, None, None
        )
        unit = self.one("product.uom", [["symbol", "=", "u"]])
        create = []
        for code, quantity in lines:
            (product,) = self.call(
                "model.product.product.search_read", [["code", "=", code]], 0, 1, None,
                ["list_price_used"],
            )  # fmt: skip
            create.append({"product": product["id"], "quantity": float(quantity), "unit": unit,
                           "unit_price": product["list_price_used"]})  # fmt: skip
        values = {"party": party_id, "invoice_address": address, "shipment_address": address,
                  "lines": [["create", create]]}  # fmt: skip
        sales = self.call("model.sale.sale.create", [values])
        self.call("model.sale.sale.quote", sales)
        self.call("model.sale.sale.confirm", sales)
        return int(sales[0])


# ------------------------------------------------------------------------------- proxy


class PeerProxy:
    """A loopback TCP proxy in front of the peer. trytond answers ``Connection: close``,
    so one connection is one request."""

    def __init__(self, target: str) -> None:
        host, _, port = target.split("//", 1)[1].rstrip("/").partition(":")
        self.target = (host, int(port or 80))
        self.requests = 0
        self.failing = False
        self.url = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeerProxy:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(shutdown()))
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Python 3.11's start_server keeps no reference to this task: without one, the
        # garbage collector may destroy it mid-request.
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.requests += 1
        try:
            if self.failing:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 15\r\nConnection: close\r\n\r\n502 Bad Gateway"
                )
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError):
                    while chunk := await src.read(65536):
                        dst.write(chunk)
                        await dst.drain()
                with contextlib.suppress(Exception):
                    dst.write_eof()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            up_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()


# --------------------------------------------------------------------------- connectors


class NoStore:
    """Tryton credentials never change: nothing is saved back."""

    def __init__(self, credentials: dict[str, Any]) -> None:
        self.credentials = credentials
        self.saves = 0

    async def save(self, credentials: dict[str, Any]) -> None:
        self.saves += 1

    async def reload(self) -> dict[str, Any]:
        return dict(self.credentials)


def make_connector(
    redis: aioredis.Redis,
    prefix: str,
    settings: dict[str, Any],
    credentials: dict[str, Any],
) -> TrytonConnector:
    """What the engine builds for one worker process."""
    cls = TrytonConnector
    governor = Governor(
        redis,
        prefix=prefix,
        provider="tryton",
        account=cls.account_key(settings, credentials),
        limits=cls.rate_limits(settings),
    )

    def lock(name: str) -> contextlib.AbstractAsyncContextManager[None]:
        return redis_lock(redis, f"{prefix}:lock:{name}", ttl=30, wait=30)

    store = NoStore(credentials)
    ctx = ConnectorContext(
        settings=settings,
        credentials=dict(credentials),
        governor=governor,
        save_credentials=store.save,
        reload_credentials=store.reload,
        lock=lock,
    )
    return TrytonConnector(ctx)


def throwaway_login() -> str:
    return "nobody-" + uuid.uuid4().hex[:10]


# ----------------------------------------------------------------------------- contract


class TrytonHarness(Harness):
    streams = STREAMS
    incremental_streams = STREAMS
    paged_stream = "products"

    def __init__(
        self, env: dict[str, str], proxy: PeerProxy, redis: aioredis.Redis, prefix: str
    ) -> None:
        self.env = env
        self.proxy = proxy
        self.redis = redis
        self.prefix = prefix
        self.truth = Truth(env)
        self.writes = AdminWrites(env)
        self.changes = 0

    async def connector(
        self, *, valid_credentials: bool = True, fast_retries: bool = False
    ) -> Connector:
        settings, credentials = connection_values(
            self.env, self.proxy.url, overlap_seconds=OVERLAP_S
        )
        if not valid_credentials:
            credentials = {"login": throwaway_login(), "password": "wrong"}
        connector = make_connector(self.redis, self.prefix, settings, credentials)
        if fast_retries:
            connector.http.attempts = 3
            connector.http.max_retry_wait_s = 0.01
        return connector

    async def expected_ids(self, stream: str) -> set[str]:
        return self.truth.ids(stream)

    async def change(self, stream: str) -> set[str]:
        self.changes += 1
        n = self.changes
        w = self.writes
        if stream == "products":
            # A service: the stock stream leaves services out, so the new product does
            # not also show as a new stock row when the contract moves on to that stream
            # seconds later (tests/sync/test_tryton_sync.py covers new goods with stock).
            new = w.create_product(f"N{n:04d}", f"Novo {n}", Decimal("9.90"), kind="service")
            priced = w.set_template_price(f"P{100 + n:04d}", Decimal(f"{n}.99"))
            return {str(new), str(priced)}
        if stream == "stock_levels":
            moved = w.receive(f"P{300 + n:04d}", 3)
            return {f"{moved}:{wh['id']}" for wh in self.truth.warehouses()}
        if stream == "customers":
            return {
                str(w.set_city(f"C{10 + n:04d}", "Niterói")),
                str(w.set_email(f"C{20 + n:04d}", f"n{n}@x.com.br")),
            }
        return {str(w.create_sale("C0001", [("P0001", 2), ("P0003", 1)]))}

    def cursor_position(self, cursor: Cursor | None) -> Any:
        return tryton_cursor.position(cursor)

    @contextlib.asynccontextmanager
    async def server_errors(self) -> AsyncIterator[None]:
        self.proxy.failing = True
        try:
            yield
        finally:
            self.proxy.failing = False

    @contextlib.asynccontextmanager
    async def credentials_refused(self) -> AsyncIterator[None]:
        """The administrator changes the sync user's password (Tryton ends its sessions)."""
        admin = admin_rpc(self.env)
        (user,) = admin.call(
            "model.res.user.search", [["login", "=", "sync"]], 0, 1, None, admin.context
        )
        admin.call("model.res.user.write", [user], {"password": uuid.uuid4().hex}, admin.context)
        try:
            yield
        finally:
            admin.call(
                "model.res.user.write", [user], {"password": sync_password(self.env)}, admin.context
            )

    async def refused_request(self, connector: Connector) -> None:
        # A domain on a field Tryton does not have: it answers with an "error" member.
        assert isinstance(connector, TrytonConnector)
        await connector.rpc.model("product.product", "search", [["no_such_field", "=", 1]])

    async def requests_seen(self) -> int:
        return self.proxy.requests


class TestTrytonContract(ConnectorContract):
    @pytest.fixture
    async def harness(
        self, tryton: dict[str, str], redis: aioredis.Redis, key_prefix: str
    ) -> AsyncIterator[Harness]:
        with PeerProxy(tryton["TRYTON_URL"]) as proxy:
            harness = TrytonHarness(tryton, proxy, redis, key_prefix)
            try:
                yield harness
            finally:
                if harness.changes:
                    await asyncio.to_thread(restore)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
async def connector(
    tryton: dict[str, str], redis: aioredis.Redis, key_prefix: str
) -> AsyncIterator[TrytonConnector]:
    settings, credentials = connection_values(tryton, overlap_seconds=OVERLAP_S)
    async with closing(make_connector(redis, key_prefix, settings, credentials)) as c:
        assert isinstance(c, TrytonConnector)
        yield c


async def cursor_now(connector: Connector, stream: str) -> Cursor:
    """A finished read's cursor as of now (the server's clock): later edits are changes."""
    assert isinstance(connector, TrytonConnector)
    now = await connector.rpc.server_now()
    assert now is not None
    return tryton_cursor.Done(now, {m: (now, 0) for m in STREAM_SPECS[stream].models}).dump()


async def read_records(
    connector: Connector, stream: str, cursor: Cursor | None = None, *, full: bool = True
) -> list[dict[str, Any]]:
    return (await read_all(connector, stream, cursor, full=full)).records


# ---------------------------------------------------------------------- configuration


def test_registered_under_the_tryton_entry_point() -> None:
    assert get_connector("tryton") is TrytonConnector


def test_config_is_validated_with_a_readable_message() -> None:
    good = {"login": "sync", "password": "x"}
    TrytonConnector.validate_config({"url": "https://erp.example.com", "database": "d"}, good)
    with pytest.raises(ConfigError, match="url"):
        TrytonConnector.validate_config({"url": "erp.example.com", "database": "d"}, good)
    with pytest.raises(ConfigError, match="database"):
        TrytonConnector.validate_config({"url": "https://erp.example.com"}, good)
    with pytest.raises(ConfigError, match="password"):
        TrytonConnector.validate_config(
            {"url": "https://erp.example.com", "database": "d"}, {"login": "sync"}
        )
    with pytest.raises(ConfigError, match="page_size"):
        TrytonConnector.validate_config(
            {"url": "https://erp.example.com", "database": "d", "page_size": 5}, good
        )


def test_decimals_and_datetimes_decode_exactly() -> None:
    wire = json.loads(
        '{"p": {"__class__": "Decimal", "decimal": "12.3400"}, "t": {"__class__": "datetime",'
        ' "year": 2026, "month": 1, "day": 5, "hour": 6, "minute": 7, "second": 8,'
        ' "microsecond": 9}, "d": [{"__class__": "date", "year": 2026, "month": 1, "day": 7}]}'
    )
    value = decode(wire)
    assert value["p"] == Decimal("12.3400") and str(value["p"]) == "12.3400"
    assert value["t"] == datetime(2026, 1, 5, 6, 7, 8, 9)
    assert value["d"][0].isoformat() == "2026-01-07"


# ------------------------------------------------------------------------------ truth


async def test_product_records_keep_tryton_values_exactly(
    tryton: dict[str, str], connector: TrytonConnector
) -> None:
    """Prices stay Decimal end to end (raw keeps Tryton's own string, scale included),
    archived products are read as inactive, categories come by name. (The engine tests
    compare every stored column of every stream with Tryton.)"""
    truth = Truth(tryton)
    records = await read_records(connector, "products")
    raws = {str(connector.external_id("products", r)): r for r in records}
    mapped = {k: connector.to_canonical("products", r) for k, r in raws.items()}
    products = truth.search_read(
        "product.product",
        [],
        ["code", "name", "list_price_used", "cost_price", "active", "template.active",
         "template.categories", "default_uom.symbol"],
    )  # fmt: skip
    categories = {
        c["id"]: c["rec_name"] for c in truth.search_read("product.category", [], ["rec_name"])
    }
    assert len(products) == len(mapped) == 1000
    archived = 0
    for t in products:
        p = mapped[str(t["id"])]
        assert isinstance(p, Product)
        assert (p.sku, p.name, p.unit) == (t["code"], t["name"], t["default_uom."]["symbol"])
        # Decimal to Decimal: no float ever in between.
        assert p.listPrice == t["list_price_used"] and p.costPrice == t["cost_price"]
        raw = raws[str(t["id"])]
        assert (raw["list_price_used"], raw["cost_price"]) == (
            str(t["list_price_used"]),
            str(t["cost_price"]),
        )
        assert raw["categories"] == [categories[c] for c in t["template."]["categories"]]
        active = bool(t["active"]) and bool(t["template."]["active"])
        assert p.active is active
        archived += not active
    assert archived == 40, "every 25th product of the seed is archived, and still read"
    p0025 = raws[str(truth.product_id("P0025"))]
    # The variant's own flag stays set: the template carries the archive.
    assert bool(p0025["active"]) and not bool(p0025["template."]["active"])


# -------------------------------------------------------------------- change detection


async def test_each_followed_model_brings_its_changes_and_the_overlap_rereads_them(
    restored: dict[str, str], redis: aioredis.Redis, key_prefix: str
) -> None:
    """A change on a record the stream does not read (a variant's cost through Tryton's
    wizard, a template's name, an address, an e-mail, a stock move) shows in the next
    incremental read, and only it; the read after re-reads exactly those (they are
    within its overlap), and no mark is left beyond ``read_at - overlap``."""
    env = restored
    truth = Truth(env)
    settings, credentials = connection_values(env, overlap_seconds=30)
    async with closing(make_connector(redis, key_prefix, settings, credentials)) as connector:
        cursors = {s: await cursor_now(connector, s) for s in STREAMS}
        w = AdminWrites(env)
        cost = asyncio.create_task(
            asyncio.to_thread(edit, "set-cost-price", env=env, code="P0011", price="7.77")
        )
        w.rename("P0012", "Parafuso Renomeado")
        w.set_street("C0005", "Rua Nova", "BR-RJ")
        w.set_email("C0006", "novo@example.com.br")
        w.receive("P0013", 4)
        await cost
        changed: dict[str, dict[str, Any]] = {}
        again: dict[str, set[str]] = {}
        for stream in STREAMS:
            first = await read_all(connector, stream, cursors[stream], full=False)
            changed[stream] = {
                c.externalId: c for c in (connector.to_canonical(stream, r) for r in first.records)
            }
            second = await read_all(connector, stream, first.last_cursor, full=False)
            again[stream] = set(ids_of(connector, stream, second.records))
            done = tryton_cursor.load(second.last_cursor, STREAM_SPECS[stream].models)
            assert isinstance(done, tryton_cursor.Done)
            limit = done.read_at - timedelta(seconds=30)
            assert all(ts <= limit for ts, _ in done.marks.values())
    p11, p12, p13 = (str(truth.product_id(c)) for c in ("P0011", "P0012", "P0013"))
    assert set(changed["products"]) == {p11, p12}
    assert changed["products"][p11].costPrice == Decimal("7.77")
    assert changed["products"][p12].name == "Parafuso Renomeado"
    (warehouse,) = truth.warehouses()
    s11, s13 = f"{p11}:{warehouse['id']}", f"{p13}:{warehouse['id']}"
    # P0013 received 4 more; P0011's variant was written (its cost), so its stock row is
    # read again too (unchanged: the engine skips it). The renamed template's is not.
    assert set(changed["stock_levels"]) == {s11, s13}
    (p13_now,) = truth.search_read(
        "product.product", [["code", "=", "P0013"]], ["quantity"], locations=[warehouse["id"]]
    )
    assert changed["stock_levels"][s13].quantity == Decimal(str(p13_now["quantity"]))
    c5, c6 = str(truth.party_id("C0005")), str(truth.party_id("C0006"))
    assert set(changed["customers"]) == {c5, c6}
    assert (changed["customers"][c5].street, changed["customers"][c5].state) == ("Rua Nova", "RJ")
    assert changed["customers"][c6].email == "novo@example.com.br"
    assert changed["sales_orders"] == {}
    assert again == {s: set(c) for s, c in changed.items()}, "the overlap re-reads them"


def test_a_mark_passes_a_change_once_it_is_older_than_the_overlap() -> None:
    overlap = timedelta(minutes=10)
    change = (datetime(2026, 1, 5, 12, 0, 0, 250_000), 7)
    soon = tryton_cursor.finish(change[0] + timedelta(minutes=1), {"m": change}, overlap)
    assert soon.marks["m"] == (change[0] + timedelta(minutes=1) - overlap, 0)  # re-read
    later = tryton_cursor.finish(change[0] + timedelta(minutes=11), {"m": change}, overlap)
    assert later.marks["m"] == change  # read after it only


async def test_an_incremental_read_resumed_after_a_crash_misses_nothing(
    tryton: dict[str, str], redis: aioredis.Redis, key_prefix: str
) -> None:
    """Marks just before product 971 of the seed: products 971-1000 are 'changed' (their
    own rows), and templates 971-1000 plus every archived one (written after they were
    created). Pages of 10; a crash after page 2, resumed from its cursor, still delivers
    every one of them."""
    truth = Truth(tryton)
    (product,) = truth.search_read(
        "product.product", [["code", "=", "P0970"]], ["last_modified_at"]
    )
    (template,) = truth.search_read(
        "product.template", [["code", "=", "P0970"]], ["last_modified_at"]
    )
    marks = {
        "product.product": (product["last_modified_at"], product["id"]),
        "product.template": (template["last_modified_at"], template["id"]),
    }
    cursor = tryton_cursor.Done(datetime(2000, 1, 1), marks).dump()
    settings, credentials = connection_values(tryton, overlap_seconds=OVERLAP_S, page_size=10)
    async with closing(make_connector(redis, key_prefix, settings, credentials)) as connector:
        whole = await read_all(connector, "products", cursor, full=False)
        done = await read_all(connector, "products", cursor, full=False, stop_after=2)
        rest = await read_all(connector, "products", done.last_cursor, full=False)
    every = ids_of(connector, "products", whole.records)
    archived = {str(truth.product_id(f"P{n:04d}")) for n in range(25, 1001, 25)}
    assert set(every) == {str(i) for i in range(971, 1001)} | archived
    assert len(every) == len(set(every)), "one read delivers each record once"
    before = ids_of(connector, "products", done.records)
    after = ids_of(connector, "products", rest.records)
    assert len(before) == 20
    assert set(before) | set(after) == set(every), "a resumed read skipped records"
    # Repeats are harmless (unchanged hashes) and bounded by what was written before.
    assert len(after) <= len(every)


# ------------------------------------------------------------------------ sessions, auth


def logout_from_outside(env: dict[str, str], authorization: str) -> None:
    """The server ends the session (as after 300 s idle, or an administrator's logout)."""
    body = json.dumps({"id": 1, "method": "common.db.logout", "params": []}).encode()
    request = urllib.request.Request(  # noqa: S310 - the peer's loopback URL
        env["TRYTON_RPC_URL"],
        data=body,
        headers={"Content-Type": "application/json", "Authorization": authorization},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        assert response.status == 200


async def test_an_expired_session_costs_one_new_login(
    tryton: dict[str, str], connector: TrytonConnector
) -> None:
    await connector.check()
    assert connector.rpc.logins == 1
    authorization = connector.rpc._authorization
    assert authorization is not None
    user = base64.b64decode(authorization.split()[1]).decode().split(":")[0]
    assert user == "sync"
    logout_from_outside(tryton, authorization)
    records = await read_records(connector, "sales_orders")
    assert len(records) == 100
    assert connector.rpc.logins == 2


async def test_a_refused_login_is_a_config_error_and_is_not_tried_again(
    tryton: dict[str, str], redis: aioredis.Redis, key_prefix: str
) -> None:
    with PeerProxy(tryton["TRYTON_URL"]) as proxy:
        settings, _ = connection_values(tryton, proxy.url)
        credentials = {"login": throwaway_login(), "password": "wrong"}
        async with closing(make_connector(redis, key_prefix, settings, credentials)) as c:
            with pytest.raises(ConfigError, match="refused the login"):
                await c.check()
            seen = proxy.requests
            for stream in STREAMS:
                with pytest.raises(ConfigError, match="refused the login"):
                    await read_all(c, stream, None, full=True)
            assert proxy.requests == seen, "a refused login must not be tried again"


async def test_a_wrong_database_is_a_config_error(
    tryton: dict[str, str], redis: aioredis.Redis, key_prefix: str
) -> None:
    settings, credentials = connection_values(tryton)
    settings["database"] = "no_such_database"
    async with closing(make_connector(redis, key_prefix, settings, credentials)) as c:
        with pytest.raises(ConfigError, match="no database 'no_such_database'"):
            await c.check()


async def test_too_many_failed_logins_is_rate_limited_with_a_wait(
    tryton: dict[str, str], redis: aioredis.Redis, key_prefix: str
) -> None:
    """Tryton answers 429 once a login name failed more than ``[session] max_attempt``
    times; the peer restarts with max_attempt = 1 for this (about 6 s in all)."""
    await asyncio.to_thread(peer, "up", TRYTON_PEER_MAX_ATTEMPT="1")
    try:
        with PeerProxy(tryton["TRYTON_URL"]) as proxy:
            settings, _ = connection_values(tryton, proxy.url)
            credentials = {"login": throwaway_login(), "password": "wrong"}
            for _ in range(2):
                async with closing(make_connector(redis, key_prefix, settings, credentials)) as c:
                    with pytest.raises(ConfigError):
                        await c.check()
            seen = proxy.requests
            async with closing(make_connector(redis, key_prefix, settings, credentials)) as c:
                with pytest.raises(RateLimited) as info:
                    await c.check()
            assert info.value.retry_after == LOGIN_LOCKOUT_S
            # One login request: retrying inside the lockout would only extend it.
            assert proxy.requests - seen == 1
    finally:
        await asyncio.to_thread(peer_env)  # back to the default max_attempt


async def test_json_rpc_errors_map_to_the_taxonomy(connector: TrytonConnector) -> None:
    with pytest.raises(ConfigError, match="not allowed to"):
        # The sync user is read-only: Tryton's UserError "You are not allowed to ..."
        await connector.rpc.model("product.template", "write", [1], {"name": "x"})
    with pytest.raises(ContractError, match=r"does not know no\.such_model"):
        await connector.rpc.model("no.such_model", "search", [])
    with pytest.raises(ContractError, match="HTTP 403"):
        await connector.rpc.model("product.product", "no_such_method", [])
    with pytest.raises(ContractError):
        await read_all(connector, "products", {"state": "sideways"}, full=False)
