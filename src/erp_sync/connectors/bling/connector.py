"""The Bling API v3 connector (docs/connectors/bling.md is the user-facing page).

Streams and what each read costs (Bling allows 3 requests/s and 120,000/day per account):

| stream       | list (+ change window when incremental) | then, per list page of 100        |
|--------------|-----------------------------------------|-----------------------------------|
| products     | ``GET /produtos?criterio=5``            | 100 x ``GET /produtos/{id}``      |
| customers    | ``GET /contatos``                       | 100 x ``GET /contatos/{id}``      |
| sales_orders | ``GET /pedidos/vendas``                 | 100 x ``GET /pedidos/vendas/{id}``|
| stock_levels | ``GET /produtos?criterio=5`` (all ids)  | 1 x ``GET /estoques/saldos``      |

The details carry what lists lack: GTIN, NCM, unit and brand; a contact's tipo, e-mail
and address; an order's lines.

Detail calls run ``detail_concurrency`` at a time and the governor paces them, so a
detailed stream moves at the account's rate: ~2.9 records/s on Bling (about 10,400 an
hour; the daily quota caps it near 120,000 records a day). Stock has no change filter
and stock changes do not move a product's change time, so every stock read is a pass
over all product ids: 2 requests per 100 products, both incremental and full.

Cursors: see ``cursor.py``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from erp_sync.canonical import Canonical
from erp_sync.connectors.base import Connector, ConnectorContext, Cursor, Page, RateLimits
from erp_sync.connectors.bling import cursor as cur
from erp_sync.connectors.bling.auth import BlingCredentials, TokenKeeper
from erp_sync.connectors.bling.mapping import (
    describe_error,
    split_stock_entry,
    stock_external_id,
    to_canonical,
)
from erp_sync.connectors.http import REQUEST_DEADLINE_S, BaseUrl, ErpHttp, ErpResponse
from erp_sync.errors import ConfigError, ContractError, PermanentError

DEFAULT_BASE_URL = "https://api.bling.com.br/Api/v3"
PAGE_SIZE = 100
# Inline retries of one call: with Bling's own Retry-After or 0.5, 1, 2, 4, 8, 10, 10...
# seconds between attempts, a call gives up after about a minute of failures and the
# job's backoff takes over.
HTTP_ATTEMPTS = 10
MAX_RETRY_WAIT_S = 10.0
# Endless paging (a server that answers every page, whatever ``pagina`` says) must end:
# no Bling list holds more than this many records, nor more warehouse pages than these.
MAX_LIST_RECORDS = 10_000_000
MAX_WAREHOUSE_PAGES = 100
# List pages read ahead when the account has no rate limit (a local sandbox).
UNLIMITED_READ_AHEAD = 4


class BlingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: BaseUrl = DEFAULT_BASE_URL
    # What Bling counts its quotas by: set it when several connections share one OAuth
    # app (client_id), e.g. to the Bling company id; the default is the client_id.
    account: str | None = None
    # Off: products without GTIN/NCM/unit/brand, customers without tipo/e-mail/address,
    # orders without lines, at 1 request per 100 records instead of 101.
    fetch_details: bool = True
    detail_concurrency: int = Field(default=8, ge=1, le=32)
    # The governor's pace: Bling's published 3 requests/s unless set (0 = unlimited, for
    # a local sandbox); see Connector.rate_limits.
    rate_limit_per_second: float | None = Field(default=None, ge=0)
    # The longest one call may take, answer included (a slow-loris answer trickling
    # bytes never trips the read timeout).
    request_deadline_s: float = Field(default=REQUEST_DEADLINE_S, gt=0, le=3600)


@dataclass(frozen=True)
class StreamSpec:
    list_path: str
    list_params: dict[str, Any]
    detail_path: str | None
    # Has a dataAlteracao filter: incremental reads ask for changes since the cursor.
    windowed: bool


STREAM_SPECS: dict[str, StreamSpec] = {
    # criterio=5: active AND inactive (the default lists active products only).
    "products": StreamSpec("/produtos", {"criterio": 5}, "/produtos", windowed=True),
    "stock_levels": StreamSpec("/produtos", {"criterio": 5}, None, windowed=False),
    "customers": StreamSpec("/contatos", {"criterio": 1}, "/contatos", windowed=True),
    "sales_orders": StreamSpec("/pedidos/vendas", {}, "/pedidos/vendas", windowed=True),
}


def _leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    """The exception that matters from a failed task group: a permanent one (e.g. a
    refused token) outranks retryable ones raised by sibling calls."""
    leaves: list[Exception] = []

    def walk(g: BaseExceptionGroup[Exception]) -> None:
        for exc in g.exceptions:
            if isinstance(exc, BaseExceptionGroup):
                walk(exc)
            else:
                leaves.append(exc)

    walk(group)
    for kind in (ConfigError, PermanentError):
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0]


def _check_paging(path: str, page: int, items: list[Any], previous: list[Any] | None) -> None:
    """Refuse a list whose paging never ends: page ``page`` repeating the page before it
    (a server ignoring ``pagina``), or more pages than any Bling list has."""
    if page * PAGE_SIZE > MAX_LIST_RECORDS or (path == "/depositos" and page > MAX_WAREHOUSE_PAGES):
        raise ContractError(
            f"Bling answered page {page} of GET {path} with records still: its paging does not end"
        )
    if previous is not None and page > 1 and items == previous:
        raise ContractError(
            f"Bling answered page {page} of GET {path} with the same records as page "
            f"{page - 1}: it ignores the page number"
        )


class BlingConnector(Connector):
    provider: ClassVar[str] = "bling"
    limits: ClassVar[RateLimits] = RateLimits(per_second=3, per_day=120_000)
    settings_model: ClassVar[type[BaseModel] | None] = BlingSettings
    credentials_model: ClassVar[type[BaseModel] | None] = BlingCredentials
    # Part of the engine's content hash: bump when to_canonical changes its output.
    mapping_version: ClassVar[str] = "bling-1"

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        try:
            self.settings = BlingSettings.model_validate(dict(ctx.settings))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"bling settings.{loc}: {err['msg']}") from None
        self.account = self.account_key(ctx.settings, ctx.credentials)
        self.http = ErpHttp(
            self.settings.base_url,
            ctx.governor,
            provider="Bling",
            describe_error=describe_error,
            attempts=HTTP_ATTEMPTS,
            max_retry_wait_s=MAX_RETRY_WAIT_S,
            headers={"Accept": "application/json"},
            deadline_s=self.settings.request_deadline_s,
        )
        self.auth = TokenKeeper(ctx, self.http, self.account)
        self._warehouse_names: dict[int, str] | None = None

    async def aclose(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------------------ HTTP

    async def _get(
        self, path: str, params: dict[str, Any] | None = None, *, ok: tuple[int, ...] = ()
    ) -> ErpResponse:
        """GET with the current token; on a 401, one refresh and one more try."""
        for attempt in (1, 2):
            token = await self.auth.token()
            resp = await self.http.request(
                "GET",
                path,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
                ok=(401, *ok),
            )
            if resp.status != 401:
                return resp
            if attempt == 1:
                await self.auth.refresh(failed=token)
        raise ConfigError(
            f"Bling refused a freshly refreshed access token on GET {path} "
            f"({describe_error(resp)}); the connection must be re-authorised in Bling"
        )

    @staticmethod
    def _data(resp: ErpResponse, what: str) -> Any:
        body = resp.json()
        if not isinstance(body, dict) or "data" not in body:
            raise ContractError(f'Bling answered {what} without the {{"data": ...}} envelope')
        return body["data"]

    async def _list(self, path: str, params: dict[str, Any]) -> list[Any]:
        data = self._data(await self._get(path, params), f"GET {path}")
        if not isinstance(data, list):
            raise ContractError(f"Bling answered GET {path} with data that is not a list")
        return data

    # ---------------------------------------------------------------------- checks

    async def check(self) -> None:
        await self._list("/depositos", {"pagina": 1, "limite": 1})

    # ------------------------------------------------------------------------ read

    def _spec(self, stream: str) -> StreamSpec:
        try:
            return STREAM_SPECS[stream]
        except KeyError:
            raise ConfigError(
                f"Bling has no stream {stream!r}; streams: {', '.join(STREAM_SPECS)}"
            ) from None

    async def read(self, stream: str, cursor: Cursor | None, *, full: bool) -> AsyncIterator[Page]:
        """Pages of records changed since ``cursor``; see cursor.py for its states.

        - an unfinished whole-list read (``{"full": true, ...}``) is always continued;
        - ``full`` from a finished cursor: the read that cursor ended is over, nothing
          more (see ``Connector.read``);
        - ``full``, no cursor, or a stream without a change filter (stock): a read of
          the whole list from page 1;
        - otherwise changes since ``since - OVERLAP`` (or the unfinished window read
          continued), split into windows Bling accepts.
        """
        spec = self._spec(stream)
        state = cur.load(cursor)
        # A new read ends after the last one (even within the same second, or with a
        # clock gone backwards): the cursor never moves back, and the next window
        # starts OVERLAP earlier anyway.
        until = cur.now()
        if isinstance(state, cur.Done):
            until = max(until, state.since + cur.SECOND)
        if isinstance(state, cur.InFull):
            pages = self._read_all(stream, spec, state.page, state.until)
        elif full and isinstance(state, cur.Done):
            return
        elif full or not spec.windowed or not isinstance(state, cur.Done | cur.InWindow):
            pages = self._read_all(stream, spec, None, until)
        elif isinstance(state, cur.InWindow):
            pages = self._read_windows(stream, spec, state)
        else:
            start, end = next(cur.windows(state.since - cur.OVERLAP, until))
            pages = self._read_windows(stream, spec, cur.InWindow(start, end, 1, until))
        async for page in pages:
            yield page

    async def _read_all(
        self, stream: str, spec: StreamSpec, page: int | None, until: datetime
    ) -> AsyncIterator[Page]:
        """The whole list, from its last page down to page 1.

        Bling pages by offset over a list sorted by id. Read upwards, a record deleted
        from a page already read shifts the rest back and one record is skipped (and a
        full sync's deletion sweep would wrongly mark it deleted). Read downwards, a
        deletion only makes a record show up twice, and records created meanwhile are
        appended after the pages still to read; both harmless.
        """
        if page is None:
            page = -(-await self._count(spec) // PAGE_SIZE)  # ceil

        def fetch(number: int) -> asyncio.Task[list[Any]]:
            params = {**spec.list_params, "pagina": number, "limite": PAGE_SIZE}
            return asyncio.create_task(self._list(spec.list_path, params))

        # List pages ahead: Bling answers the next ones while this one's details are
        # fetched and the engine writes it (the order of pages is known in advance).
        # One ahead under a rate limit (a page read ahead and dropped at the end of a
        # job's time budget costs quota); more when there is no limit to respect.
        depth = 1 if self.settings.rate_limit_per_second != 0 else UNLIMITED_READ_AHEAD
        ahead: collections.deque[asyncio.Task[list[Any]]] = collections.deque()
        next_page = page
        try:
            while True:
                while len(ahead) < depth and next_page >= 1:
                    ahead.append(fetch(next_page))
                    next_page -= 1
                if not ahead:
                    break
                items = await ahead.popleft()
                page -= 1
                if not items:
                    continue
                records = await self._expand(stream, spec, items)
                if page < 1:
                    yield Page(records, cur.Done(until).dump())
                    return
                yield Page(records, cur.InFull(page, until).dump())
            yield Page([], cur.Done(until).dump())
        finally:
            # A read stopped early (budget, crash, error) drops the pages fetched ahead;
            # their outcomes are retrieved so no stray "exception never retrieved" is left.
            for task in ahead:
                task.cancel()
            if ahead:
                await asyncio.wait(ahead)
            for task in ahead:
                if not task.cancelled():
                    task.exception()

    async def _count(self, spec: StreamSpec) -> int:
        """How many records the list holds: one-record probes (``limite=1``), doubling
        then halving, ~2 log2(n) cheap calls (30 for 20,000 records)."""

        async def exists(position: int) -> bool:
            params = {**spec.list_params, "pagina": position, "limite": 1}
            return bool(await self._list(spec.list_path, params))

        if not await exists(1):
            return 0
        low, high = 1, 2  # a record at position low; none known at high yet
        while await exists(high):
            if high > MAX_LIST_RECORDS:
                raise ContractError(
                    f"Bling lists more than {MAX_LIST_RECORDS:,} records at GET "
                    f"{spec.list_path}: its paging does not end (a page past the last "
                    "must be empty)"
                )
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            if await exists(middle):
                low = middle
            else:
                high = middle
        return low

    async def _read_windows(
        self, stream: str, spec: StreamSpec, state: cur.InWindow
    ) -> AsyncIterator[Page]:
        previous: list[Any] | None = None
        while True:
            params = {
                **spec.list_params,
                "pagina": state.page,
                "limite": PAGE_SIZE,
                "dataAlteracaoInicial": cur.fmt(state.start),
            }
            if not state.open_ended:
                params["dataAlteracaoFinal"] = cur.fmt(state.end)
            items = await self._list(spec.list_path, params)
            if items:
                _check_paging(spec.list_path, state.page, items, previous)
                previous = items
                records = await self._expand(stream, spec, items)
                state = replace(state, page=state.page + 1)
                yield Page(records, state.dump())
                continue
            if state.open_ended:
                break
            start, end = next(cur.windows(state.end + cur.SECOND, state.until))
            state = cur.InWindow(start, end, 1, state.until)
            previous = None
        yield Page([], cur.Done(state.until).dump())

    async def _expand(self, stream: str, spec: StreamSpec, items: list[Any]) -> list[Any]:
        """What a list page lacks: balances for stock, the detail record otherwise."""
        if stream == "stock_levels":
            return await self._balances(items)
        if spec.detail_path is None or not self.settings.fetch_details:
            return items
        detail_path = spec.detail_path
        gate = asyncio.Semaphore(self.settings.detail_concurrency)

        async def detail(item: Any) -> Any:
            record_id = item.get("id") if isinstance(item, dict) else None
            if isinstance(record_id, bool) or not isinstance(record_id, int):
                return item  # a broken record: to_canonical will say why
            async with gate:
                resp = await self._get(f"{detail_path}/{record_id}", ok=(404,))
            if resp.status == 404:
                return None  # deleted since it was listed; a full read will notice
            data = self._data(resp, f"GET {detail_path}/{{id}}")
            if not isinstance(data, dict):
                raise ContractError(f"Bling answered GET {detail_path}/{{id}} with no object")
            # The detail is the fuller record; the list adds what the detail lacks
            # (e.g. a product's top-level precoCusto).
            return {**item, **data}

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(detail(item)) for item in items]
        except BaseExceptionGroup as exc:
            raise _leaf(exc) from None
        return [r for r in (t.result() for t in tasks) if r is not None]

    async def _warehouses(self) -> dict[int, str]:
        if self._warehouse_names is None:
            names: dict[int, str] = {}
            page = 1
            previous: list[Any] | None = None
            while True:
                rows = await self._list("/depositos", {"pagina": page, "limite": PAGE_SIZE})
                _check_paging("/depositos", page, rows, previous)
                previous = rows
                for row in rows:
                    if isinstance(row, dict) and isinstance(row.get("id"), int):
                        names[row["id"]] = str(row.get("descricao") or "")
                if len(rows) < PAGE_SIZE:
                    break
                page += 1
            self._warehouse_names = names
        return self._warehouse_names

    async def _balances(self, products: list[Any]) -> list[Any]:
        ids = [
            p["id"]
            for p in products
            if isinstance(p, dict)
            and isinstance(p.get("id"), int)
            and not isinstance(p["id"], bool)
        ]
        if not ids:
            return []
        names = await self._warehouses()
        entries = await self._list("/estoques/saldos", {"idsProdutos[]": ids})
        records: list[Any] = []
        for entry in entries:
            records.extend(split_stock_entry(entry, names))
        return records

    # --------------------------------------------------------------------- mapping

    def to_canonical(self, stream: str, raw: dict[str, Any]) -> Canonical:
        return to_canonical(stream, raw)

    def external_id(self, stream: str, raw: dict[str, Any]) -> str | None:
        if stream != "stock_levels":
            return super().external_id(stream, raw)
        product = raw.get("produto") if isinstance(raw, dict) else None
        pid = product.get("id") if isinstance(product, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool):
            return None
        warehouse = raw.get("deposito")
        wid = warehouse.get("id") if isinstance(warehouse, dict) else None
        if isinstance(wid, int) and not isinstance(wid, bool):
            return stock_external_id(pid, wid)
        return None
