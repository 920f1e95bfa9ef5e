"""Tryton records (as the connector assembles them) -> canonical models.

The raw record of each stream is Tryton's own ``search_read`` row, made JSON-safe by
``jsonable`` (Decimal -> its exact string with its scale, ``"235.42"``; datetimes ->
ISO 8601, naive UTC as Tryton sends them), with related records the connector reads
alongside nested in place of their ids:

- products: the ``product.product`` row (``"template."`` and ``"default_uom."`` objects
  as Tryton nests dotted fields; the name is the template's), ``"identifiers"`` as
  objects, ``"categories"`` names;
- stock_levels: ``{"product": {...}, "warehouse": {...}, "quantity",
  "forecast_quantity"}``, one per product and warehouse;
- customers: the ``party.party`` row with ``"addresses"``, ``"identifiers"`` and
  ``"contact_mechanisms"`` as objects;
- sales_orders: the ``sale.sale`` row with its ``"lines"`` as objects.

Raw shapes are validated strictly (pydantic): money must be an exact decimal string
(Tryton sends Numeric fields as Decimal objects: a plain JSON number there means a
broken server or record), ids integers, names non-empty. A bad record raises
``ValidationError``/``ValueError`` from ``to_canonical`` and the engine quarantines it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Protocol, TypeVar

from pydantic import BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

from erp_sync.canonical import (
    Canonical,
    Customer,
    Product,
    SalesOrder,
    SalesOrderLine,
    StockLevel,
)
from erp_sync.connectors.base import Mapper, map_stream
from erp_sync.connectors.raw import (
    Id,
    Name,
    RawModel,
    brief_repr,
    number_to_decimal,
    text_or_none,
)
from erp_sync.connectors.raw import stock_external_id as stock_external_id  # re-exported
from erp_sync.errors import DataError
from erp_sync.kit.documents import digits

# Brazilian tax identifier types of party.identifier (trytond 8 files CNPJ as br_vat).
CPF_CNPJ_TYPES = ("br_cpf", "br_cnpj", "br_vat")


def jsonable(value: Any) -> Any:
    """Decoded Tryton values -> JSON-safe values for the stored raw payload; exact."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(Decimal(str(value.total_seconds())))
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


# -------------------------------------------------------------------- raw field types


def _exact_decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int):
        shown = brief_repr(value)
        raise ValueError(f"must be an exact decimal (a Tryton Decimal), got {shown}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number") from None
    if not number.is_finite():
        raise ValueError("must be a finite number")
    return number


def _float_number(value: Any) -> Decimal:
    """Tryton's Float fields (quantities) arrive as JSON numbers, read exactly as the
    other connectors' ``Number``; only the message for a non-number is Tryton's own."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {type(value).__name__}")
    return number_to_decimal(value)


def _flag(value: Any) -> bool:
    # SQLite-backed servers answer booleans as 0/1.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"must be a boolean, got {value!r}")


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 date-time, got {type(value).__name__}")
    moment = datetime.fromisoformat(value)
    # Tryton's datetimes are naive UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _day(value: Any) -> date:
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 date, got {type(value).__name__}")
    return date.fromisoformat(value)


ExactDecimal = Annotated[Decimal, BeforeValidator(_exact_decimal)]
FloatNumber = Annotated[Decimal, BeforeValidator(_float_number)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]
Day = Annotated[date, BeforeValidator(_day)]


class _Raw(RawModel):
    # Tryton's dotted fields ("template.") are aliased; their Python names are accepted too.
    model_config = ConfigDict(populate_by_name=True)


class _Sequenced(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def sequence(self) -> int | None: ...


S = TypeVar("S", bound=_Sequenced)


def in_tryton_order(items: Iterable[S]) -> list[S]:
    """Tryton's order for sequence-ordered records: sequence ASC NULLS FIRST, then id."""
    return sorted(items, key=lambda i: (i.sequence is not None, i.sequence or 0, i.id))


# ------------------------------------------------------------------------------ products


class _Template(_Raw):
    id: Id
    name: Name
    active: Flag
    last_modified_at: Timestamp


class _Uom(_Raw):
    symbol: StrictStr | None = None


class _ProductIdentifier(_Raw):
    id: Id
    type: StrictStr | None = None
    code: StrictStr
    sequence: StrictInt | None = None


