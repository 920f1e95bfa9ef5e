"""Batch upsert of canonical rows (measured in bench/: see ARCHITECTURE.md).

1. Rows whose content hash equals the stored one are dropped before any write (an
   unchanged re-sync touches no page: no WAL, no bloat).
2. The rest go by binary COPY into a temp staging table, then
   INSERT ... SELECT ... ON CONFLICT DO UPDATE, guarded so that an unchanged hash or an
   older sourceUpdatedAt never overwrites a row.
3. Changed orders get their lines replaced.

Everything runs on the caller's session/transaction, so a page and its cursor commit
together. Keys always come from the job (tenant, connection), never from ERP data.
``PageWriter`` is where a stream's writes run: one transaction per write, on a
connection kept while writes follow each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg.types.json import Jsonb, set_json_dumps
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from erp_sync.canonical import Canonical, SalesOrder, SalesOrderLine
from erp_sync.errors import RetryableError

T = TypeVar("T")

KEY_COLUMNS = ["tenantId", "connectionId", "externalId"]
META_COLUMNS = ["raw", "contentHash", "sourceUpdatedAt", "syncedAt", "deletedAt"]
META_TYPES = ["jsonb", "bytea", "timestamptz", "timestamptz", "timestamptz"]


@dataclass(frozen=True)
class TableSpec:
    table: str
    columns: tuple[tuple[str, str], ...]  # (canonical field = column, postgres type)

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]

    @property
    def all_columns(self) -> list[str]:
        return [*KEY_COLUMNS, *self.names, *META_COLUMNS]

    @property
    def all_types(self) -> list[str]:
        return ["text", "text", "text", *(t for _, t in self.columns), *META_TYPES]


SPECS: dict[str, TableSpec] = {
    "products": TableSpec(
        "Product",
        (
            ("sku", "text"), ("name", "text"), ("gtin", "text"), ("ncm", "text"),
            ("unit", "text"), ("brand", "text"), ("listPrice", "numeric"),
            ("costPrice", "numeric"), ("active", "bool"),
        ),
    ),
    "stock_levels": TableSpec(
        "StockLevel",
        (
            ("productExternalId", "text"), ("warehouseId", "text"), ("warehouseName", "text"),
            ("quantity", "numeric"), ("reserved", "numeric"), ("available", "numeric"),
        ),
    ),
    "customers": TableSpec(
        "Customer",
        (
            ("name", "text"), ("document", "text"), ("personType", "text"), ("email", "text"),
            ("phone", "text"), ("street", "text"), ("number", "text"), ("complement", "text"),
            ("district", "text"), ("city", "text"), ("state", "text"), ("zipCode", "text"),
            ("country", "text"), ("active", "bool"),
        ),
    ),
    "sales_orders": TableSpec(
        "SalesOrder",
        (
            ("number", "text"), ("customerExternalId", "text"), ("customerName", "text"),
            ("status", "text"), ("orderDate", "date"), ("currency", "text"),
            ("totalProducts", "numeric"), ("discount", "numeric"), ("shipping", "numeric"),
            ("total", "numeric"),
        ),
    ),
}  # fmt: skip

LINE_COLUMNS = [
    ("tenantId", "text"), ("connectionId", "text"), ("orderExternalId", "text"),
    ("lineNumber", "int4"), ("productExternalId", "text"), ("sku", "text"),
    ("description", "text"), ("quantity", "numeric"), ("unitPrice", "numeric"),
    ("discount", "numeric"), ("total", "numeric"),
]  # fmt: skip


def canonical_json(raw: dict[str, Any]) -> bytes:
    """The raw payload as JSON with sorted keys: what is hashed, and what is stored."""
    return orjson.dumps(raw, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def _hash(payload: bytes, version: str) -> bytes:
    return hashlib.blake2b(version.encode() + payload, digest_size=16).digest()


def content_hash(raw: dict[str, Any], version: str = "") -> bytes:
    """16-byte blake2b of the raw payload (sorted keys) and the mapping version."""
    return _hash(canonical_json(raw), version)


@dataclass(slots=True)
class Row:
    """One mapped record on its way to the store (never changed once made: a frozen
    dataclass costs 0.5 µs more a record, in a path that runs a million times a sync)."""

    record: Canonical
    raw: dict[str, Any]
    hash: bytes
    # The raw payload already serialised (by ``of``): COPY sends it as is.
    raw_json: bytes | None = None

    @classmethod
    def of(cls, record: Canonical, raw: dict[str, Any], version: str = "") -> Row:
        payload = canonical_json(raw)
        return cls(record, raw, _hash(payload, version), payload)


@dataclass
class WriteCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    written_ids: list[str] = field(default_factory=list)


class Collision(RetryableError):
    """A write without the lookup (``prefilter=False``) met a row already stored (a record
    the ERP listed twice during a first load, or another write meanwhile). The
    transaction is aborted and nothing of it is kept: write the same rows again with
    ``prefilter=True``."""


class PageWriter:
    """Where one stream's writes go, each in its own transaction.

    While writes follow each other (a first load writes a page every few milliseconds)
    they share one pooled connection: checking a connection out, pinging it and giving it
    back for each write cost ~12 % of a first load (measured). The caller gives it back
    with ``release()`` whenever it is about to wait for the ERP, so an idle sync holds no
    connection. Each transaction's commit does not wait for the WAL flush (see the
    engine: a page and its cursor are lost or kept together)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None

    async def transaction(self, body: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """``body(session)`` in one transaction, committed when it returns. A kept
        connection found dead when the transaction begins (PostgreSQL restarted while the
        ERP was read) is replaced and the transaction begins again, as the pool's
        pre-ping would have done; a failure once ``body`` runs is the caller's."""
        while True:
            kept = self._conn is not None
            began = False
            if self._conn is None:
                self._conn = await self._engine.connect()
            try:
                async with (
                    AsyncSession(bind=self._conn, expire_on_commit=False) as session,
                    session.begin(),
                ):
                    driver = await driver_connection(session)
                    async with driver.pipeline():  # BEGIN and this in one round trip
                        await driver.execute(b"SET LOCAL synchronous_commit TO off")
                    began = True
                    return await body(session)
            except (DBAPIError, psycopg.OperationalError):
                dead = await self._dead()
                await self.release()
                if began or not (kept and dead):
                    raise

    async def _dead(self) -> bool:
        conn = self._conn
        if conn is None or conn.invalidated:
            return True
        try:
            driver = (await conn.get_raw_connection()).driver_connection
        except DBAPIError:
            return True
        return driver is None or bool(driver.closed or driver.broken)

    async def release(self) -> None:
        """Give the connection back to the pool (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


async def driver_connection(session: AsyncSession) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under the session's transaction (for COPY)."""
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, psycopg.AsyncConnection)
    if not getattr(driver, "_erp_sync_ready", False):
        set_json_dumps(_dumps, context=driver)
        driver._erp_sync_ready = True  # type: ignore[attr-defined]
    return driver


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _stage(driver: psycopg.AsyncConnection[Any], table: str) -> str:
    stage = _q(f"_stage_{table}")
    await driver.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {_q(table)}) ON COMMIT DELETE ROWS".encode()
    )
    return stage


