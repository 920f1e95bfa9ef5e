"""The Tryton connector (docs/connectors/tryton.md is the user-facing page).

Reads over JSON-RPC (``rpc.py``) as one Tryton user, with that user's context (company,
language) on every call and ``active_test: false`` so archived records are read too.

- ``products``: ``product.product`` records; follows the product and its
  ``product.template`` (name, prices, archiving);
- ``stock_levels``: ``product.product`` (not services) x active warehouse; follows the
  product and ``stock.move`` (any state: done moves change quantities, planned ones
  forecasts);
- ``customers``: ``party.party`` (not the companies' own parties); follows the party,
  ``party.address``, ``party.contact_mechanism`` and ``party.identifier``;
- ``sales_orders``: ``sale.sale`` (every state); follows the sale and ``sale.line``.

A change shows on the record written, not on the one a sync reads: a template's price
leaves ``product.product.last_modified_at`` alone, an address edit leaves the party's,
a stock move touches no product. So a stream follows every model whose records feed
its own, each with a keyset mark, and maps the changed ones to the records to read.

Reads:

- **full** (or no cursor): all ids of the stream (one ``search``, ~20,000 ids in
  0.1 s), then the records by chunks of ``page_size`` (one chunk read ahead while the
  engine writes). Pages by id, so a resumed read repeats nothing and skips nothing.
- **incremental**: for each followed model in turn, its records after the mark,
  ordered by ``(last_modified_at, id)``, ``page_size`` at a time; each page's ids map
  to stream records (deduplicated within the read), which are read and yielded with
  the mark reached. See ``cursor.py`` for the overlap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from erp_sync.canonical import Canonical
from erp_sync.connectors.base import Connector, ConnectorContext, Cursor, Page, RateLimits
from erp_sync.connectors.http import BaseUrl, ErpHttp
from erp_sync.connectors.tryton import cursor as cur
from erp_sync.connectors.tryton.mapping import jsonable, stock_external_id, to_canonical
from erp_sync.connectors.tryton.rpc import TrytonRpc, describe_error
from erp_sync.errors import ConfigError, ContractError

# Inline retries of one call: 0.5, 1, 2, 4 s apart (a server restarting for an upgrade
# is back within that), then the job's backoff takes over.
HTTP_ATTEMPTS = 5
MAX_RETRY_WAIT_S = 10.0
ALL = {"active_test": False}

# Measured on the peer: the template's name and the unit's id (symbols looked up once
# per connector) cost a quarter less than the variant's "name" and "default_uom.symbol".
PRODUCT_FIELDS = [
    "code", "active", "list_price_used", "cost_price", "last_modified_at", "template.name",
    "template.active", "template.last_modified_at", "template.categories", "default_uom",
    "identifiers",
]  # fmt: skip
PARTY_FIELDS = [
    "code", "name", "active", "last_modified_at", "addresses", "identifiers",
    "contact_mechanisms",
]  # fmt: skip
ADDRESS_FIELDS = [
    "party", "active", "sequence", "street", "street_name", "street_unstructured",
    "building_number", "building_name", "floor_number", "unit_number", "room_number",
    "city", "postal_code", "subdivision.code", "country.code",
]  # fmt: skip
PARTY_IDENTIFIER_FIELDS = ["party", "type", "code", "active", "sequence"]
CONTACT_FIELDS = ["party", "type", "value", "active", "sequence"]
SALE_FIELDS = [
    "number", "reference", "state", "party.code", "party.name", "sale_date",
    "currency.code", "untaxed_amount", "tax_amount", "total_amount", "last_modified_at",
    "lines",
]  # fmt: skip
SALE_LINE_FIELDS = [
    "sale", "type", "sequence", "product.code", "description", "quantity", "unit.symbol",
    "unit_price", "amount",
]  # fmt: skip


class TrytonSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The server, without the database: "https://erp.example.com.br/".
    url: BaseUrl
    database: str = Field(min_length=1)
    # Records per call (search_read pages and id chunks).
    page_size: int = Field(default=100, ge=10, le=1000)
    # How far back each incremental read re-reads, from when the previous one started:
    # covers transactions committed after that read with an earlier timestamp.
    overlap_seconds: float = Field(default=600.0, ge=0, le=86_400)
    # The governor's pace for this server (0 or unset: unlimited; Tryton publishes none).
    rate_limit_per_second: float | None = Field(default=None, ge=0)

    @field_validator("url")
    @classmethod
    def _slash(cls, value: str) -> str:
        return value + "/"  # the database's path is appended to it


class TrytonCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    login: str = Field(min_length=1)
    password: SecretStr


@dataclass(frozen=True)
class Follow:
    """A model whose changes feed a stream: ``link`` is its field pointing to the stream's
    record, or (``reverse``) the stream record's field pointing to it."""

    model: str
    link: str
    reverse: bool = False


