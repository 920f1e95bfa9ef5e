"""Sync one tenant: connector pages in, canonical rows out.

Per stream: read the cursor, pull pages, map and validate each record (bad ones go to
quarantine with the reason), upsert the page and save the cursor that covers it in one
transaction, report progress. Pages are read and mapped ahead while the previous write
runs; pages already waiting when a write starts share its transaction (group commit,
at most WRITE_BATCH_RECORDS records), so a crash repeats at most the write in flight:
one page while the ERP is the slower side (always, under an ERP's rate limit), a few
when it answers faster than PostgreSQL writes. The upsert makes the repeat harmless.
A full sync also marks rows the ERP no longer lists as deleted, once the whole stream
has been read (resumable: the ids seen so far are kept).
A job works for a bounded time, then saves where it stands and asks to be continued
behind the other tenants' jobs (fairness).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from erp_sync.canonical import Invalid
from erp_sync.connectors.base import STREAMS, Connector, ConnectorContext, Page
from erp_sync.connectors.governor import Governor
from erp_sync.connectors.registry import get_connector
from erp_sync.errors import ConfigError, DataError, NotFound, PermanentError
from erp_sync.kit import metrics
from erp_sync.kit.locks import redis_lock
from erp_sync.kit.logging import get_logger, redact_text
from erp_sync.kit.time import utcnow
from erp_sync.models import (
    Customer,
    ErpConnection,
    Product,
    QuarantinedRecord,
    SalesOrder,
    StockLevel,
    SyncState,
)
from erp_sync.runtime import Runtime
from erp_sync.sync import quarantine, writer
from erp_sync.tenants import service

log = get_logger(__name__)
Progress = Callable[[dict[str, Any]], Awaitable[None]]
STORE_MODELS: dict[str, Any] = {
    "products": Product,
    "stock_levels": StockLevel,
    "customers": Customer,
    "sales_orders": SalesOrder,
}


@dataclass
class StreamStats:
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    deleted: int = 0
    pages: int = 0
    complete: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SyncResult:
    streams: dict[str, StreamStats] = field(default_factory=dict)
    # Work left (time budget used up): the job re-enqueues a continuation.
    incomplete: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"streams": {k: v.as_dict() for k, v in self.streams.items()}}
        if self.incomplete:
            out["continues"] = self.incomplete
        return out


@dataclass(frozen=True)
class Budget:
    """How long one job may work before yielding to other tenants."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def exhausted(self) -> bool:
        return time.monotonic() - self.started > self.seconds


_END = object()
# One write takes the pages already read and mapped, up to this many records: while
# the ERP is the slower side every page commits alone; when it answers faster than
# PostgreSQL writes, the waiting pages share one transaction (group commit) instead of
# paying a transaction each. Each transaction costs ~2 ms more than its rows
# (bench.writer, 1M products: 0.68 x COPY in 1,000-row writes, 0.82 in 2,500, no
# better beyond); the read-ahead holds enough 100-record pages to fill one.
WRITE_BATCH_RECORDS = 2500
READ_AHEAD_PAGES = 25


@dataclass
class MappedPage:
    rows: list[writer.Row]
    bad: list[tuple[str | None, Any, str]]
    cursor: dict[str, Any] | None
    fetched: int