def _as_is(payload: bytes) -> bytes:
    return payload


def serialized_jsonb(payload: bytes) -> Jsonb:
    """A jsonb value already serialised to JSON: COPY sends the bytes as they are."""
    return Jsonb(payload, dumps=_as_is)


def _jsonb(row: Row) -> Jsonb:
    if row.raw_json is not None:
        return serialized_jsonb(row.raw_json)
    return Jsonb(row.raw)


async def upsert(
    session: AsyncSession,
    stream: str,
    tenant_id: str,
    connection_id: str,
    rows: list[Row],
    *,
    prefilter: bool = True,
) -> WriteCounts:
    spec = SPECS[stream]
    counts = WriteCounts()
    if not rows:
        return counts
    # A hostile page may repeat an id: the last occurrence wins, once.
    by_id: dict[str, Row] = {}
    for row in rows:
        by_id[row.record.externalId] = row
    counts.unchanged += len(rows) - len(by_id)
    driver = await driver_connection(session)
    table = _q(spec.table)

    existing: set[str] = set()
    if prefilter:
        cur = await driver.execute(
            f'SELECT "externalId", "contentHash", "deletedAt" IS NOT NULL FROM {table} '  # noqa: S608 - table names come from SPECS
            'WHERE "tenantId" = %s AND "connectionId" = %s AND "externalId" = ANY(%b)'.encode(),
            (tenant_id, connection_id, list(by_id)),
            binary=True,
        )
        for external_id, stored, deleted in await cur.fetchall():
            existing.add(external_id)
            match = by_id.get(external_id)
            if match is not None and not deleted and stored == match.hash:
                del by_id[external_id]
                counts.unchanged += 1
    if not by_id:
        return counts

    now = datetime.now(UTC)
    # Without the lookup (a first load: the caller knows the table holds nothing of this
    # connection) every row is tried as new, and a collision falls back to the upsert.
    fresh = {k: v for k, v in by_id.items() if k not in existing}
    changed = {k: v for k, v in by_id.items() if k not in fresh}
    if fresh:
        # New rows go straight into the table by COPY (as fast as PostgreSQL loads).
        # Looked up as absent, another write may still insert one meanwhile: a savepoint
        # (2 round trips) lets them fall back to the guarded upsert below. A first load
        # has none: should one already exist, the caller writes the rows again with the
        # lookup.
        savepoint = driver.transaction() if prefilter else contextlib.nullcontext()
        try:
            async with savepoint:
                await _copy_rows(driver, table, spec, tenant_id, connection_id, fresh, now)
        except psycopg.errors.UniqueViolation:
            if not prefilter:
                raise Collision(
                    "rows of this page were already stored (the ERP listed a record twice, "
                    "or another write ran meanwhile); the page is written again"
                ) from None
            changed.update(fresh)
        else:
            counts.inserted += len(fresh)
            counts.written_ids.extend(fresh)
    if changed:
        stage = await _stage(driver, spec.table)
        await _copy_rows(driver, stage, spec, tenant_id, connection_id, changed, now)
        column_list = ", ".join(_q(c) for c in spec.all_columns)
        updates = ", ".join(f"{_q(c)} = EXCLUDED.{_q(c)}" for c in [*spec.names, *META_COLUMNS])
        result = await driver.execute(
            (
                f"INSERT INTO {table} AS t ({column_list}) SELECT {column_list} FROM {stage} "  # noqa: S608
                f'ON CONFLICT ("tenantId", "connectionId", "externalId") DO UPDATE SET {updates} '
                'WHERE (t."contentHash" IS DISTINCT FROM EXCLUDED."contentHash" '
                'OR t."deletedAt" IS NOT NULL) '
                'AND (t."sourceUpdatedAt" IS NULL OR EXCLUDED."sourceUpdatedAt" IS NULL '
                'OR EXCLUDED."sourceUpdatedAt" >= t."sourceUpdatedAt") '
                'RETURNING "externalId", (xmax = 0) AS inserted'
            ).encode()
        )
        returned = await result.fetchall()
        for external_id, inserted in returned:
            counts.written_ids.append(external_id)
            if inserted:
                counts.inserted += 1
            else:
                counts.updated += 1
        # Rows the guard kept (an older timestamp, or the same hash) count as unchanged.
        counts.unchanged += len(changed) - len(returned)
    if stream == "sales_orders" and counts.written_ids:
        written = set(counts.written_ids)
        orders = [by_id[i].record for i in counts.written_ids if i in written and i in by_id]
        await _replace_lines(driver, tenant_id, connection_id, orders)
    return counts