@dataclass(frozen=True)
class StreamSpec:
    model: str
    follows: tuple[Follow, ...]

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(f.model for f in self.follows)


STREAM_SPECS: dict[str, StreamSpec] = {
    "products": StreamSpec(
        "product.product",
        (Follow("product.product", "id"), Follow("product.template", "template", reverse=True)),
    ),
    "stock_levels": StreamSpec(
        "product.product", (Follow("product.product", "id"), Follow("stock.move", "product"))
    ),
    "customers": StreamSpec(
        "party.party",
        (
            Follow("party.party", "id"),
            Follow("party.address", "party"),
            Follow("party.contact_mechanism", "party"),
            Follow("party.identifier", "party"),
        ),
    ),
    "sales_orders": StreamSpec(
        "sale.sale", (Follow("sale.sale", "id"), Follow("sale.line", "sale"))
    ),
}


def _keyset(mark: cur.Mark) -> list[Any]:
    ts, rid = mark
    return [
        "OR",
        [["last_modified_at", ">", ts]],
        [["last_modified_at", "=", ts], ["id", ">", rid]],
    ]


def _ids(rows: Any, what: str) -> list[int]:
    if not isinstance(rows, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in rows
    ):
        raise ContractError(f"Tryton answered {what} with something other than ids")
    return rows