class PageFeed:
    """Reads and maps pages ahead of the writer: the ERP's latency, the mapping and the
    database's writes overlap instead of adding up. Errors arrive in order, after the
    pages read before them."""

    def __init__(
        self,
        pages: AsyncIterator[Page],
        map_page: Callable[[Page], MappedPage],
        depth: int = READ_AHEAD_PAGES,
    ) -> None:
        self._pages = pages
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=depth)
        self._held: Any = None  # the end or an error, met while taking a batch
        self._exhausted = False  # the pages are over: the end is queued
        self._task = asyncio.create_task(self._pump(map_page))

    async def _pump(self, map_page: Callable[[Page], MappedPage]) -> None:
        try:
            async for page in self._pages:
                await self._queue.put(map_page(page))
            self._exhausted = True
            await self._queue.put(_END)
        except Exception as exc:
            await self._queue.put(exc)

    async def batch(self, max_records: int = WRITE_BATCH_RECORDS) -> list[MappedPage] | None:
        """The next page, with those already waiting behind it up to ``max_records``;
        None at the end of the stream."""
        item = self._held if self._held is not None else await self._queue.get()
        self._held = None
        if item is _END:
            self._held = _END
            return None
        if isinstance(item, Exception):
            raise item
        pages = [item]
        size = item.fetched
        while size < max_records and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _END or isinstance(item, Exception):
                self._held = item
                break
            pages.append(item)
            size += item.fetched
        return pages

    def ready(self) -> bool:
        """Whether ``batch()`` would answer at once (a page, the end or an error waits)."""
        return self._held is not None or not self._queue.empty()

    def ended(self) -> bool:
        """Whether the read has ended and every page of it was taken (``batch()`` would
        answer None)."""
        if self._held is not None:
            return self._held is _END
        # The end goes in right after the last page, with nothing behind it.
        return self._exhausted and self._queue.qsize() == 1

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        aclose = getattr(self._pages, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


def map_record(
    connector: Connector, stream: str, raw: Any
) -> tuple[writer.Row | None, tuple[str | None, Any, str] | None]:
    """(row, None) for a good record, (None, quarantine item) for a bad one."""
    if not isinstance(raw, dict):
        return None, (None, raw, f"record is a {type(raw).__name__}, not an object")
    try:
        record = connector.to_canonical(stream, raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "record"
        reason = f"{where}: {err.get('msg', 'invalid')}"
    except Invalid as exc:  # the canonical model's own check: "field: what is wrong"
        reason = str(exc)[:2000]
    except (DataError, ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as exc:
        reason = f"{type(exc).__name__}: {exc}"[:2000]
    else:
        return writer.Row.of(record, raw, connector.mapping_version), None
    # A bad record is quarantined under the id that can still be read from it, if any.
    try:
        external_id = connector.external_id(stream, raw)
    except Exception:
        external_id = None
    return None, (external_id, raw, reason)


def map_page(connector: Connector, stream: str, page: Page) -> MappedPage:
    mapped = MappedPage([], [], page.cursor, len(page.records))
    for raw in page.records:
        row, item = map_record(connector, stream, raw)
        if row is not None:
            mapped.rows.append(row)
        elif item is not None:
            mapped.bad.append(item)
    return mapped


class TenantSync:
    def __init__(
        self,
        rt: Runtime,
        tenant_id: str,
        *,
        progress: Progress,
        budget: Budget,
    ) -> None:
        self.rt = rt
        self.tenant_id = tenant_id
        self.progress = progress
        self.budget = budget
        self.connection_id = ""
        self.provider = ""
        self._analyzed: dict[str, int] = {}
        # Streams whose table held nothing of this connection when the run began: their
        # pages skip the lookup of stored hashes until a repeated page collides.
        self._first_load: dict[str, bool] = {}

    async def _load(self) -> tuple[ErpConnection, dict[str, Any]]:
        async with self.rt.unit_of_work() as session:
            try:
                tenant = await service.get_tenant(session, self.tenant_id)
            except NotFound as exc:
                raise PermanentError(str(exc)) from None
            conn = tenant.connection
            if conn is None:
                raise ConfigError(
                    f"tenant {self.tenant_id} has no ERP connection; "
                    "set one with `erp-sync tenants set-connection`."
                )
            if conn.status != "ACTIVE":
                raise ConfigError(
                    f"the ERP connection of tenant {self.tenant_id} is {conn.status}"
                    f"{': ' + conn.lastError if conn.lastError else ''}; fix it and set it again."
                )
            credentials = service.read_credentials(conn, self.rt.box) if conn.credentials else {}
            return conn, credentials

    async def _save_credentials(self, credentials: dict[str, Any]) -> None:
        async with self.rt.unit_of_work() as session:
            conn = await session.get(ErpConnection, self.connection_id, with_for_update=True)
            if conn is None:
                raise PermanentError(f"the ERP connection of tenant {self.tenant_id} was removed")
            await service.store_credentials(session, conn, credentials, self.rt.box)

    async def _reload_credentials(self) -> dict[str, Any]:
        async with self.rt.unit_of_work() as session:
            conn = await session.get(ErpConnection, self.connection_id)
            if conn is None or not conn.credentials:
                return {}
            return service.read_credentials(conn, self.rt.box)

    async def mark_needs_reauth(self, reason: str) -> None:
        async with self.rt.unit_of_work() as session:
            conn = await session.get(ErpConnection, self.connection_id, with_for_update=True)
            if conn is not None:
                conn.status = "NEEDS_REAUTH"
                conn.lastError = reason[:2000]
        log.warning("connection.needs_reauth", tenant_id=self.tenant_id, reason=reason)

    @contextlib.asynccontextmanager
    async def connector(self) -> AsyncIterator[Connector]:
        conn, credentials = await self._load()
        self.connection_id = conn.id
        self.provider = conn.provider
        cls = get_connector(conn.provider)
        settings = dict(conn.settings or {})
        account = cls.account_key(settings, credentials)
        governor = Governor(
            self.rt.redis,
            prefix=self.rt.settings.queue_prefix,
            provider=conn.provider,
            account=account,
            limits=cls.rate_limits(settings),
        )
        prefix = self.rt.settings.queue_prefix

        def lock(name: str) -> contextlib.AbstractAsyncContextManager[None]:
            return redis_lock(self.rt.redis, f"{prefix}:erp-sync:lock:{conn.provider}:{name}")

        ctx = ConnectorContext(
            settings=settings,
            credentials=credentials,
            governor=governor,
            save_credentials=self._save_credentials,
            reload_credentials=self._reload_credentials,
            lock=lock,
            log=log.bind(tenant_id=self.tenant_id, provider=conn.provider),
        )
        instance = cls(ctx)
        try:
            yield instance
        finally:
            await instance.aclose()

    async def run(self, streams: Sequence[str] | None, full: bool) -> SyncResult:
        result = SyncResult()
        try:
            async with self.connector() as connector:
                wanted = [
                    s for s in STREAMS if s in (streams or STREAMS) and s in connector.streams
                ]
                for stream in wanted:
                    # The first stream always runs (at least one write): a job whose
                    # connector took its whole budget to start still moves the sync on.
                    if result.streams and self.budget.exhausted():
                        result.incomplete.append(stream)
                        continue
                    stats = await self.sync_stream(connector, stream, full)
                    result.streams[stream] = stats
                    if not stats.complete:
                        result.incomplete.append(stream)
        except ConfigError as exc:
            if self.connection_id:
                await self.mark_needs_reauth(redact_text(str(exc)))
            raise
        return result

    async def _state(self, stream: str) -> SyncState:
        async with self.rt.unit_of_work() as session:
            state = await session.get(SyncState, (self.tenant_id, stream))
            if state is None or state.connectionId != self.connection_id:
                # A new connection starts from nothing.
                if state is not None:
                    await session.delete(state)
                    await session.flush()
                state = SyncState(
                    tenantId=self.tenant_id, stream=stream, connectionId=self.connection_id
                )
                session.add(state)
            return state

    async def _has_rows(self, stream: str) -> bool:
        model = STORE_MODELS[stream]
        async with self.rt.unit_of_work() as session:
            stmt = select(
                exists().where(
                    model.tenantId == self.tenant_id, model.connectionId == self.connection_id
                )
            )
            return bool((await session.execute(stmt)).scalar())

    async def _has_quarantine(self, stream: str) -> bool:
        async with self.rt.unit_of_work() as session:
            stmt = select(
                exists().where(
                    QuarantinedRecord.tenantId == self.tenant_id,
                    QuarantinedRecord.connectionId == self.connection_id,
                    QuarantinedRecord.stream == stream,
                )
            )
            return bool((await session.execute(stmt)).scalar())

    async def sync_stream(self, connector: Connector, stream: str, full: bool) -> StreamStats:
        stats = StreamStats()
        state = await self._state(stream)
        # A full sync interrupted earlier resumes where it stopped, with the ids it saw.
        resume_full = state.fullRunId is not None
        full = full or resume_full
        full_run_id = state.fullRunId or (uuid.uuid4().hex if full else None)
        cursor = (state.fullCursor if resume_full else None) if full else state.cursor
        check_release = await self._has_quarantine(stream)
        self._first_load[stream] = not await self._has_rows(stream)
        # A full sync finds deletions by recording the ids it reads, unless it began with
        # no row of this connection in the table: then every row there is its own.
        from_empty = state.fullRunFromEmpty if resume_full else self._first_load[stream]
        last_cursor = cursor
        feed = PageFeed(
            connector.read(stream, cursor, full=full),
            lambda page: map_page(connector, stream, page),
        )
        writes = writer.PageWriter(self.rt.engine)
        stopped = False  # by the time budget, with the read unfinished
        try:
            try:
                while (pages := await feed.batch()) is not None:
                    stats.pages += len(pages)
                    stats.fetched += sum(p.fetched for p in pages)
                    await self._write_pages(
                        stream, pages, full_run_id, from_empty, stats, check_release, writes
                    )
                    if not feed.ready():
                        await writes.release()  # the ERP is the slower side: hold nothing
                    last_cursor = next(
                        (p.cursor for p in reversed(pages) if p.cursor is not None), last_cursor
                    )
                    await self.progress(
                        {
                            "stream": stream,
                            "pages": stats.pages,
                            "fetched": stats.fetched,
                            "written": stats.inserted + stats.updated,
                            "message": f"{stream}: {stats.fetched} records",
                        }
                    )
                    # A read that already ended (its last page just written) is finished
                    # now, not left to a continuation that would have nothing to read.
                    if self.budget.exhausted() and not feed.ended():
                        stopped = True
                        break
            finally:
                try:
                    await writes.release()  # before anything else takes a connection
                finally:
                    await feed.aclose()
        except Exception as exc:
            await self._record(
                stream, stats, error=redact_text(str(exc)) or type(exc).__name__, success=False
            )
            raise
        if stopped:
            await self._record(stream, stats, error=None, success=False)
            return stats
        async with self.rt.unit_of_work() as session:
            final = await session.get(SyncState, (self.tenant_id, stream), with_for_update=True)
            assert final is not None
            if full and full_run_id:
                if not from_empty:
                    stats.deleted = await writer.sweep_deleted(
                        session, stream, self.tenant_id, self.connection_id, full_run_id
                    )
                final.fullRunId = None
                final.fullRunFromEmpty = False
                final.fullCursor = None
                final.lastFullSyncAt = utcnow()
                if last_cursor is not None:
                    final.cursor = last_cursor
        stats.complete = True
        metrics.count_records(self.provider, stream, deleted=stats.deleted)
        await self._record(stream, stats, error=None, success=True)
        return stats

    async def _write_pages(
        self,
        stream: str,
        pages: list[MappedPage],
        full_run_id: str | None,
        from_empty: bool,
        stats: StreamStats,
        check_release: bool,
        writes: writer.PageWriter,
    ) -> None:
        """Pages and the cursor after the last of them, in one transaction."""
        rows = [row for page in pages for row in page.rows]
        bad = [item for page in pages for item in page.bad]
        cursor = next((p.cursor for p in reversed(pages) if p.cursor is not None), None)
        fetched = sum(p.fetched for p in pages)

        async def write(session: AsyncSession) -> writer.WriteCounts:
            counts = await writer.upsert(
                session,
                stream,
                self.tenant_id,
                self.connection_id,
                rows,
                prefilter=not self._first_load.get(stream, False),
            )
            await quarantine.quarantine(session, self.tenant_id, self.connection_id, stream, bad)
            if check_release and rows:
                await quarantine.release(
                    session,
                    self.tenant_id,
                    self.connection_id,
                    stream,
                    [r.record.externalId for r in rows],
                )
            if full_run_id and not from_empty:
                seen = [r.record.externalId for r in rows] + [i[0] for i in bad if i[0]]
                await writer.mark_seen(session, full_run_id, seen)
            values: dict[str, Any] = {}
            if full_run_id:
                values["fullRunId"] = full_run_id
                values["fullRunFromEmpty"] = from_empty
                if cursor is not None:
                    values["fullCursor"] = cursor
            elif cursor is not None:
                values["cursor"] = cursor
            if values:
                moved = await session.execute(
                    update(SyncState)
                    .where(SyncState.tenantId == self.tenant_id, SyncState.stream == stream)
                    .values(values)
                )
                if not moved.rowcount:  # type: ignore[attr-defined]
                    raise PermanentError(
                        f"the sync state of tenant {self.tenant_id} was removed during the "
                        "sync (tenant or connection deleted)"
                    )
            return counts

        # No WAL flush wait per page (PageWriter): a page and its cursor commit together,
        # so if PostgreSQL itself crashed and lost the last commits, both are gone and the
        # next sync reads those pages again. Nothing is lost; each page is ~20x cheaper.
        try:
            counts = await writes.transaction(write)
        except writer.Collision:
            # A first load without lookups met a row already stored: look up from now on.
            self._first_load[stream] = False
            counts = await writes.transaction(write)
        stats.inserted += counts.inserted
        stats.updated += counts.updated
        stats.unchanged += counts.unchanged
        stats.quarantined += len(bad)
        metrics.count_records(
            self.provider, stream, fetched=fetched, inserted=counts.inserted,
            updated=counts.updated, unchanged=counts.unchanged, quarantined=len(bad),
        )  # fmt: skip
        await self._analyze_if_grown(stream, stats.inserted, writes)

    async def _analyze_if_grown(
        self, stream: str, inserted: int, writes: writer.PageWriter
    ) -> None:
        """Refresh the planner's statistics as a first load grows the table: with stale
        ones (a new tenant's rows "don't exist") PostgreSQL filters the page's ids instead
        of looking them up in the key index, and each page costs a scan of the tenant."""
        mark = self._analyzed.get(stream, 0)
        if inserted < max(1000, mark * 4):
            return
        self._analyzed[stream] = inserted
        await writes.release()  # never hold one pooled connection while taking another
        await writer.analyze(self.rt.engine, stream)

    async def _record(
        self, stream: str, stats: StreamStats, *, error: str | None, success: bool
    ) -> None:
        with contextlib.suppress(Exception):  # bookkeeping must not hide the real outcome
            async with self.rt.unit_of_work() as session:
                state = await session.get(SyncState, (self.tenant_id, stream), with_for_update=True)
                if state is None:
                    return
                state.lastStats = stats.as_dict()
                if success:
                    state.lastSuccessAt = utcnow()
                    state.lastError = None
                elif error:
                    state.lastErrorAt = utcnow()
                    state.lastError = error[:2000]


async def sync_tenant(
    rt: Runtime,
    tenant_id: str,
    *,
    streams: Sequence[str] | None,
    mode: str,
    progress: Progress,
    budget_seconds: float | None = None,
) -> dict[str, Any]:
    budget = Budget(
        budget_seconds if budget_seconds is not None else rt.settings.sync_job_budget_seconds
    )
    sync = TenantSync(rt, tenant_id, progress=progress, budget=budget)
    result = await sync.run(streams, full=mode == "full")
    return result.as_dict()


async def _no_progress(_: dict[str, Any]) -> None:
    return None


async def retry_quarantined(
    rt: Runtime, tenant_id: str, *, stream: str | None = None
) -> dict[str, int]:
    """Map quarantined records again with the current connector code (after a fix): the
    ones that pass are written and leave the quarantine, the others keep their new reason."""
    sync = TenantSync(rt, tenant_id, progress=_no_progress, budget=Budget(float("inf")))
    released = still = 0
    async with sync.connector() as connector, rt.unit_of_work() as session:
        stmt = select(QuarantinedRecord).where(
            QuarantinedRecord.tenantId == tenant_id,
            QuarantinedRecord.connectionId == sync.connection_id,
        )
        if stream:
            stmt = stmt.where(QuarantinedRecord.stream == stream)
        items = (await session.execute(stmt)).scalars().all()
        by_stream: dict[str, list[QuarantinedRecord]] = {}
        for item in items:
            by_stream.setdefault(item.stream, []).append(item)
        for name, records in by_stream.items():
            rows: list[writer.Row] = []
            for item in records:
                row, bad = map_record(connector, name, item.raw)
                if row is not None:
                    rows.append(row)
                    await session.delete(item)
                    released += 1
                elif bad is not None:
                    item.reason = bad[2][:2000]
                    still += 1
            await writer.upsert(session, name, tenant_id, sync.connection_id, rows)
    return {"released": released, "stillQuarantined": still}
