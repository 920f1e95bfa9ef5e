"""The canonical shape of ERP data, whatever the ERP (see ARCHITECTURE.md).

Connectors map raw ERP records to these models; the sync engine validates them (a
failure quarantines the record with the reason) and writes them. Money and quantities
are Decimal, never float.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from erp_sync.kit.documents import normalize_document

ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Text = Annotated[str, StringConstraints(max_length=1000)]
ShortText = Annotated[str, StringConstraints(max_length=120)]
Money = Annotated[Decimal, Field(max_digits=18, decimal_places=4, allow_inf_nan=False)]
Quantity = Annotated[Decimal, Field(max_digits=18, decimal_places=6, allow_inf_nan=False)]


def _document(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return normalize_document(value)


Document = Annotated[str | None, AfterValidator(_document)]


class Canonical(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    externalId: ExternalId
    sourceUpdatedAt: datetime | None = None


class Product(Canonical):
    sku: ShortText | None = None
    name: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    gtin: ShortText | None = None
    ncm: ShortText | None = None
    unit: ShortText | None = None
    brand: ShortText | None = None
    listPrice: Money | None = None
    costPrice: Money | None = None
    active: bool = True


class StockLevel(Canonical):
    productExternalId: ExternalId
    warehouseId: ExternalId
    warehouseName: ShortText | None = None
    quantity: Quantity
    reserved: Quantity | None = None
    available: Quantity | None = None


class Customer(Canonical):
    name: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    document: Document = None
    personType: ShortText | None = None  # "F" (person, CPF) or "J" (company, CNPJ)
    email: ShortText | None = None
    phone: ShortText | None = None
    street: Text | None = None
    number: ShortText | None = None
    complement: Text | None = None
    district: ShortText | None = None
    city: ShortText | None = None
    state: ShortText | None = None
    zipCode: ShortText | None = None
    country: ShortText | None = None
    active: bool = True


class SalesOrderLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    lineNumber: int = Field(ge=1)
    productExternalId: ShortText | None = None
    sku: ShortText | None = None
    description: Text | None = None
    quantity: Quantity
    unitPrice: Money
    discount: Money | None = None
    total: Money


class SalesOrder(Canonical):
    number: ShortText | None = None
    customerExternalId: ShortText | None = None
    customerName: Text | None = None
    status: ShortText | None = None
    orderDate: date | None = None
    currency: ShortText | None = None
    totalProducts: Money | None = None
    discount: Money | None = None
    shipping: Money | None = None
    total: Money
    lines: list[SalesOrderLine] = Field(default_factory=list)


MODELS: dict[str, type[Canonical]] = {
    "products": Product,
    "stock_levels": StockLevel,
    "customers": Customer,
    "sales_orders": SalesOrder,
}