def _rows(rows: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ContractError(f"Tryton answered {what} with something other than records")
    return rows


class TrytonConnector(Connector):
    provider: ClassVar[str] = "tryton"
    limits: ClassVar[RateLimits] = RateLimits()
    settings_model: ClassVar[type[BaseModel] | None] = TrytonSettings
    credentials_model: ClassVar[type[BaseModel] | None] = TrytonCredentials
    # Part of the engine's content hash: bump when to_canonical changes its output.
    mapping_version: ClassVar[str] = "tryton-1"

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        try:
            self.settings = TrytonSettings.model_validate(dict(ctx.settings))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"tryton settings.{loc}: {err['msg']}") from None
        try:
            credentials = TrytonCredentials.model_validate(dict(ctx.credentials))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"tryton credentials.{loc}: {err['msg']}") from None
        self.overlap = timedelta(seconds=self.settings.overlap_seconds)
        self.page_size = self.settings.page_size
        self.http = ErpHttp(
            self.settings.url,
            ctx.governor,
            provider="Tryton",
            describe_error=describe_error,
            attempts=HTTP_ATTEMPTS,
            max_retry_wait_s=MAX_RETRY_WAIT_S,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        self.rpc = TrytonRpc(
            self.http,
            self.settings.database,
            credentials.login,
            credentials.password.get_secret_value(),
        )
        self._warehouses: list[dict[str, Any]] | None = None
        self._company_parties: list[int] | None = None
        self._category_names: dict[int, str] = {}
        self._uom_symbols: dict[int, str | None] = {}

    @classmethod
    def account_key(cls, settings: Any, credentials: Any) -> str:
        """Connections to one server and database share its rate budget."""
        url = str(settings.get("url") or "").strip().rstrip("/")
        return f"{url}/{settings.get('database') or ''}"

    async def aclose(self) -> None:
        try:
            await self.rpc.logout()
        finally:
            await self.http.aclose()

    # ----------------------------------------------------------------------- check

    async def check(self) -> None:
        await self.rpc.ensure_login()  # logs in and loads the user's context

    # ---------------------------------------------------------------------- helpers

    def _spec(self, stream: str) -> StreamSpec:
        try:
            return STREAM_SPECS[stream]
        except KeyError:
            raise ConfigError(
                f"Tryton has no stream {stream!r}; streams: {', '.join(STREAM_SPECS)}"
            ) from None

    async def _search_read(
        self,
        model: str,
        domain: list[Any],
        fields: Sequence[str],
        *,
        limit: int | None = None,
        order: list[list[str]] | None = None,
        context: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        rows = await self.rpc.model(
            model,
            "search_read",
            domain,
            0,
            limit,
            order or [["id", "ASC"]],
            list(fields),
            context={**ALL, **(context or {})},
        )
        return _rows(rows, f"{model}.search_read")

    async def _base_domain(self, stream: str) -> list[Any]:
        """What a stream leaves out, the same in full and incremental reads."""
        if stream == "stock_levels":
            return [["type", "!=", "service"]]
        if stream == "customers":
            if self._company_parties is None:
                companies = await self._search_read("company.company", [], ["party"])
                self._company_parties = sorted(
                    c["party"] for c in companies if isinstance(c.get("party"), int)
                )
            return [["id", "not in", self._company_parties]] if self._company_parties else []
        return []

    async def warehouses(self) -> list[dict[str, Any]]:
        if self._warehouses is None:
            # Active warehouses only: an archived one holds no stock to sell.
            rows = await self.rpc.model(
                "stock.location",
                "search_read",
                [["type", "=", "warehouse"]],
                0,
                None,
                [["id", "ASC"]],
                ["code", "name"],
            )
            self._warehouses = [
                {"id": r["id"], "code": r.get("code"), "name": r.get("name")}
                for r in _rows(rows, "stock.location.search_read")
            ]
        return self._warehouses

    async def _read_at(self, previous: cur.State | None) -> datetime:
        now = await self.rpc.server_now()
        if now is None:  # no Date header (a proxy dropped it): our clock
            now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        return cur.next_read_at(now, previous)

    # ------------------------------------------------------------------------- read

    async def read(self, stream: str, cursor: Cursor | None, *, full: bool) -> AsyncIterator[Page]:
        """Pages of records changed since ``cursor``; see cursor.py for its states.

        - an unfinished whole-list read (``{"state": "full", ...}``) is always continued;
        - ``full`` from a finished cursor: the read that cursor ended is over, nothing
          more (see ``Connector.read``);
        - ``full`` or no cursor: a whole-list read from the first id;
        - an unfinished incremental read is continued; a finished one starts the next.
        """
        spec = self._spec(stream)
        state = cur.load(cursor, spec.models)
        if full and isinstance(state, cur.Done):
            return
        await self.rpc.ensure_login()
        if isinstance(state, cur.Full):
            pages = self._read_full(stream, spec, state)
        elif full or state is None:
            pages = self._read_full(stream, spec, cur.Full(await self._read_at(state), 0))
        elif isinstance(state, cur.Incremental):
            pages = self._read_changes(stream, spec, state)
        else:
            read_at = await self._read_at(state)
            start = cur.Incremental(read_at, 0, spec.models[0], state.marks)
            pages = self._read_changes(stream, spec, start)
        async for page in pages:
            yield page

    async def _read_full(
        self, stream: str, spec: StreamSpec, state: cur.Full
    ) -> AsyncIterator[Page]:
        domain = [*await self._base_domain(stream), ["id", ">", state.after_id]]
        ids = _ids(
            await self.rpc.model(
                spec.model, "search", domain, 0, None, [["id", "ASC"]], context=ALL
            ),
            f"{spec.model}.search",
        )
        chunks = [ids[i : i + self.page_size] for i in range(0, len(ids), self.page_size)]
        done = cur.finish(state.read_at, {m: (state.read_at, 0) for m in spec.models}, self.overlap)
        if not chunks:
            yield Page([], done.dump())
            return

        def fetch(chunk: list[int]) -> asyncio.Task[list[dict[str, Any]]]:
            return asyncio.create_task(self._records(stream, chunk))

        # One chunk ahead: Tryton answers the next chunk while the engine writes this one.
        ahead: asyncio.Task[list[dict[str, Any]]] | None = fetch(chunks[0])
        try:
            for index, chunk in enumerate(chunks):
                assert ahead is not None
                records = await ahead
                last = index + 1 == len(chunks)
                ahead = None if last else fetch(chunks[index + 1])
                if last:
                    yield Page(records, done.dump())
                else:
                    yield Page(records, cur.Full(state.read_at, chunk[-1]).dump())
        finally:
            if ahead is not None:
                # A read stopped early drops the chunk fetched ahead; its outcome is
                # retrieved so no stray "exception never retrieved" is left.
                ahead.cancel()
                await asyncio.wait([ahead])
                if not ahead.cancelled():
                    ahead.exception()

    async def _read_changes(
        self, stream: str, spec: StreamSpec, state: cur.Incremental
    ) -> AsyncIterator[Page]:
        marks = dict(state.marks)
        seen: set[int] = set()
        base = await self._base_domain(stream)
        for step in range(state.step, len(spec.follows)):
            follow = spec.follows[step]
            own = follow.link == "id"
            fields = (
                ["last_modified_at"] if own or follow.reverse else ["last_modified_at", follow.link]
            )
            while True:
                rows = await self._search_read(
                    follow.model,
                    [_keyset(marks[follow.model]), *(base if own else [])],
                    fields,
                    limit=self.page_size,
                    order=[["last_modified_at", "ASC"], ["id", "ASC"]],
                )
                if not rows:
                    break
                last = rows[-1]
                if not isinstance(last.get("last_modified_at"), datetime):
                    raise ContractError(f"Tryton answered {follow.model} without last_modified_at")
                marks[follow.model] = (last["last_modified_at"], int(last["id"]))
                ids = await self._linked_ids(spec, follow, rows, base)
                fresh = [i for i in ids if i not in seen]
                seen.update(fresh)
                records = await self._records(stream, fresh) if fresh else []
                progress = cur.Incremental(state.read_at, step, follow.model, marks)
                yield Page(records, progress.dump())
                if len(rows) < self.page_size:
                    break
        yield Page([], cur.finish(state.read_at, marks, self.overlap).dump())

    async def _linked_ids(
        self, spec: StreamSpec, follow: Follow, rows: list[dict[str, Any]], base: list[Any]
    ) -> list[int]:
        """The stream records a page of a followed model's changes points to (those the
        stream keeps: its base domain applies)."""
        if follow.link == "id":
            return [int(r["id"]) for r in rows]  # the base domain was in the search
        if follow.reverse:
            domain = [[follow.link, "in", [int(r["id"]) for r in rows]]]
            found = await self.rpc.model(
                spec.model, "search", domain, 0, None, [["id", "ASC"]], context=ALL
            )
            candidates = _ids(found, f"{spec.model}.search")
        else:
            candidates = sorted(
                {r[follow.link] for r in rows if isinstance(r.get(follow.link), int)}
            )
        if not candidates or not base:
            return sorted(set(candidates))
        kept = await self.rpc.model(
            spec.model, "search", [["id", "in", candidates], *base], 0, None, [["id", "ASC"]],
            context=ALL,
        )  # fmt: skip
        return _ids(kept, f"{spec.model}.search")

    # ---------------------------------------------------------------------- records

    async def _records(self, stream: str, ids: list[int]) -> list[dict[str, Any]]:
        if stream == "products":
            return await self._products(ids)
        if stream == "stock_levels":
            return await self._stock(ids)
        if stream == "customers":
            return await self._customers(ids)
        return await self._sales(ids)

    async def _products(self, ids: list[int]) -> list[dict[str, Any]]:
        rows = await self._search_read("product.product", [["id", "in", ids]], PRODUCT_FIELDS)
        identifier_ids = sorted(
            {i for r in rows for i in r.get("identifiers") or [] if isinstance(i, int)}
        )
        identifiers: dict[int, dict[str, Any]] = {}
        if identifier_ids:
            found = await self._search_read(
                "product.identifier",
                [["id", "in", identifier_ids]],
                ["type", "code", "sequence"],
            )
            identifiers = {r["id"]: r for r in found}
        category_ids = {
            c
            for r in rows
            for c in ((r.get("template.") or {}).get("categories") or [])
            if isinstance(c, int)
        }
        missing = sorted(category_ids - set(self._category_names))
        if missing:
            found = await self._search_read(
                "product.category", [["id", "in", missing]], ["rec_name"]
            )
            self._category_names.update({r["id"]: str(r.get("rec_name") or "") for r in found})
        uoms = {r["default_uom"] for r in rows if isinstance(r.get("default_uom"), int)}
        if missing_uoms := sorted(uoms - set(self._uom_symbols)):
            found = await self._search_read("product.uom", [["id", "in", missing_uoms]], ["symbol"])
            self._uom_symbols.update({r["id"]: r.get("symbol") for r in found})
        out = []
        for row in rows:
            template = row.get("template.") or {}
            uom = row.get("default_uom")
            out.append(
                jsonable(
                    {
                        **row,
                        # The shape Tryton gives "default_uom.symbol".
                        "default_uom.": (
                            {"id": uom, "symbol": self._uom_symbols.get(uom)}
                            if isinstance(uom, int)
                            else None
                        ),
                        "identifiers": [
                            identifiers[i] for i in row.get("identifiers") or [] if i in identifiers
                        ],
                        "categories": [
                            self._category_names.get(c, str(c))
                            for c in template.get("categories") or []
                        ],
                    }
                )
            )
        return out

    async def _stock(self, ids: list[int]) -> list[dict[str, Any]]:
        warehouses = await self.warehouses()
        out = []
        for warehouse in warehouses:
            rows = await self._search_read(
                "product.product",
                [["id", "in", ids]],
                ["code", "quantity", "forecast_quantity"],
                context={"locations": [warehouse["id"]]},
            )
            for row in rows:
                out.append(
                    jsonable(
                        {
                            "product": {"id": row["id"], "code": row.get("code")},
                            "warehouse": warehouse,
                            "quantity": row.get("quantity"),
                            "forecast_quantity": row.get("forecast_quantity"),
                        }
                    )
                )
        return out

    async def _children(
        self, model: str, rows: list[dict[str, Any]], field: str, fields: list[str]
    ) -> dict[int, dict[str, Any]]:
        wanted = sorted({i for r in rows for i in r.get(field) or [] if isinstance(i, int)})
        if not wanted:
            return {}
        found = await self._search_read(model, [["id", "in", wanted]], fields)
        return {r["id"]: r for r in found}

    async def _customers(self, ids: list[int]) -> list[dict[str, Any]]:
        rows = await self._search_read("party.party", [["id", "in", ids]], PARTY_FIELDS)
        addresses = await self._children("party.address", rows, "addresses", ADDRESS_FIELDS)
        identifiers = await self._children(
            "party.identifier", rows, "identifiers", PARTY_IDENTIFIER_FIELDS
        )
        contacts = await self._children(
            "party.contact_mechanism", rows, "contact_mechanisms", CONTACT_FIELDS
        )

        def nested(row: dict[str, Any], field: str, found: dict[int, dict[str, Any]]) -> list[Any]:
            return [found[i] for i in row.get(field) or [] if i in found]

        return [
            jsonable(
                {
                    **row,
                    "addresses": nested(row, "addresses", addresses),
                    "identifiers": nested(row, "identifiers", identifiers),
                    "contact_mechanisms": nested(row, "contact_mechanisms", contacts),
                }
            )
            for row in rows
        ]

    async def _sales(self, ids: list[int]) -> list[dict[str, Any]]:
        rows = await self._search_read("sale.sale", [["id", "in", ids]], SALE_FIELDS)
        lines = await self._children("sale.line", rows, "lines", SALE_LINE_FIELDS)
        return [
            jsonable({**row, "lines": [lines[i] for i in row.get("lines") or [] if i in lines]})
            for row in rows
        ]

    # --------------------------------------------------------------------- mapping

    def to_canonical(self, stream: str, raw: dict[str, Any]) -> Canonical:
        return to_canonical(stream, raw)

    def external_id(self, stream: str, raw: dict[str, Any]) -> str | None:
        if stream != "stock_levels":
            return super().external_id(stream, raw)
        product = raw.get("product") if isinstance(raw, dict) else None
        warehouse = raw.get("warehouse") if isinstance(raw, dict) else None
        pid = product.get("id") if isinstance(product, dict) else None
        wid = warehouse.get("id") if isinstance(warehouse, dict) else None
        if all(isinstance(i, int) and not isinstance(i, bool) for i in (pid, wid)):
            return stock_external_id(pid, wid)
        return None