async def _copy_rows(
    driver: psycopg.AsyncConnection[Any],
    target: str,
    spec: TableSpec,
    tenant_id: str,
    connection_id: str,
    rows: dict[str, Row],
    now: datetime,
) -> None:
    # Canonical models hold Decimal for money and quantities (never float): their values
    # go to COPY as they are.
    values = operator.attrgetter(*spec.names)
    column_list = ", ".join(_q(c) for c in spec.all_columns)
    async with (
        driver.cursor() as cur,
        cur.copy(f"COPY {target} ({column_list}) FROM STDIN (FORMAT BINARY)".encode()) as copy,
    ):
        copy.set_types(spec.all_types)
        for external_id, row in rows.items():
            await copy.write_row(
                (
                    tenant_id,
                    connection_id,
                    external_id,
                    *values(row.record),
                    _jsonb(row),
                    row.hash,
                    row.record.sourceUpdatedAt,
                    now,
                    None,
                )
            )


async def _replace_lines(
    driver: psycopg.AsyncConnection[Any],
    tenant_id: str,
    connection_id: str,
    orders: list[Canonical],
) -> None:
    await driver.execute(
        b'DELETE FROM "SalesOrderLine" WHERE "tenantId" = %s AND "connectionId" = %s '
        b'AND "orderExternalId" = ANY(%s)',
        (tenant_id, connection_id, [o.externalId for o in orders]),
    )
    names = [c for c, _ in LINE_COLUMNS]
    async with driver.cursor() as cur:
        column_list = ", ".join(_q(c) for c in names)
        async with cur.copy(
            f'COPY "SalesOrderLine" ({column_list}) FROM STDIN (FORMAT BINARY)'.encode()
        ) as copy:
            copy.set_types([t for _, t in LINE_COLUMNS])
            for order in orders:
                assert isinstance(order, SalesOrder)
                seen: set[int] = set()
                for line in order.lines:
                    if line.lineNumber in seen:
                        continue
                    seen.add(line.lineNumber)
                    await copy.write_row(
                        _line_row(tenant_id, connection_id, order.externalId, line)
                    )