class TrytonProduct(_Raw):
    id: Id
    code: StrictStr | None = None
    active: Flag
    list_price_used: ExactDecimal | None = None
    cost_price: ExactDecimal | None = None
    last_modified_at: Timestamp
    template: _Template = Field(alias="template.")
    default_uom: _Uom | None = Field(default=None, alias="default_uom.")
    identifiers: list[_ProductIdentifier] = Field(default_factory=list)


def _identifier(items: Sequence[_ProductIdentifier], kind: str) -> str | None:
    for item in in_tryton_order(i for i in items if i.type == kind):
        if code := text_or_none(item.code):
            return code
    return None


def product(raw: dict[str, Any]) -> Product:
    p = TrytonProduct.model_validate(raw)
    return Product(
        externalId=str(p.id),
        sourceUpdatedAt=max(p.last_modified_at, p.template.last_modified_at),
        sku=text_or_none(p.code),
        name=p.template.name,
        gtin=_identifier(p.identifiers, "ean"),
        unit=text_or_none(p.default_uom.symbol) if p.default_uom else None,
        brand=_identifier(p.identifiers, "brand"),
        listPrice=p.list_price_used,
        costPrice=p.cost_price,
        # Archiving a product in Tryton archives its template; the variant keeps its own
        # flag. Either one inactive means the product is.
        active=p.active and p.template.active,
    )


# --------------------------------------------------------------------------------- stock


class _StockProduct(_Raw):
    id: Id
    code: StrictStr | None = None


class _Warehouse(_Raw):
    id: Id
    code: StrictStr | None = None
    name: StrictStr | None = None


class TrytonStockRow(_Raw):
    product: _StockProduct
    warehouse: _Warehouse
    quantity: FloatNumber
    forecast_quantity: FloatNumber


def stock_level(raw: dict[str, Any]) -> StockLevel:
    row = TrytonStockRow.model_validate(raw)
    return StockLevel(
        externalId=stock_external_id(row.product.id, row.warehouse.id),
        productExternalId=str(row.product.id),
        warehouseId=str(row.warehouse.id),
        warehouseName=text_or_none(row.warehouse.name),
        quantity=row.quantity,
        # Tryton's forecast: on hand, plus planned receipts, minus planned deliveries.
        available=row.forecast_quantity,
    )


# ----------------------------------------------------------------------------- customers


class _Code(_Raw):
    code: StrictStr | None = None


class _Address(_Raw):
    id: Id
    active: Flag = True
    sequence: StrictInt | None = None
    street: StrictStr | None = None
    street_name: StrictStr | None = None
    street_unstructured: StrictStr | None = None
    building_number: StrictStr | None = None
    building_name: StrictStr | None = None
    floor_number: StrictStr | None = None
    unit_number: StrictStr | None = None
    room_number: StrictStr | None = None
    city: StrictStr | None = None
    postal_code: StrictStr | None = None
    subdivision: _Code | None = Field(default=None, alias="subdivision.")
    country: _Code | None = Field(default=None, alias="country.")


class _PartyIdentifier(_Raw):
    id: Id
    type: StrictStr | None = None
    code: StrictStr
    active: Flag = True
    sequence: StrictInt | None = None


class _Contact(_Raw):
    id: Id
    type: StrictStr
    value: StrictStr | None = None
    active: Flag = True
    sequence: StrictInt | None = None


class TrytonParty(_Raw):
    id: Id
    code: StrictStr | None = None
    name: StrictStr | None = None
    active: Flag
    last_modified_at: Timestamp
    addresses: list[_Address] = Field(default_factory=list)
    identifiers: list[_PartyIdentifier] = Field(default_factory=list)
    contact_mechanisms: list[_Contact] = Field(default_factory=list)


def _contact(items: Sequence[_Contact], *kinds: str) -> str | None:
    for kind in kinds:
        for item in in_tryton_order(c for c in items if c.type == kind and c.active):
            if value := text_or_none(item.value):
                return value
    return None


def _street(a: _Address) -> str | None:
    if name := text_or_none(a.street_name):
        return name
    if a.street_unstructured and (lines := [s.strip() for s in a.street_unstructured.splitlines()]):
        return ", ".join(s for s in lines if s) or None
    return text_or_none(a.street)


