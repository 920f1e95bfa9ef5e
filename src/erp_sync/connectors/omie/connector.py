"""The Omie connector (docs/connectors/omie.md is the user-facing page).

| stream       | call (service)                             | incremental          |
|--------------|--------------------------------------------|----------------------|
| products     | ``ListarProdutos`` (``geral/produtos``)    | change window (dAlt) |
| customers    | ``ListarClientes`` (``geral/clientes``)    | change window (dAlt) |
| sales_orders | ``ListarPedidos`` (``produtos/pedido``)    | change window (dAlt) |
| stock_levels | ``ListarPosEstoque`` (``estoque/consulta``)| none: a full pass    |

Stock is read local by local (``ListarLocaisEstoque``, ``estoque/local``).

List records are complete (no detail calls): one call per page of up to 500 records.
Pages after the first are fetched ``page_concurrency`` at a time and delivered in order.
Every call goes through ``client.OmieClient`` (Omie's limits, the redundancy guard, the
block marker); cursors are described in ``cursor.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from erp_sync.canonical import Canonical
from erp_sync.connectors.base import Connector, ConnectorContext, Cursor, Page, RateLimits
from erp_sync.connectors.http import BaseUrl, ErpHttp
from erp_sync.connectors.omie import cursor as cur
from erp_sync.connectors.omie.client import OmieClient
from erp_sync.connectors.omie.mapping import (
    LOCAL_NAME_KEY,
    describe_error,
    external_id,
    to_canonical,
)
from erp_sync.errors import ConfigError, ContractError

DEFAULT_BASE_URL = "https://app.omie.com.br/api/v1"
MAX_PAGE_SIZE = 500


class OmieCredentials(BaseModel):
    model_config = ConfigDict(extra="ignore")

    app_key: str = Field(min_length=1)
    app_secret: str = Field(min_length=1)

    @field_validator("app_key", mode="before")
    @classmethod
    def _key_as_text(cls, value: object) -> object:
        # Omie shows app keys as numbers; accept one typed as a JSON number.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class OmieSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: BaseUrl = DEFAULT_BASE_URL
    page_size: int = Field(default=MAX_PAGE_SIZE, ge=10, le=MAX_PAGE_SIZE)
    # Pages of one read in flight at once (Omie allows 4 calls of a method at a time,
    # shared by every worker on the app key).
    page_concurrency: int = Field(default=3, ge=1, le=4)
    # Omie's published limits; lower them if Omie lowered yours, never raise them.
    method_per_minute: int = Field(default=240, ge=1, le=240)
    method_concurrency: int = Field(default=4, ge=1, le=4)
    ip_per_minute: int = Field(default=960, ge=1, le=960)
    # Omie refuses the same call within 60 s; a shorter value is only for sandboxes
    # configured with a shorter window.
    redundant_window_s: float = Field(default=60.0, ge=1.0, le=600.0)
    # Incremental reads start this much before the last read's start.
    overlap_s: int = Field(default=120, ge=0, le=86_400)
    attempts: int = Field(default=4, ge=1, le=10)
    # Faults in a row on one method before its calls pause (Omie blocks at 10).
    circuit_after: int = Field(default=5, ge=1, le=8)
    # The engine-wide override (see Connector.rate_limits): for a local sandbox, 0 lifts
    # the rate limits (per method and per IP; the concurrency slot stays), N paces each
    # method at N calls/s. Never set it against the real Omie.
    rate_limit_per_second: float | None = Field(default=None, ge=0)


@dataclass(frozen=True)
class ListSpec:
    service: str
    call: str
    key: str  # the list in the answer
    page_param: str
    size_param: str
    total_pages: str
    windowed: bool


STREAM_SPECS: dict[str, ListSpec] = {
    "products": ListSpec(
        "geral/produtos",
        "ListarProdutos",
        "produto_servico_cadastro",
        "pagina",
        "registros_por_pagina",
        "total_de_paginas",
        windowed=True,
    ),
    "customers": ListSpec(
        "geral/clientes",
        "ListarClientes",
        "clientes_cadastro",
        "pagina",
        "registros_por_pagina",
        "total_de_paginas",
        windowed=True,
    ),
    "sales_orders": ListSpec(
        "produtos/pedido",
        "ListarPedidos",
        "pedido_venda_produto",
        "pagina",
        "registros_por_pagina",
        "total_de_paginas",
        windowed=True,
    ),
    "stock_levels": ListSpec(
        "estoque/consulta",
        "ListarPosEstoque",
        "produtos",
        "nPagina",
        "nRegPorPagina",
        "nTotPaginas",
        windowed=False,
    ),
}
LOCALS = ListSpec(
    "estoque/local",
    "ListarLocaisEstoque",
    "locaisEncontrados",
    "nPagina",
    "nRegPorPagina",
    "nTotPaginas",
    windowed=False,
)


@dataclass(frozen=True)
class Local:
    id: int
    name: str


ParamsFor = Callable[[int], dict[str, Any]]
M = TypeVar("M", bound=BaseModel)


class OmieConnector(Connector):
    provider: ClassVar[str] = "omie"
    # Per (app key, method), as Omie counts; the connector builds one governor per
    # method from these, plus one per IP from IP_LIMITS.
    limits: ClassVar[RateLimits] = RateLimits(per_minute=240, concurrency=4)
    IP_LIMITS: ClassVar[RateLimits] = RateLimits(per_minute=960)
    settings_model: ClassVar[type[BaseModel] | None] = OmieSettings
    credentials_model: ClassVar[type[BaseModel] | None] = OmieCredentials
    # Part of the engine's content hash: bump when to_canonical changes its output.
    mapping_version: ClassVar[str] = "omie-1"

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        self.settings = self._validated(OmieSettings, ctx.settings, "settings")
        creds = self._validated(OmieCredentials, ctx.credentials, "credentials")
        self.http = ErpHttp(
            self.settings.base_url,
            ctx.governor,
            provider="Omie",
            describe_error=describe_error,
            headers={"Accept": "application/json"},
        )
        s = self.settings
        method_limits = RateLimits(per_minute=s.method_per_minute, concurrency=s.method_concurrency)
        ip_limits = RateLimits(per_minute=s.ip_per_minute)
        if s.rate_limit_per_second is not None:
            rate = s.rate_limit_per_second
            method_limits = RateLimits(per_second=rate or None, concurrency=s.method_concurrency)
            ip_limits = ip_limits if rate else RateLimits()
        self.client = OmieClient(
            self.http,
            ctx.governor,
            app_key=creds.app_key,
            app_secret=creds.app_secret,
            method_limits=method_limits,
            ip_limits=ip_limits,
            redundant_window_s=s.redundant_window_s,
            attempts=s.attempts,
            circuit_after=s.circuit_after,
            log=ctx.log,
        )

    @staticmethod
    def _validated(model: type[M], data: Any, what: str) -> M:
        try:
            return model.model_validate(dict(data or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"omie {what}.{loc}: {err['msg']}") from None

    @classmethod
    def account_key(cls, settings: Any, credentials: Any) -> str:
        """Omie counts its quotas per app key."""
        return str(credentials.get("app_key") or settings.get("account") or "default")

    async def aclose(self) -> None:
        await self.http.aclose()

    # ---------------------------------------------------------------------- checks

    async def check(self) -> None:
        """One small ListarProdutos call (its size varies, so checks never repeat a call)."""
        size = await self.client.page_size("ListarProdutos", 50)
        await self.client.call(
            "geral/produtos", "ListarProdutos", {"pagina": 1, "registros_por_pagina": size}
        )

    # ------------------------------------------------------------------------ read

    def _spec(self, stream: str) -> ListSpec:
        try:
            return STREAM_SPECS[stream]
        except KeyError:
            raise ConfigError(
                f"Omie has no stream {stream!r}; streams: {', '.join(STREAM_SPECS)}"
            ) from None

    async def read(self, stream: str, cursor: Cursor | None, *, full: bool) -> AsyncIterator[Page]:
        """Pages of records changed since ``cursor`` (see cursor.py for its states).

        - an unfinished whole-list read is always continued;
        - ``full`` from a finished cursor: the read that cursor ended is over, nothing
          more (see ``Connector.read``);
        - ``full``, no cursor, or stock (no change filter): the whole list from page 1;
        - otherwise the changes since ``since - overlap`` (or the unfinished window).
        """
        spec = self._spec(stream)
        state = cur.load(cursor)
        # A new read ends after the last one, even within the same second: the cursor
        # never moves back, and the next window starts `overlap` earlier anyway.
        until = cur.now()
        if isinstance(state, cur.Done):
            until = max(until, state.since + cur.SECOND)
        if isinstance(state, cur.InFull):
            pages = self._read_full(stream, spec, state)
        elif full and isinstance(state, cur.Done):
            return
        elif full or not spec.windowed or not isinstance(state, cur.Done | cur.InWindow):
            size = await self.client.page_size(spec.call, self.settings.page_size)
            pages = self._read_full(stream, spec, cur.InFull(1, size, until))
        elif isinstance(state, cur.InWindow):
            pages = self._read_window(spec, state)
        else:
            size = await self.client.page_size(spec.call, self.settings.page_size)
            start = state.since - timedelta(seconds=self.settings.overlap_s)
            pages = self._read_window(spec, cur.InWindow(start, 1, size, until))
        async for page in pages:
            yield page

    async def _read_window(self, spec: ListSpec, state: cur.InWindow) -> AsyncIterator[Page]:
        window = {
            "filtrar_por_data_de": cur.omie_date(state.start),
            "filtrar_por_hora_de": cur.omie_time(state.start),
            "filtrar_apenas_alteracao": "S",
            "apenas_importado_api": "N",
        }

        def params(page: int) -> dict[str, Any]:
            return {spec.page_param: page, spec.size_param: state.size, **window}

        async for page, records in self._pages(spec, params, state.page):
            yield Page(records, cur.InWindow(state.start, page + 1, state.size, state.until).dump())
        yield Page([], cur.Done(state.until).dump())

    async def _read_full(
        self, stream: str, spec: ListSpec, state: cur.InFull
    ) -> AsyncIterator[Page]:
        if stream != "stock_levels":

            def params(page: int) -> dict[str, Any]:
                return {
                    spec.page_param: page,
                    spec.size_param: state.size,
                    "apenas_importado_api": "N",
                }

            async for page, records in self._pages(spec, params, state.page):
                yield Page(records, cur.InFull(page + 1, state.size, state.until).dump())
            yield Page([], cur.Done(state.until).dump())
            return
        locals_ = await self._locals()
        position = cur.omie_date(cur.now())  # today's position, also when resuming
        first_page = state.page
        if state.local is not None:
            # Resume within the local the cursor names (locals go in id order).
            remaining = [loc for loc in locals_ if loc.id >= state.local]
            if not remaining or remaining[0].id != state.local:
                first_page = 1  # that local is gone: its successors from their start
            locals_ = remaining
        for loc in locals_:

            def stock_params(page: int, loc: Local = loc) -> dict[str, Any]:
                return {
                    spec.page_param: page,
                    spec.size_param: state.size,
                    "dDataPosicao": position,
                    "cExibeTodos": "S",
                    "codigo_local_estoque": loc.id,
                }

            async for page, records in self._pages(spec, stock_params, first_page):
                for record in records:
                    if isinstance(record, dict):
                        # ListarPosEstoque names the local by id only; keep its name too.
                        record.setdefault("codigo_local_estoque", loc.id)
                        record[LOCAL_NAME_KEY] = loc.name
                yield Page(records, cur.InFull(page + 1, state.size, state.until, loc.id).dump())
            first_page = 1
        yield Page([], cur.Done(state.until).dump())

    async def _locals(self) -> list[Local]:
        size = await self.client.page_size(LOCALS.call, 100)

        def params(page: int) -> dict[str, Any]:
            return {LOCALS.page_param: page, LOCALS.size_param: size}

        found: dict[int, Local] = {}
        async for _, rows in self._pages(LOCALS, params, 1):
            for row in rows:
                lid = row.get("codigo_local_estoque") if isinstance(row, dict) else None
                if isinstance(lid, bool) or not isinstance(lid, int) or lid <= 0:
                    raise ContractError(f"Omie listed a stock local without an id: {row!r:.200}")
                if row.get("inativo") == "S":
                    continue
                found[lid] = Local(lid, str(row.get("descricao") or "").strip())
        return [found[k] for k in sorted(found)]

    async def _fetch(
        self, spec: ListSpec, params: ParamsFor, page: int
    ) -> tuple[list[Any], int] | None:
        """(records, total pages) of one page, or None past the end ("no records")."""
        answer = await self.client.call(spec.service, spec.call, params(page))
        if answer is None:
            return None
        records = answer.get(spec.key)
        total = answer.get(spec.total_pages)
        if not isinstance(records, list) or isinstance(total, bool) or not isinstance(total, int):
            raise ContractError(
                f"Omie answered {spec.call} page {page} without the {spec.key!r} list or "
                f"{spec.total_pages!r}"
            )
        return records, total

    async def _pages(
        self, spec: ListSpec, params: ParamsFor, first: int
    ) -> AsyncIterator[tuple[int, list[Any]]]:
        """(page number, records) in page order until the end; up to ``page_concurrency``
        pages in flight once the first answer tells how many there are."""
        got = await self._fetch(spec, params, first)
        if got is None:
            return
        records, total = got
        yield first, records
        ahead: deque[tuple[int, asyncio.Task[tuple[list[Any], int] | None]]] = deque()
        next_page = first + 1
        try:
            while True:
                while len(ahead) < self.settings.page_concurrency and next_page <= total:
                    task = asyncio.ensure_future(self._fetch(spec, params, next_page))
                    ahead.append((next_page, task))
                    next_page += 1
                if not ahead:
                    return
                page, task = ahead.popleft()
                got = await task
                if got is None:
                    return  # the list shrank under us: nothing more
                records, latest_total = got
                total = max(total, latest_total)  # records added meanwhile: read them too
                yield page, records
        finally:
            for _, pending in ahead:
                pending.cancel()
            for _, pending in ahead:
                with contextlib.suppress(BaseException):
                    await pending

    # --------------------------------------------------------------------- mapping

    def to_canonical(self, stream: str, raw: dict[str, Any]) -> Canonical:
        return to_canonical(stream, raw)

    def external_id(self, stream: str, raw: dict[str, Any]) -> str | None:
        return external_id(stream, raw)