def _line_row(
    tenant_id: str, connection_id: str, order_id: str, line: SalesOrderLine
) -> tuple[Any, ...]:
    return (
        tenant_id, connection_id, order_id, line.lineNumber, line.productExternalId, line.sku,
        line.description, line.quantity, line.unitPrice, line.discount, line.total,
    )  # fmt: skip


async def mark_seen(session: AsyncSession, full_run_id: str, external_ids: list[str]) -> None:
    if not external_ids:
        return
    driver = await driver_connection(session)
    await driver.execute(
        b'INSERT INTO "SyncSeen" ("fullRunId", "externalId") SELECT %s, unnest(%s::text[]) '
        b"ON CONFLICT DO NOTHING",
        (full_run_id, external_ids),
    )


async def sweep_deleted(
    session: AsyncSession, stream: str, tenant_id: str, connection_id: str, full_run_id: str
) -> int:
    """After a complete full read: rows the ERP no longer lists get deletedAt."""
    driver = await driver_connection(session)
    table = _q(SPECS[stream].table)
    cur = await driver.execute(
        (
            f'UPDATE {table} t SET "deletedAt" = now() '  # noqa: S608
            'WHERE t."tenantId" = %s AND t."connectionId" = %s AND t."deletedAt" IS NULL '
            'AND NOT EXISTS (SELECT 1 FROM "SyncSeen" s '
            'WHERE s."fullRunId" = %s AND s."externalId" = t."externalId")'
        ).encode(),
        (tenant_id, connection_id, full_run_id),
    )
    deleted = cur.rowcount
    await driver.execute(b'DELETE FROM "SyncSeen" WHERE "fullRunId" = %s', (full_run_id,))
    return max(0, deleted)


async def analyze(engine: AsyncEngine, stream: str) -> None:
    """Refresh the planner's statistics of a stream's table (see the engine: a growing
    first load needs them for the key lookups to stay index lookups)."""
    async with engine.connect() as conn:
        await conn.execute(text(f"ANALYZE {_q(SPECS[stream].table)}"))
        await conn.commit()