def customer(raw: dict[str, Any]) -> Customer:
    p = TrytonParty.model_validate(raw)
    name = text_or_none(p.name) or text_or_none(p.code)
    if name is None:
        raise DataError("the party has neither a name nor a code")
    document = person_type = None
    for ident in in_tryton_order(i for i in p.identifiers if i.type in CPF_CNPJ_TYPES):
        if ident.active and text_or_none(ident.code):
            document = ident.code  # validated (check digits) by the canonical model
            person_type = "F" if len(digits(ident.code)) == 11 else "J"
            break
    address = next(iter(in_tryton_order(a for a in p.addresses if a.active)), None)
    values: dict[str, Any] = {}
    if address is not None:
        country = text_or_none(address.country.code) if address.country else None
        subdivision = text_or_none(address.subdivision.code) if address.subdivision else None
        postal = text_or_none(address.postal_code)
        if postal and country == "BR":
            postal = digits(postal) or postal
        extras = (address.building_name, address.floor_number, address.unit_number,
                  address.room_number)  # fmt: skip
        values = {
            "street": _street(address),
            "number": text_or_none(address.building_number),
            "complement": ", ".join(t for e in extras if (t := text_or_none(e))) or None,
            "city": text_or_none(address.city),
            # ISO 3166-2 "BR-RJ" -> "RJ" (the UF)
            "state": subdivision.split("-", 1)[-1] if subdivision else None,
            "zipCode": postal,
            "country": country,
        }
    return Customer(
        externalId=str(p.id),
        sourceUpdatedAt=p.last_modified_at,
        name=name,
        document=document,
        personType=person_type,
        email=_contact(p.contact_mechanisms, "email"),
        phone=_contact(p.contact_mechanisms, "phone", "mobile"),
        active=p.active,
        **values,
    )


# -------------------------------------------------------------------------- sales orders


class _Party(_Raw):
    id: Id
    name: StrictStr | None = None
    code: StrictStr | None = None


class _LineProduct(_Raw):
    id: Id
    code: StrictStr | None = None


class _SaleLine(_Raw):
    id: Id
    type: StrictStr
    sequence: StrictInt | None = None
    product: _LineProduct | None = Field(default=None, alias="product.")
    description: StrictStr | None = None
    quantity: FloatNumber | None = None
    unit_price: ExactDecimal | None = None
    amount: ExactDecimal | None = None


class TrytonSale(_Raw):
    id: Id
    number: StrictStr | None = None
    state: Name
    party: _Party = Field(alias="party.")
    sale_date: Day | None = None
    currency: _Code | None = Field(default=None, alias="currency.")
    untaxed_amount: ExactDecimal | None = None
    total_amount: ExactDecimal
    last_modified_at: Timestamp
    lines: list[_SaleLine] = Field(default_factory=list)


def sales_order(raw: dict[str, Any]) -> SalesOrder:
    s = TrytonSale.model_validate(raw)
    lines: list[SalesOrderLine] = []
    # Title, comment and subtotal lines carry no product or amount.
    for line in in_tryton_order(x for x in s.lines if x.type == "line"):
        if line.quantity is None or line.unit_price is None or line.amount is None:
            raise DataError(f"sale line {line.id} has no quantity, unit price or amount")
        lines.append(
            SalesOrderLine(
                lineNumber=len(lines) + 1,
                productExternalId=str(line.product.id) if line.product else None,
                sku=text_or_none(line.product.code) if line.product else None,
                description=text_or_none(line.description),
                quantity=line.quantity,
                unitPrice=line.unit_price,
                total=line.amount,
            )
        )
    return SalesOrder(
        externalId=str(s.id),
        sourceUpdatedAt=s.last_modified_at,
        number=text_or_none(s.number),
        customerExternalId=str(s.party.id),
        customerName=text_or_none(s.party.name),
        status=s.state,
        orderDate=s.sale_date,
        currency=text_or_none(s.currency.code) if s.currency else None,
        totalProducts=s.untaxed_amount,
        total=s.total_amount,
        lines=lines,
    )


MAPPERS: dict[str, Mapper] = {
    "products": product,
    "stock_levels": stock_level,
    "customers": customer,
    "sales_orders": sales_order,
}


def to_canonical(stream: str, raw: dict[str, Any]) -> Canonical:
    return map_stream("Tryton", MAPPERS, stream, raw)
